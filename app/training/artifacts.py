"""Weights and checkpoints as safetensors bytes plus JSON: nothing is ever pickled."""

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import TypeAdapter
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from app.training.data import Label
from app.training.modules import TabularNet
from app.training.spec import ModelSpec, Task

WEIGHTS_FORMAT = "fitserve.tabular.v1"
_MODEL_SPEC: TypeAdapter[ModelSpec] = TypeAdapter(ModelSpec)
_METADATA_KEY = "fitserve"


@dataclass(frozen=True)
class Architecture:
    """What a weights file needs besides its tensors to be rebuilt as a module."""

    task: Task
    n_features: int
    n_outputs: int
    model: dict[str, Any]
    standardize: bool
    classes: list[Label] | None
    feature_names: list[str] | None = None

    def build(self) -> TabularNet:
        """An untrained module of this architecture."""
        return TabularNet(
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            model=_MODEL_SPEC.validate_python(self.model),
            task=self.task,
            standardize=self.standardize,
        )


@dataclass(frozen=True)
class WeightsFile:
    """A serialised weights file and its digest."""

    data: bytes
    sha256: str


def _cpu_tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}


def export_weights(module: TabularNet, architecture: Architecture) -> WeightsFile:
    """Serialise a trained module with its architecture in the safetensors metadata."""
    metadata = {_METADATA_KEY: json.dumps({"format": WEIGHTS_FORMAT, **architecture.__dict__})}
    data = save_tensors(_cpu_tensors(module.state_dict()), metadata=metadata)
    return WeightsFile(data=data, sha256=hashlib.sha256(data).hexdigest())


def read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read from its JSON header alone."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8:
        raise ValueError("not a safetensors file: header runs past the end")
    header = json.loads(data[8 : 8 + header_size])
    return header.get("__metadata__", {})


def read_architecture(data: bytes) -> Architecture:
    """The architecture stored in a weights file."""
    raw = json.loads(read_metadata(data)[_METADATA_KEY])
    if raw.pop("format", None) != WEIGHTS_FORMAT:
        raise ValueError("weights file is not in fitserve's format")
    return Architecture(**raw)


def import_weights(data: bytes, device: str = "cpu") -> TabularNet:
    """Rebuild a module in eval mode from a weights file."""
    module = read_architecture(data).build()
    module.load_state_dict(load_tensors(data), strict=True)
    return module.to(device).eval()


def tensors_as_json(data: bytes) -> dict[str, dict[str, Any]]:
    """Each named tensor of a weights file with its shape and values."""
    return {
        name: {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "values": tensor.tolist(),
        }
        for name, tensor in load_tensors(data).items()
    }


@dataclass
class CheckpointBlob:
    """A resumable training state split into safetensors bytes and JSON."""

    tensors: bytes
    state: dict[str, Any]


def pack_checkpoint(
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    progress: dict[str, Any],
) -> CheckpointBlob:
    """Serialise model, optimizer and RNG state; tensors go to safetensors, the rest to JSON."""
    tensors = _cpu_tensors(module.state_dict(), "model.")
    tensors.update(_cpu_tensors(rng, "rng."))
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    state = {
        "progress": progress,
        "optimizer": {
            "param_groups": optimizer_state["param_groups"],
            "scalars": scalars,
            "params": sorted(optimizer_state["state"]),
        },
    }
    return CheckpointBlob(tensors=save_tensors(tensors), state=state)


def unpack_checkpoint(
    blob: CheckpointBlob,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; returns the RNG tensors and the progress."""
    tensors = load_tensors(blob.tensors)
    module.load_state_dict(
        {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
    )
    saved = blob.state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {int(p): {} for p in saved["params"]}
    for param_id, values in saved["scalars"].items():
        per_param[int(param_id)].update(values)
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, field = name.split(".", 2)
            per_param[int(param_id)][field] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})
    rng = {name.removeprefix("rng."): t for name, t in tensors.items() if name.startswith("rng.")}
    return rng, blob.state["progress"]
