"""The artifact store: content-addressed objects in a directory or any fsspec filesystem (S3).

An object's key is its sha256, so writing the same bytes twice yields one object. Writes are
staged as a complete local file first; `publish` then makes the object appear whole (a hard
link on a local disk, a single upload to S3), never half written.
"""

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from app.artifacts.cache import LocalCache, sha256_of_file
from app.config import Settings

OBJECTS = "objects"
STAGING = "staging"


@dataclass(frozen=True)
class StagedObject:
    """A complete local file, hashed, waiting to be published into the store."""

    path: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class StoredObject:
    """An object found in the store by a listing."""

    uri: str
    sha256: str


class ArtifactStore:
    """Objects under one root URL; reads accept any URI a row recorded, wherever it points."""

    def __init__(self, url: str, *, cache: LocalCache) -> None:
        self.fs, root = _filesystem(url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        self.cache = cache
        # A local store stages beside its objects, so publishing is a hard link on one disk.
        self.staging = Path(self.root) / STAGING if self.is_local else cache.staging

    def uri_for(self, sha256: str) -> str:
        """The URI the object with this digest has in this store."""
        return self.fs.unstrip_protocol(self._path_for(sha256))

    def _path_for(self, sha256: str) -> str:
        return f"{self.root}/{OBJECTS}/{sha256[:2]}/{sha256}"

    @contextmanager
    def staging_file(self) -> Iterator[Path]:
        """A fresh local path to write an object to; removed on leaving, published or not."""
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / f"{uuid.uuid4().hex}.tmp"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def stage(self, path: Path) -> StagedObject:
        """Hash a complete file written at a `staging_file` path."""
        return StagedObject(path=path, sha256=sha256_of_file(path), size_bytes=path.stat().st_size)

    @contextmanager
    def staged_bytes(self, data: bytes | memoryview) -> Iterator[StagedObject]:
        """Bytes written to a staging file, ready to publish."""
        with self.staging_file() as path:
            path.write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            yield StagedObject(path=path, sha256=digest, size_bytes=len(data))

    def publish(self, staged: StagedObject) -> str:
        """Make the staged file the object for its digest, whole; returns its URI.

        Idempotent, so a transaction retried after a database error may publish again.
        """
        target = self._path_for(staged.sha256)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            # A hard link appears complete or not at all; an existing one has the same bytes.
            with suppress(FileExistsError):
                os.link(staged.path, target)
        else:
            self.fs.put_file(str(staged.path), target)
        return self.fs.unstrip_protocol(target)

    def read_bytes(self, uri: str) -> bytes:
        """The bytes of the object at a URI."""
        fs, path = _filesystem(uri)
        return fs.cat_file(path)

    def local_path(self, uri: str, sha256: str) -> Path:
        """A local file holding the object: itself on a local disk, else a cached copy."""
        fs, path = _filesystem(uri)
        if isinstance(fs, LocalFileSystem):
            return Path(path)
        return self.cache.fetch(fs, path, sha256)

    def delete(self, uri: str) -> None:
        """Remove an object; one already gone is fine."""
        fs, path = _filesystem(uri)
        with suppress(FileNotFoundError):
            fs.rm_file(path)

    def objects(self) -> Iterator[StoredObject]:
        """Every object under this store's root."""
        for path in self._listing(f"{self.root}/{OBJECTS}"):
            yield StoredObject(uri=self.fs.unstrip_protocol(path), sha256=path.rsplit("/", 1)[-1])

    def staged_files(self) -> Iterator[tuple[Path, datetime]]:
        """Staging files of this store's local staging directory, with their age."""
        if not self.staging.is_dir():
            return
        for path in self.staging.iterdir():
            try:
                yield path, datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except FileNotFoundError:
                continue

    def _listing(self, path: str) -> list[str]:
        try:
            return self.fs.find(path)
        except FileNotFoundError:
            return []


def _filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    return url_to_fs(uri, use_listings_cache=False)


def open_store(settings: Settings) -> ArtifactStore:
    """The store and node cache the settings name."""
    cache = LocalCache(settings.artifact_cache_path, max_bytes=settings.artifact_cache_bytes)
    return ArtifactStore(settings.artifacts_url, cache=cache)
