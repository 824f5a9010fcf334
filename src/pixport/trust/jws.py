"""Signed JSON: JWS compact serialization (RFC 7515) over canonical JSON (RFC 8785).

The payload is the JCS canonical form of a JSON object, so the signed bytes are the same
whoever re-serializes the object, and a verifier refuses any payload that is not canonical:
there is exactly one byte string for each signed document.  The protected header names the
algorithm, the key (``kid``, its RFC 7638 thumbprint) and the document type (``typ``).
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import rfc8785
from jwt.exceptions import InvalidTokenError

from pixport.errors import SignatureInvalid
from pixport.trust.keys import PublicKey, SigningKey

_JWS = jwt.PyJWS()


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical form: sorted keys, no whitespace, one encoding per number and string."""
    return rfc8785.dumps(value)


def sign(payload: dict[str, Any], key: SigningKey, typ: str) -> str:
    """Sign ``payload`` (a JSON object) with ``key``: a compact JWS string."""
    return _JWS.encode(
        canonical_json(payload), key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": typ}
    )


def read_header(token: str) -> dict[str, Any]:
    """The protected header, unverified: to find the key that should have signed."""
    try:
        header = _JWS.get_unverified_header(token)
    except InvalidTokenError:
        raise SignatureInvalid("not a JWS compact serialization") from None
    if not isinstance(header.get("kid"), str) or header.get("alg") not in {"EdDSA", "ES256"}:
        raise SignatureInvalid("JWS header without a kid, or with an algorithm other than EdDSA or ES256")
    return header


def read_payload_unverified(token: str) -> dict[str, Any]:
    """The payload, NOT verified: only to show what a document claims before it is checked."""
    try:
        data = _JWS.decode_complete(token, options={"verify_signature": False})["payload"]
    except InvalidTokenError:
        raise SignatureInvalid("not a JWS compact serialization") from None
    return _json_object(data)


def verify(token: str, public_key: PublicKey, typ: str) -> dict[str, Any]:
    """The payload of ``token`` if ``public_key`` signed it as a ``typ`` document, else SignatureInvalid."""
    header = read_header(token)
    if header.get("typ") != typ:
        raise SignatureInvalid(f"document type {header.get('typ')!r}, expected {typ!r}")
    try:
        data = _JWS.decode_complete(token, public_key, algorithms=[header["alg"]])["payload"]
    except InvalidTokenError:
        raise SignatureInvalid("the signature does not verify with the signer's key") from None
    payload = _json_object(data)
    if canonical_json(payload) != data:
        raise SignatureInvalid("the signed payload is not canonical JSON (RFC 8785)")
    return payload


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureInvalid("the signed payload is not JSON") from None
    if not isinstance(value, dict):
        raise SignatureInvalid("the signed payload is not a JSON object")
    return value
