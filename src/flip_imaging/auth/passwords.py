"""Password hashing (argon2id) and secret generation."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
#: a real hash of a random password, verified against when the user does not exist so that timing
#: does not reveal which usernames exist
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


#: recently verified (hash, password) pairs, by a SHA-256 of both: clients that send basic auth on every
#: call (pyxnat, scripts) would otherwise pay a full argon2 verification per request. Only successes
#: are remembered, for a short time; a changed password changes the stored hash and so the key.
_VERIFIED: OrderedDict[str, float] = OrderedDict()
_VERIFIED_TTL = 300.0
_VERIFIED_MAX = 1024
_verified_lock = threading.Lock()


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is not None:
        key = hashlib.sha256(f"{password_hash}\0{password}".encode()).hexdigest()
        with _verified_lock:
            seen = _VERIFIED.get(key)
            if seen is not None and time.monotonic() - seen < _VERIFIED_TTL:
                return True
    try:
        ok = _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False
    if ok:
        with _verified_lock:
            _VERIFIED[key] = time.monotonic()
            while len(_VERIFIED) > _VERIFIED_MAX:
                _VERIFIED.popitem(last=False)
    return ok


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)
