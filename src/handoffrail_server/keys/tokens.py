"""Key material (PURE): `hr_` + 43 URL-safe characters; only the SHA-256 hex is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from handoffrail_server.settings import KEY_PATTERN

KEY_PREFIX = "hr_"
DISPLAY_PREFIX_LENGTH = 8


def generate_key() -> str:
    """A new plain API key (46 characters, 256 bits of randomness)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plain: str) -> str:
    """SHA-256 hex of the full plain key, as the original server stores it."""
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def display_prefix(plain: str) -> str:
    """First 8 characters, safe to show and log."""
    return plain[:DISPLAY_PREFIX_LENGTH]


def looks_like_key(candidate: str) -> bool:
    """True when `candidate` has the shape of a generated key (cheap pre-check before a lookup)."""
    return KEY_PATTERN.fullmatch(candidate) is not None  # `$` alone also matches before "\n"


def same_hash(left: str, right: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(left, right)
