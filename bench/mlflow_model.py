"""Log the benchmark's MLP with mlflow.pytorch; runs in bench/.mlflow-venv, not the project's.

Usage: python bench/mlflow_model.py STATE_DICT.pt MODEL_DIR
The state dict holds fitserve's `net.*` tensors of a 20 -> 64 -> ReLU -> 1 MLP.
"""

import sys

import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import infer_signature


def main(state_path: str, model_dir: str) -> None:
    state = torch.load(state_path, weights_only=True)
    hidden, features = state["net.0.weight"].shape
    module = torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    module.load_state_dict({name.removeprefix("net."): t for name, t in state.items()})
    module.eval()
    example = np.zeros((1, features), dtype=np.float32)
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    # MLflow 3 defaults to torch.export ("pt2"), which fixes the batch size at the
    # example's; the pickle format is the long-standing mlflow.pytorch one and batches.
    mlflow.pytorch.save_model(
        module,
        model_dir,
        signature=infer_signature(example, output),
        input_example=example,
        serialization_format="pickle",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
