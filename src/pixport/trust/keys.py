"""Signing keys of institutions and of the hub: Ed25519 (default) or ECDSA P-256.

A private key lives in a PEM file on the node that owns it (mode 0600, written atomically);
only its public half, as a JWK (RFC 7517, RFC 8037 for Ed25519), ever leaves the node.  A key
is named by its JWK thumbprint (RFC 7638), so a ``kid`` cannot be chosen to collide with
another institution's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import rfc8785
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pixport.errors import KeyNotTrusted

Algorithm = Literal["EdDSA", "ES256"]
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    """A private signing key, with its algorithm and key id."""

    private_key: PrivateKey

    @classmethod
    def generate(cls, algorithm: Algorithm = "EdDSA") -> SigningKey:
        if algorithm == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(data, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(key)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(key)
        raise KeyNotTrusted("only Ed25519 and ECDSA P-256 signing keys are supported")

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        return cls.from_pem(path.read_bytes())

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def save(self, path: Path) -> None:
        """Write the private key to ``path`` (0600), atomically: a crash leaves no half key."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".key-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(self.to_pem())
                out.flush()
                os.fsync(out.fileno())
            Path(temporary).replace(path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @property
    def algorithm(self) -> Algorithm:
        return "ES256" if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else "EdDSA"

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.public_key)

    @property
    def kid(self) -> str:
        return jwk_thumbprint(self.public_jwk())


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The JWK of a public key: only the members RFC 7638 hashes, plus ``alg``."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "alg": "EdDSA"}
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
        "alg": "ES256",
    }


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public JWK: the key's id."""
    members = ("crv", "kty", "x") if jwk.get("kty") == "OKP" else ("crv", "kty", "x", "y")
    try:
        required = {name: jwk[name] for name in members}
    except KeyError as exc:
        raise KeyNotTrusted(f"JWK without {exc.args[0]!r}") from None
    return _b64(hashlib.sha256(rfc8785.dumps(required)).digest())


def public_key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    """The public key of a JWK; KeyNotTrusted for anything but Ed25519 or P-256."""
    try:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_unb64(str(jwk["x"])))
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x = int.from_bytes(_unb64(str(jwk["x"])), "big")
            y = int.from_bytes(_unb64(str(jwk["y"])), "big")
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, ValueError, UnsupportedAlgorithm) as exc:
        raise KeyNotTrusted(f"unusable public key: {type(exc).__name__}") from None
    raise KeyNotTrusted("only Ed25519 (OKP) and P-256 (EC) public keys are supported")


def algorithm_of(jwk: dict[str, Any]) -> Algorithm:
    """The JWS algorithm of a public JWK."""
    return "EdDSA" if jwk.get("kty") == "OKP" else "ES256"
