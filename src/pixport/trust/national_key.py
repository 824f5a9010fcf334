"""The national key: a pseudonym of a resident registration number (RRN), made at the gateway.

The hub indexes patients by ``HMAC-SHA256(network key, RRN)``: the same person gets the same
key at every hospital, and nobody without the network key (which the operator provisions to
gateways only) can tell whose key it is or test a guessed RRN against it.  The RRN itself
never leaves the gateway's memory: ``ResidentRegistrationNumber`` hides it from ``str``,
``repr``, f-strings and logs, and errors about it never quote it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pixport.errors import ConfigurationError

NETWORK_KEY_BYTES = 32
_PREFIX = "nk1."
_DOMAIN = b"pixport national key v1\0"
_RRN = re.compile(r"(\d{6})-?(\d{7})")
_NATIONAL_KEY = re.compile(r"nk1\.[A-Za-z0-9_-]{43}")


class InvalidRRN(ValueError):
    """Not a resident registration number (the message never quotes it)."""


@dataclass(frozen=True)
class ResidentRegistrationNumber:
    """An RRN (주민등록번호), 13 digits; it never shows itself in text."""

    _digits: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> ResidentRegistrationNumber:
        """Accept ``YYMMDD-NNNNNNN`` or 13 digits; the birth date and the century digit are checked.

        The last digit is not checked: RRNs issued since October 2020 have no check digit.
        """
        match = _RRN.fullmatch(text.strip())
        if match is None:
            raise InvalidRRN("a resident registration number has 13 digits (YYMMDD-NNNNNNN)")
        digits = match.group(1) + match.group(2)
        month, day, century = int(digits[2:4]), int(digits[4:6]), digits[6]
        if not (1 <= month <= 12 and 1 <= day <= 31):  # noqa: PLR2004  calendar bounds
            raise InvalidRRN("the resident registration number does not start with a birth date")
        if century not in "0123456789":
            raise InvalidRRN("the resident registration number has no sex/century digit")
        return cls(digits)

    def reveal(self) -> str:
        """The 13 digits, for the one computation that needs them."""
        return self._digits

    def __str__(self) -> str:
        return "RRN(******-*******)"

    def __repr__(self) -> str:
        return "ResidentRegistrationNumber(******-*******)"

    def __format__(self, format_spec: str) -> str:
        return str(self)


def national_key(rrn: ResidentRegistrationNumber, network_key: bytes) -> str:
    """The national key of ``rrn``: ``nk1.`` and 43 base64url characters."""
    if len(network_key) < NETWORK_KEY_BYTES:
        raise ConfigurationError(f"the network key must have at least {NETWORK_KEY_BYTES} bytes")
    digest = hmac.new(network_key, _DOMAIN + rrn.reveal().encode("ascii"), hashlib.sha256).digest()
    return _PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_national_key(text: str) -> bool:
    """Whether ``text`` has the form of a national key."""
    return _NATIONAL_KEY.fullmatch(text) is not None


def generate_network_key(path: Path) -> None:
    """Write a new random network key to ``path`` (0600, atomically); refuse to overwrite one."""
    if path.exists():
        raise ConfigurationError(f"{path} exists: a network key is never replaced silently")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".network-key-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64encode(secrets.token_bytes(NETWORK_KEY_BYTES)) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_network_key(path: Path) -> bytes:
    """The network key in ``path`` (base64), ConfigurationError if unusable."""
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the network key file {path}: {type(exc).__name__}") from None
    if len(key) < NETWORK_KEY_BYTES:
        raise ConfigurationError(f"the network key in {path} is shorter than {NETWORK_KEY_BYTES} bytes")
    return key
