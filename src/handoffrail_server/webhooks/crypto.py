"""Webhook secrets at rest: Fernet (AES-128-CBC + HMAC) with a key derived from HR_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

_CONTEXT = b"handoffrail/webhook-secrets/v1:"


class SecretUnreadable(RuntimeError):
    """The stored secret cannot be decrypted (HR_SECRET_KEY changed)."""


def _fernet(secret_key: str) -> Fernet:
    digest = hashlib.sha256(_CONTEXT + secret_key.encode("utf-8")).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(secret_key: str, plain: str) -> str:
    """Encrypt a webhook secret for storage."""
    return _fernet(secret_key).encrypt(plain.encode("utf-8")).decode("ascii")


def decrypt(secret_key: str, token: str) -> str:
    """Decrypt a stored webhook secret."""
    try:
        return _fernet(secret_key).decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise SecretUnreadable("webhook secret cannot be decrypted with HR_SECRET_KEY") from None
