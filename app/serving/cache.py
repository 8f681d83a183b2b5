"""Per-process caches of the predict path: ready-to-run modules and resolved model names."""

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.registry.service import ModelRef, Resolution
from app.training.serialization import Architecture


@dataclass(frozen=True)
class LoadedModel:
    """A module in eval mode with what a prediction needs to know about it."""

    run_id: int
    project: str
    sha256: str
    module: torch.nn.Module
    architecture: Architecture
    size_bytes: int
    device: str


class ModelCache:
    """Thread-safe LRU of modules by run id, bounded by entry count and weight bytes.

    A run's weights never change once written and run ids are never reused, so an entry
    can only become wrong by its run being deleted; lookups by name also check the sha256.
    """

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, LoadedModel] = OrderedDict()
        self._bytes = 0
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, run_id: int, sha256: str | None = None) -> LoadedModel | None:
        """The cached model of a run (with those weights, if given), marking it recently used."""
        with self._lock:
            model = self._entries.get(run_id)
            if model is None or (sha256 is not None and model.sha256 != sha256):
                return None
            self._entries.move_to_end(run_id)
            return model

    def advance(self, generation: int) -> None:
        """Note a registry generation; models read at an older one are no longer cached."""
        with self._lock:
            self._generation = max(self._generation, generation)

    def put(self, model: LoadedModel, *, generation: int) -> None:
        """Cache a model read at `generation`, evicting the least recently used beyond bounds."""
        with self._lock:
            if generation < self._generation:
                # Runs may have been deleted since the read; the watcher's sweep of deleted
                # runs has already passed, so this entry would never be dropped.
                return
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

    def run_ids(self) -> list[int]:
        """The runs whose models are cached now."""
        with self._lock:
            return list(self._entries)

    @property
    def size_bytes(self) -> int:
        """Weight bytes held now."""
        return self._bytes

    def _drop(self, run_id: int) -> None:
        model = self._entries.pop(run_id, None)
        if model is not None:
            self._bytes -= model.size_bytes

    def __len__(self) -> int:
        return len(self._entries)


class NameCache:
    """Model references resolved to versions, trusted only while recently confirmed current.

    Entries are valid at one registry generation. A reader's or the watcher's reading of a
    newer generation empties the cache; `get` answers nothing once the generation was last
    confirmed more than `max_staleness` seconds ago, so a stalled watcher can make the
    predict path read the database but never makes it serve an old resolution.
    """

    def __init__(
        self, *, max_staleness: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_staleness = max_staleness
        # The readers' `read_at` times come from the same clock (tests pass their own).
        self._clock = clock
        self.generation = -1
        self._confirmed_at = -math.inf
        self._entries: dict[ModelRef, Resolution] = {}
        self._lock = threading.Lock()

    def get(self, ref: ModelRef) -> Resolution | None:
        """The cached resolution of the reference, if any and confirmed recently enough."""
        if self._clock() - self._confirmed_at > self.max_staleness:
            return None
        return self._entries.get(ref)

    def put(
        self, ref: ModelRef, resolution: Resolution, *, generation: int, read_at: float
    ) -> None:
        """Cache a resolution read at `generation` by a read that started at `read_at`."""
        with self._lock:
            if self._advance(generation):
                self._entries[ref] = resolution
                self._confirmed_at = max(self._confirmed_at, read_at)

    def confirm(self, *, generation: int, read_at: float) -> None:
        """Record that a read started at `read_at` found the registry at `generation`."""
        with self._lock:
            if self._advance(generation):
                self._confirmed_at = max(self._confirmed_at, read_at)

    def advance(self, generation: int) -> None:
        """Drop everything read before `generation` (this process has just committed it)."""
        with self._lock:
            self._advance(generation)

    def _advance(self, generation: int) -> bool:
        """Move to a newer generation, emptying the cache; False for an older one."""
        if generation < self.generation:
            return False
        if generation > self.generation:
            self.generation = generation
            self._entries.clear()
        return True

    def __len__(self) -> int:
        return len(self._entries)
