"""A node's bounded cache of remote objects, keyed by sha256, so a worker maps a local file."""

import hashlib
import os
import uuid
from pathlib import Path

from fsspec import AbstractFileSystem

HASH_CHUNK_BYTES = 4 * 1024 * 1024


class CorruptObjectError(RuntimeError):
    """A downloaded object's bytes do not have the digest its row names."""


class LocalCache:
    """Files under `directory/objects/<sha256>`, least recently used evicted past `max_bytes`.

    Several processes on a node may share one cache: each download lands in a file of its
    own and is renamed into place whole, and an evicted file stays readable by whoever
    mapped it (POSIX unlink semantics).
    """

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.objects = directory / "objects"
        self.staging = directory / "staging"

    def _path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def fetch(self, fs: AbstractFileSystem, path: str, sha256: str) -> Path:
        """The cached copy of a remote object, downloaded and checked if not here yet."""
        cached = self._path(sha256)
        if cached.exists():
            # Recently used: the eviction keeps the newest modification times.
            os.utime(cached)
            return cached
        self.staging.mkdir(parents=True, exist_ok=True)
        download = self.staging / f"{uuid.uuid4().hex}.download"
        try:
            fs.get_file(path, str(download))
            digest = sha256_of_file(download)
            if digest != sha256:
                raise CorruptObjectError(f"{path} has sha256 {digest}, not {sha256}")
            self._place(download, sha256)
        finally:
            download.unlink(missing_ok=True)
        return cached

    def _place(self, path: Path, sha256: str) -> None:
        cached = self._path(sha256)
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, cached)
        self._evict(keep=cached)

    def _evict(self, *, keep: Path) -> None:
        """Delete the least recently used files until the cache fits in max_bytes."""
        files = []
        for file in self.objects.glob("*/*"):
            try:
                status = file.stat()
            except FileNotFoundError:
                continue
            files.append((status.st_mtime, status.st_size, file))
        total = sum(size for _, size, _ in files)
        for _, size, file in sorted(files):
            if total <= self.max_bytes:
                break
            if file != keep:
                file.unlink(missing_ok=True)
                total -= size


def sha256_of_file(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
