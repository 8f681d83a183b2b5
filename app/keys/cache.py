"""Each API process's copy of the active keys, so a request is authenticated from memory."""

from dataclasses import dataclass, field

from app.keys.service import KnownKey, matches, prefix_of
from app.principal import Principal


@dataclass
class KeyCache:
    """Active keys by prefix and whether any key was ever created; replaced whole on change."""

    keys: dict[str, KnownKey] = field(default_factory=dict)
    any_keys: bool = False
    loaded: bool = False

    def replace(self, keys: dict[str, KnownKey], *, any_keys: bool) -> None:
        """Swap in a fresh copy read from the database."""
        self.keys = keys
        self.any_keys = any_keys
        self.loaded = True

    def principal(self, key: str) -> Principal | None:
        """Who the key speaks for, or None when it is not a cached active key."""
        prefix = prefix_of(key)
        known = self.keys.get(prefix) if prefix is not None else None
        if known is None or not matches(known, key):
            return None
        return known.principal
