"""API key material: shape, hashing, display prefix, constant-time comparison."""

from __future__ import annotations

import hashlib

import pytest

from handoffrail_server.keys.tokens import (
    DISPLAY_PREFIX_LENGTH,
    KEY_PREFIX,
    display_prefix,
    generate_key,
    hash_key,
    looks_like_key,
    same_hash,
)

URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_generated_key_is_hr_prefix_plus_43_url_safe_characters() -> None:
    key = generate_key()

    assert key.startswith("hr_")
    assert KEY_PREFIX == "hr_"
    assert len(key) == 46
    assert set(key[3:]) <= URL_SAFE
    assert looks_like_key(key)


def test_generated_keys_differ() -> None:
    keys = {generate_key() for _ in range(200)}

    assert len(keys) == 200


def test_hash_is_sha256_hex_of_the_full_plain_key() -> None:
    key = "hr_" + "a" * 43

    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(hash_key(key)) == 64


def test_hash_of_known_vector() -> None:
    # SHA-256("abc"), FIPS 180-2 appendix B.1
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_hash_is_case_sensitive_and_whole_key() -> None:
    key = generate_key()

    assert hash_key(key) != hash_key(key.upper())
    assert hash_key(key) != hash_key(key[:-1])


def test_display_prefix_is_first_eight_characters() -> None:
    key = "hr_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde"

    assert DISPLAY_PREFIX_LENGTH == 8
    assert display_prefix(key) == "hr_AbCdE"


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "hr_",
        "hr_" + "a" * 42,
        "hr_" + "a" * 44,
        "HR_" + "a" * 43,
        "hx_" + "a" * 43,
        "hr_" + "a" * 42 + "=",
        "hr_" + "a" * 42 + "/",
        "hr_" + "a" * 42 + ".",
        " hr_" + "a" * 43,
        "hr_" + "a" * 43 + " ",
        "hr_" + "a" * 43 + "\n",
        "hr_" + "a" * 42 + "é",
    ],
)
def test_malformed_keys_do_not_look_like_keys(candidate: str) -> None:
    assert not looks_like_key(candidate)


def test_key_with_dashes_and_underscores_looks_like_a_key() -> None:
    assert looks_like_key("hr_" + "-_" * 21 + "Z")


def test_same_hash_compares_exactly() -> None:
    digest = hash_key("hr_x")

    assert same_hash(digest, hash_key("hr_x"))
    assert not same_hash(digest, hash_key("hr_y"))
    assert not same_hash(digest, digest[:-1])
