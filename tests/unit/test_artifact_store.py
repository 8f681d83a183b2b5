"""The artifact store's objects and a node's cache of remote ones, on local disks."""

import hashlib
import os
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from app.artifacts.cache import CorruptObjectError, LocalCache
from app.artifacts.store import ArtifactStore
from app.config import Settings


def _store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"), cache=LocalCache(tmp_path / "cache", max_bytes=0))


def test_objects_are_content_addressed_whole_and_published_idempotently(tmp_path: Path):
    store = _store(tmp_path)
    with store.staged_bytes(b"weights") as staged:
        uri = store.publish(staged)
        # A transaction retried after a database error publishes again: same object.
        assert store.publish(staged) == uri
    digest = hashlib.sha256(b"weights").hexdigest()
    assert uri == store.uri_for(digest) == f"file://{tmp_path}/store/objects/{digest[:2]}/{digest}"
    assert store.read_bytes(uri) == b"weights"
    assert [found.sha256 for found in store.objects()] == [digest]
    # The staging file is gone once the block ends; the object stays.
    assert list(store.staged_files()) == []
    store.delete(uri)
    store.delete(uri)
    assert list(store.objects()) == []


def test_a_local_object_is_read_in_place(tmp_path: Path):
    store = _store(tmp_path)
    with store.staged_bytes(b"table") as staged:
        uri = store.publish(staged)
    path = store.local_path(uri, staged.sha256)
    assert path.read_bytes() == b"table"
    assert not (tmp_path / "cache").exists()


def test_the_cache_checks_what_it_fetches_and_evicts_the_least_recently_used(tmp_path: Path):
    remote = tmp_path / "remote"
    remote.mkdir()
    blobs = {name: name.encode() * 100 for name in ("a", "b", "c")}
    for name, data in blobs.items():
        (remote / name).write_bytes(data)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    cache = LocalCache(tmp_path / "cache", max_bytes=250)
    fs = LocalFileSystem()

    first = cache.fetch(fs, str(remote / "a"), digests["a"])
    os.utime(first, (1, 1))
    cache.fetch(fs, str(remote / "b"), digests["b"])
    # Past 250 bytes: "a", used longest ago, goes; the newest always stays.
    cache.fetch(fs, str(remote / "c"), digests["c"])
    kept = {path.name for path in (tmp_path / "cache" / "objects").glob("*/*")}
    assert kept == {digests["b"], digests["c"]}
    with pytest.raises(CorruptObjectError, match="has sha256"):
        cache.fetch(fs, str(remote / "a"), "0" * 64)
    assert list((tmp_path / "cache" / "staging").iterdir()) == []


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("sqlite:////srv/fitserve/fitserve.db", "/srv/fitserve/fitserve-artifacts"),
        ("postgresql+psycopg://fitserve@db/fitserve", str(Path.cwd() / "fitserve-artifacts")),
        ("sqlite://", str(Path.cwd() / "fitserve-artifacts")),
    ],
)
def test_the_default_store_is_beside_the_sqlite_file(database_url: str, expected: str):
    assert Settings(database_url=database_url).artifacts_url == expected
    assert Settings(database_url=database_url, artifacts="s3://b/p").artifacts_url == "s3://b/p"
