"""Each API process's copy of the active keys, so a request is authenticated from memory."""

from dataclasses import dataclass, field

from app.keys.service import KnownKey, matches, prefix_of
from app.principal import Principal


@dataclass(frozen=True)
class _Snapshot:
    """Active keys by prefix, and the keys already checked against them."""

    keys: dict[str, KnownKey] = field(default_factory=dict)
    # A key seen valid once is found again by a dict look-up: hashing it anew on every
    # request measured 8 us on the warm predict path, as much as the rest of its checks.
    verified: dict[str, Principal] = field(default_factory=dict)


class KeyCache:
    """The active keys and whether any key was ever created; replaced whole on change.

    A snapshot is swapped in one assignment, so a check that raced a reload can only have
    filled the old snapshot's `verified`, never carry a revoked key into the new one.
    """

    def __init__(self) -> None:
        self._snapshot = _Snapshot()
        self.any_keys = False
        self.loaded = False

    def replace(self, keys: dict[str, KnownKey], *, any_keys: bool) -> None:
        """Swap in a fresh copy read from the database."""
        self._snapshot = _Snapshot(keys=keys)
        self.any_keys = any_keys
        self.loaded = True

    def principal(self, key: str) -> Principal | None:
        """Who the key speaks for, or None when it is not a cached active key."""
        snapshot = self._snapshot
        principal = snapshot.verified.get(key)
        if principal is not None:
            return principal
        prefix = prefix_of(key)
        known = snapshot.keys.get(prefix) if prefix is not None else None
        if known is None or not matches(known, key):
            return None
        snapshot.verified[key] = known.principal
        return known.principal
