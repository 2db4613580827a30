"""Delivery signatures: Standard Webhooks vectors, our key convention, and `X-HR-Signature`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from handoffrail_server.webhooks import signing

# The test vector of the Standard Webhooks specification (and its reference libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = datetime.fromtimestamp(1614265330, tz=UTC)
SPEC_PAYLOAD = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "s3cr3t-for-signing-tests-ü-✓"


def receiver_webhook(secret: str) -> Webhook:
    """What a receiver builds from our endpoint secret (README recipe)."""
    return Webhook("whsec_" + base64.b64encode(secret.encode("utf-8")).decode("ascii"))


def reference_standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """An independent implementation of the Standard Webhooks v1 signature."""
    to_sign = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def test_spec_vector_is_reproduced_by_the_standardwebhooks_library() -> None:
    signature = Webhook(SPEC_SECRET).sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    assert signature == SPEC_SIGNATURE


def test_spec_vector_is_reproduced_by_a_plain_hmac_of_id_timestamp_body() -> None:
    key = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
    signature = reference_standard_signature(
        key, SPEC_MSG_ID, 1614265330, SPEC_PAYLOAD.encode("utf-8")
    )
    assert signature == SPEC_SIGNATURE


def test_our_signature_uses_the_utf8_bytes_of_the_secret_as_the_key() -> None:
    body = SPEC_PAYLOAD.encode("utf-8")
    ours = signing.standard_signature(SECRET, SPEC_MSG_ID, SPEC_TIMESTAMP, body)
    expected = reference_standard_signature(SECRET.encode("utf-8"), SPEC_MSG_ID, 1614265330, body)
    assert ours == expected
    assert ours == receiver_webhook(SECRET).sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)


def test_the_spec_key_bytes_give_the_spec_signature_through_our_key_convention() -> None:
    # Our signer takes the secret as text; a receiver's whsec_ secret is base64 of its bytes.
    # The spec key is not valid UTF-8, so check the equivalence through the library instead:
    # whsec_ + base64(key bytes) of the spec secret round-trips to the same key and signature.
    key = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
    rebuilt = Webhook("whsec_" + base64.b64encode(key).decode("ascii"))
    assert rebuilt.sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE
    assert Webhook(key).sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def signed(secret: str = SECRET, *, body: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    payload = {
        "event": "packet.created",
        "timestamp": "2024-01-01T00:00:00+00:00",
        "packet_id": "7d1f4c3e-0000-4000-8000-000000000001",
        "status": "created",
        "metadata": {"summary": "Grüße ✓"},
    }
    data = body if body is not None else signing.encode_body(payload)
    headers = signing.signed_headers(
        secret=secret,
        body=data,
        event_id="evt-0001",
        delivery_id="dlv-0001",
        event_type="packet.created",
        timestamp=datetime.now(UTC),
    )
    return data, headers


def test_our_headers_verify_with_standardwebhooks_and_the_base64_of_the_secret() -> None:
    body, headers = signed()
    parsed = receiver_webhook(SECRET).verify(body, headers)
    assert parsed["event"] == "packet.created"
    assert parsed["metadata"]["summary"] == "Grüße ✓"


def test_verification_fails_with_another_secret_or_a_tampered_body() -> None:
    body, headers = signed()
    with pytest.raises(WebhookVerificationError):
        receiver_webhook("another-secret-0123456789").verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        receiver_webhook(SECRET).verify(body.replace(b"created", b"claimed"), headers)


def test_headers_carry_event_ids_and_a_unix_timestamp() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    headers = signing.signed_headers(
        secret=SECRET,
        body=b"{}",
        event_id="evt-42",
        delivery_id="dlv-42",
        event_type="packet.completed",
        timestamp=moment,
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == "evt-42"
    assert headers["X-HR-Delivery-ID"] == "dlv-42"
    assert headers["X-HR-Event"] == "packet.completed"
    assert headers["webhook-timestamp"] == str(int(moment.timestamp()))
    assert headers["webhook-signature"] == reference_standard_signature(
        SECRET.encode(), "evt-42", int(moment.timestamp()), b"{}"
    )


def test_x_hr_signature_is_the_hex_hmac_sha256_of_the_exact_body() -> None:
    body, headers = signed()
    expected = hmac.new(SECRET.encode("utf-8"), body, hashlib.sha256).hexdigest()
    assert headers["X-HR-Signature"] == expected
    assert signing.hr_signature(SECRET, body) == expected
    assert len(expected) == 64
    assert not headers["X-HR-Signature"].startswith("sha256=")


def test_x_hr_signature_changes_with_any_byte_of_the_body() -> None:
    body = b'{"a":1}'
    assert signing.hr_signature(SECRET, body) != signing.hr_signature(SECRET, b'{"a": 1}')


def test_encoded_body_is_compact_utf8_json_that_round_trips() -> None:
    payload = {"event": "packet.created", "metadata": {"name": "Zoë"}, "details": None}
    body = signing.encode_body(payload)
    assert b" " not in body
    assert "Zoë".encode() in body
    assert json.loads(body) == payload
