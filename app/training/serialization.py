"""Weights and checkpoints as safetensors bytes plus JSON: nothing is ever pickled."""

import hashlib
import json
import math
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
    # Absent from files written before targets could be standardized: those predict as before.
    standardize_target: bool = False

    def build(self) -> TabularNet:
        """An untrained module of this architecture."""
        return TabularNet(
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            model=_MODEL_SPEC.validate_python(self.model),
            task=self.task,
            standardize=self.standardize,
            standardize_target=self.standardize_target,
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


@dataclass
class TrainingState:
    """What a checkpoint holds besides the module and optimizer, which are restored in place."""

    rng: dict[str, torch.Tensor]
    progress: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    early_stopping: dict[str, Any] | None = None
    best: dict[str, torch.Tensor] | None = None


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats spelled out: PostgreSQL's JSON refuses Infinity and NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _from_json(value: Any) -> Any:
    """The inverse of `_json_safe`."""
    if isinstance(value, dict):
        if value.keys() == {"float"}:
            return float(value["float"])
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def _pack_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The optimizer's state as JSON, its tensors added to `tensors`."""
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    # LBFGS keeps its curvature history as lists of tensors (and Nones).
    lists: dict[str, dict[str, list[Any]]] = {}
    for param_id, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value.detach().to("cpu").contiguous()
            elif isinstance(value, list):
                slots: list[Any] = []
                for index, item in enumerate(value):
                    if isinstance(item, torch.Tensor):
                        key = f"optimizer_list.{param_id}.{name}.{index}"
                        tensors[key] = item.detach().to("cpu").contiguous()
                        slots.append({"tensor": key})
                    else:
                        slots.append(item)
                lists.setdefault(str(param_id), {})[name] = slots
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return _json_safe(
        {
            "param_groups": optimizer_state["param_groups"],
            "scalars": scalars,
            "lists": lists,
            "params": sorted(optimizer_state["state"]),
        }
    )


def _unpack_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    saved = _from_json(saved)
    per_param: dict[int, dict[str, Any]] = {int(p): {} for p in saved["params"]}
    for param_id, values in saved["scalars"].items():
        per_param[int(param_id)].update(values)
    for param_id, values in saved.get("lists", {}).items():
        for name, slots in values.items():
            per_param[int(param_id)][name] = [
                tensors[slot["tensor"]] if isinstance(slot, dict) else slot for slot in slots
            ]
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, field = name.split(".", 2)
            per_param[int(param_id)][field] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})


def pack_checkpoint(
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    training: TrainingState,
) -> CheckpointBlob:
    """Serialise module, optimizer and training state: tensors to safetensors, the rest JSON."""
    tensors = _cpu_tensors(module.state_dict(), "model.")
    tensors.update(_cpu_tensors(training.rng, "rng."))
    tensors.update(_cpu_tensors(training.best or {}, "best."))
    state: dict[str, Any] = {"progress": training.progress}
    if optimizer is not None:
        state["optimizer"] = _pack_optimizer(optimizer, tensors)
    if training.scheduler is not None:
        state["scheduler"] = _json_safe(training.scheduler)
    if training.early_stopping is not None:
        state["early_stopping"] = _json_safe(training.early_stopping)
    return CheckpointBlob(tensors=save_tensors(tensors), state=state)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {
        name.removeprefix(prefix): tensor
        for name, tensor in tensors.items()
        if name.startswith(prefix)
    }


def unpack_checkpoint(
    blob: CheckpointBlob,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> TrainingState:
    """Restore model and optimizer in place; returns the rest of the training state."""
    tensors = load_tensors(blob.tensors)
    module.load_state_dict(_prefixed(tensors, "model."))
    if optimizer is not None:
        _unpack_optimizer(optimizer, blob.state["optimizer"], tensors)
    scheduler, early_stopping = blob.state.get("scheduler"), blob.state.get("early_stopping")
    return TrainingState(
        rng=_prefixed(tensors, "rng."),
        progress=blob.state["progress"],
        scheduler=None if scheduler is None else _from_json(scheduler),
        early_stopping=None if early_stopping is None else _from_json(early_stopping),
        best=_prefixed(tensors, "best.") or None,
    )
