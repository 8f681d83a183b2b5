"""The per-process key cache and the auth mode, without a database."""

import pytest

from app.keys import service
from app.keys.auth import Authenticator, bearer_key, is_loopback
from app.keys.cache import KeyCache
from app.principal import OPEN_ACCESS, Principal, Role

TEAM = Principal(project="team", role=Role.TRAIN, key_id=7)
PREFIX = "0123456789abcdef"
KEY = f"fsk_{PREFIX}_" + "k" * 43


def _cache(*, any_keys: bool = True) -> KeyCache:
    cache = KeyCache()
    keys = {PREFIX: service.KnownKey(service.digest(KEY), TEAM)} if any_keys else {}
    cache.replace(keys, any_keys=any_keys)
    return cache


def test_a_key_checked_once_stops_working_when_a_reload_drops_it():
    cache = _cache()
    assert cache.principal(KEY) == TEAM
    assert cache.principal(KEY) == TEAM  # now from the verified keys
    assert cache.principal(KEY[:-1] + "x") is None  # same prefix, wrong secret
    cache.replace({}, any_keys=True)
    assert cache.principal(KEY) is None


@pytest.mark.parametrize(
    ("mode", "host", "any_keys", "required"),
    [
        (None, "127.0.0.1", False, False),
        (None, "127.0.0.1", True, True),
        (None, "0.0.0.0", False, True),
        ("off", "0.0.0.0", True, False),
        ("required", "localhost", False, True),
    ],
)
def test_auth_is_required_by_setting_by_any_key_or_off_loopback(mode, host, any_keys, required):
    auth = Authenticator(mode=mode, host=host, sessions=None, cache=_cache(any_keys=any_keys))
    assert auth.required is required
    assert auth.cached(None, host="localhost:8000") == (None if required else OPEN_ACCESS)
    assert auth.cached(f"Bearer {KEY}") == (TEAM if any_keys else None)


@pytest.mark.parametrize(
    ("host", "origin", "served"),
    [
        ("127.0.0.1:8000", None, True),
        ("[::1]:8000", "http://localhost:8000", True),
        ("127.0.0.1:8000", "https://evil.example", False),  # a cross-site form or fetch
        ("evil.example:8000", None, False),  # a name rebound to 127.0.0.1
        (None, None, False),
        ("127.0.0.1:8000", "null", False),
    ],
)
def test_open_by_default_serves_only_requests_from_this_machine(host, origin, served):
    auth = Authenticator(mode=None, host="127.0.0.1", sessions=None, cache=_cache(any_keys=False))
    assert auth.cached(None, host=host, origin=origin) == (OPEN_ACCESS if served else None)
    explicitly_open = Authenticator(mode="off", host="0.0.0.0", sessions=None, cache=_cache())
    assert explicitly_open.cached(None, host=host, origin=origin) == OPEN_ACCESS


def test_auth_fails_closed_until_the_keys_are_loaded():
    auth = Authenticator(mode=None, host="127.0.0.1", sessions=None)
    assert auth.required


def test_header_parsing_and_loopback():
    assert bearer_key("Bearer  abc ") == "abc"
    assert bearer_key("bearer abc") == "abc"
    assert bearer_key("Basic abc") is None
    assert bearer_key("Bearer") is None
    assert [is_loopback(host) for host in ("127.0.0.1", "::1", "localhost", "0.0.0.0")] == [
        True,
        True,
        True,
        False,
    ]
