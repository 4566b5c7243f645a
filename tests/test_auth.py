"""Tests for engine.auth: minting, verifying and fuzzing HMAC-signed tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.auth import (
    Claims,
    Role,
    TokenError,
    TokenExpired,
    TokenInvalid,
    anonymous_claims,
    mint_token,
    verify_token,
)
from protocol.codes import CloseCode

__all__: list[str] = []

SECRET = "test-secret"
NOW = 1_700_000_000.0


def make_claims(**changes: Any) -> Claims:
    values: dict[str, Any] = {
        "user_id": "u-42",
        "name": "Alice",
        "rooms": ("room-1", "room-2"),
        "role": Role.HOST,
        "expires_at": NOW + 3600,
    }
    values.update(changes)
    return Claims(**values)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: object, secret: str = SECRET, version: str = "v1") -> str:
    """A correctly signed token around an arbitrary JSON payload."""
    signed = f"{version}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(signature)}"


def good_payload(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "sub": "u-1",
        "name": "Bob",
        "rooms": ["r"],
        "role": "viewer",
        "exp": NOW + 60,
    }
    payload.update(changes)
    return payload


# ----------------------------------------------------------------- round trip


def test_minted_token_verifies_to_the_same_claims() -> None:
    claims = make_claims()
    assert verify_token(SECRET, mint_token(SECRET, claims), now=NOW) == claims


@pytest.mark.parametrize("role", list(Role))
def test_every_role_round_trips(role: Role) -> None:
    claims = make_claims(role=role)
    verified = verify_token(SECRET, mint_token(SECRET, claims), now=NOW)
    assert verified.role is role
    assert verified.can_write


def test_bytes_and_str_secrets_are_the_same_key() -> None:
    token = mint_token(SECRET.encode(), make_claims())
    assert verify_token(SECRET, token, now=NOW) == make_claims()


def test_token_has_the_documented_format() -> None:
    token = mint_token(SECRET, make_claims())
    version, payload_b64, signature_b64 = token.split(".")
    assert version == "v1"
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    assert payload == {
        "sub": "u-42",
        "name": "Alice",
        "rooms": ["room-1", "room-2"],
        "role": "host",
        "exp": NOW + 3600,
    }
    expected = hmac.new(SECRET.encode(), f"v1.{payload_b64}".encode(), hashlib.sha256).digest()
    assert signature_b64 == b64(expected)
    assert "=" not in token


def test_externally_minted_token_with_extra_keys_and_int_exp_is_accepted() -> None:
    token = forge(good_payload(exp=int(NOW) + 60, iat=int(NOW)))
    claims = verify_token(SECRET, token, now=NOW)
    assert claims.user_id == "u-1"
    assert claims.expires_at == NOW + 60
    assert isinstance(claims.expires_at, float)


# ----------------------------------------------------------------- rejection


def test_wrong_secret_is_invalid() -> None:
    token = mint_token(SECRET, make_claims())
    with pytest.raises(TokenInvalid, match="signature"):
        verify_token("other-secret", token, now=NOW)


def test_bad_signature_is_invalid() -> None:
    token = mint_token(SECRET, make_claims())
    head, _, signature = token.rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(TokenInvalid, match="signature"):
        verify_token(SECRET, f"{head}.{flipped}", now=NOW)


def test_tampered_payload_is_invalid() -> None:
    token = mint_token(SECRET, make_claims(rooms=("room-1",)))
    _, payload_b64, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    payload["rooms"] = ["*"]
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, f"v1.{b64(json.dumps(payload).encode())}.{signature}", now=NOW)


def test_non_canonical_signature_encoding_is_invalid() -> None:
    token = mint_token(SECRET, make_claims())
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, token + "==", now=NOW)


def test_expired_token_is_expired_not_invalid() -> None:
    token = mint_token(SECRET, make_claims(expires_at=NOW))
    with pytest.raises(TokenExpired):
        verify_token(SECRET, token, now=NOW)
    assert verify_token(SECRET, token, now=NOW - 0.001).user_id == "u-42"


def test_expired_token_with_bad_signature_is_invalid() -> None:
    token = mint_token(SECRET, make_claims(expires_at=NOW - 10))
    with pytest.raises(TokenInvalid):
        verify_token("other-secret", token, now=NOW)


def test_error_codes_match_the_protocol() -> None:
    assert (TokenInvalid.code, TokenInvalid.close_code) == ("token_invalid", 4001)
    assert (TokenExpired.code, TokenExpired.close_code) == ("token_expired", 4002)
    assert TokenInvalid.close_code == CloseCode.TOKEN_INVALID
    assert TokenExpired.close_code == CloseCode.TOKEN_EXPIRED
    assert issubclass(TokenInvalid, TokenError)
    assert issubclass(TokenExpired, TokenError)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1..",
        "v1.abc",
        "v2.e30.AAAA",
        "v1.e30.AAAA.extra",
        "v1.e=30.AAAA",
        "v1.é.AAAA",
        "x" * 100_000,
    ],
)
def test_malformed_token_is_invalid(token: str) -> None:
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, token, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "string",
        good_payload(sub=""),
        good_payload(sub="x" * 129),
        good_payload(sub=7),
        good_payload(sub="anon:123"),
        good_payload(name="n" * 65),
        good_payload(name=None),
        good_payload(rooms=[]),
        good_payload(rooms="r"),
        good_payload(rooms=[""]),
        good_payload(rooms=[1]),
        good_payload(role="admin"),
        good_payload(role=None),
        good_payload(exp="soon"),
        good_payload(exp=True),
        good_payload(exp=None),
        {k: v for k, v in good_payload().items() if k != "sub"},
    ],
)
def test_correctly_signed_token_with_bad_claims_is_invalid(payload: object) -> None:
    with pytest.raises(TokenInvalid, match=r"invalid token claims|JSON object"):
        verify_token(SECRET, forge(payload), now=NOW)


def test_signed_garbage_payload_is_invalid() -> None:
    signed = f"v1.{b64(b'not json')}"
    signature = b64(hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest())
    with pytest.raises(TokenInvalid, match="JSON"):
        verify_token(SECRET, f"{signed}.{signature}", now=NOW)


def test_name_may_be_long_up_to_the_limit() -> None:
    claims = make_claims(name="n" * 64, user_id="u" * 128)
    assert verify_token(SECRET, mint_token(SECRET, claims), now=NOW) == claims


# ----------------------------------------------------------------- minting


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": ""},
        {"user_id": "anon:1"},
        {"name": "n" * 65},
        {"rooms": ()},
        {"rooms": ("",)},
        {"expires_at": float("nan")},
        {"anonymous": True},
    ],
)
def test_claims_that_would_not_verify_cannot_be_minted(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, make_claims(**changes))


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        mint_token("", make_claims())
    with pytest.raises(ValueError):
        verify_token(b"", "v1.e30.AAAA", now=NOW)


# ----------------------------------------------------------------- claims


def test_can_join_only_the_listed_rooms() -> None:
    claims = make_claims(rooms=("room-1", "room-2"))
    assert claims.can_join("room-1")
    assert claims.can_join("room-2")
    assert not claims.can_join("room-3")
    assert not claims.can_join("*x")


def test_star_admits_any_room() -> None:
    claims = verify_token(SECRET, mint_token(SECRET, make_claims(rooms=("*",))), now=NOW)
    assert claims.can_join("anything")


def test_anonymous_claims_are_read_only_viewers_of_any_room() -> None:
    claims = anonymous_claims("sess-9", now=NOW)
    assert claims.user_id == "anon:sess-9"
    assert claims.name == "anonymous"
    assert claims.role is Role.VIEWER
    assert claims.anonymous
    assert not claims.can_write
    assert claims.can_join("any-room")
    assert claims.expires_at > NOW + 50 * 365 * 86400


# ----------------------------------------------------------------- fuzz


@given(st.text())
def test_arbitrary_text_raises_only_token_errors(token: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token, now=NOW)


@given(st.from_regex(r"v1\.[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,50}", fullmatch=True))
def test_well_shaped_unsigned_tokens_raise_only_token_invalid(token: str) -> None:
    with pytest.raises(TokenInvalid):
        verify_token(SECRET, token, now=NOW)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "sub": _json | st.text(max_size=130),
            "name": _json,
            "rooms": _json | st.lists(st.text(max_size=3), max_size=3),
            "role": _json | st.sampled_from([r.value for r in Role]),
            "exp": _json,
        },
    )
)
def test_signed_arbitrary_payloads_verify_or_raise_only_token_errors(
    payload: dict[str, object],
) -> None:
    try:
        claims = verify_token(SECRET, forge(payload), now=0.0)
    except TokenError:
        return
    assert claims == Claims(
        user_id=str(payload["sub"]),
        name=str(payload["name"]),
        rooms=tuple(str(r) for r in payload["rooms"]),  # type: ignore[attr-defined]
        role=Role(str(payload["role"])),
        expires_at=float(payload["exp"]),  # type: ignore[arg-type]
    )
