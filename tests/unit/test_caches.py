"""The predict path's caches: bounds, generations and staleness, without a server."""

import torch

from app.registry.service import ModelRef, Resolution
from app.serving.cache import LoadedModel, ModelCache, NameCache
from app.training.serialization import Architecture


def _loaded(run_id: int, size_bytes: int) -> LoadedModel:
    architecture = Architecture("regression", 1, 1, {"type": "linear"}, False, None)
    module = torch.nn.Linear(1, 1)
    return LoadedModel(run_id, "default", f"sha{run_id}", module, architecture, size_bytes, "cpu")


def test_model_cache_is_bounded_by_entries_and_bytes():
    cache = ModelCache(max_entries=2, max_bytes=100)
    for run_id in (1, 2):
        cache.put(_loaded(run_id, 10), generation=0)
    assert cache.get(1) is not None  # 2 is now the least recently used
    cache.put(_loaded(3, 10), generation=0)
    assert sorted(cache.run_ids()) == [1, 3]
    cache.put(_loaded(4, 95), generation=0)
    assert cache.run_ids() == [4] and cache.size_bytes == 95
    assert cache.get(4, "other-sha") is None
    cache.invalidate(4)
    assert len(cache) == 0 and cache.size_bytes == 0
    # A model read before a registry change that the cache already saw is not kept.
    cache.advance(7)
    cache.put(_loaded(5, 10), generation=6)
    assert cache.get(5) is None
    cache.put(_loaded(5, 10), generation=7)
    assert cache.get(5) is not None


def test_name_cache_trusts_only_the_newest_generation_recently_confirmed():
    now = [100.0]
    names = NameCache(max_staleness=0.2, clock=lambda: now[0])
    ref, old, new = (
        ModelRef("default", "m", alias="prod"),
        Resolution("m", 1, 1, "a"),
        Resolution("m", 2, 2, "b"),
    )
    names.put(ref, old, generation=5, read_at=now[0])
    assert names.get(ref) == old
    names.confirm(generation=6, read_at=now[0])
    assert names.get(ref) is None
    names.put(ref, old, generation=5, read_at=now[0])  # a read that lost the race
    assert names.get(ref) is None
    names.put(ref, new, generation=6, read_at=now[0])
    assert names.get(ref) == new
    now[0] += 0.15
    assert names.get(ref) == new  # confirmed within max_staleness: still trusted
    now[0] += 0.1  # no confirmation within the bound: the cache stops answering
    assert names.get(ref) is None
    names.confirm(generation=6, read_at=now[0])
    assert names.get(ref) == new
    names.advance(7)
    assert names.get(ref) is None
