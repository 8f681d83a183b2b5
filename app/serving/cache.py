"""An in-process LRU of ready-to-run modules, bounded by entry count and bytes."""

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from app.training.artifacts import Architecture


@dataclass(frozen=True)
class LoadedModel:
    """A module in eval mode with what a prediction needs to know about it."""

    run_id: int
    sha256: str
    module: torch.nn.Module
    architecture: Architecture
    size_bytes: int


class ModelCache:
    """Thread-safe LRU keyed by run id; entries carry the sha256 of the weights they hold."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, LoadedModel] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, run_id: int) -> LoadedModel | None:
        """The cached model of a run, marking it recently used."""
        with self._lock:
            model = self._entries.get(run_id)
            if model is not None:
                self._entries.move_to_end(run_id)
            return model

    def put(self, model: LoadedModel) -> None:
        """Cache a model, evicting the least recently used beyond the bounds."""
        with self._lock:
            self._drop(model.run_id)
            self._entries[model.run_id] = model
            self._bytes += model.size_bytes
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_entries or self._bytes > self.max_bytes
            ):
                self._drop(next(iter(self._entries)))

    def invalidate(self, run_id: int) -> None:
        """Forget a run's model."""
        with self._lock:
            self._drop(run_id)

    def _drop(self, run_id: int) -> None:
        model = self._entries.pop(run_id, None)
        if model is not None:
            self._bytes -= model.size_bytes

    def __len__(self) -> int:
        return len(self._entries)
