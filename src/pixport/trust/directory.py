"""The directory of institutions and their public keys, as the hub signs it for offline use.

A verifier that holds a saved directory and the hub's public key (pinned once, out of band)
can check a manifest without reaching the hub: who signed it, and whether that key belonged
to the issuer and was valid, and not revoked, at the time it signed.

A key's validity is a period (``not_before`` to ``not_after``); a revoked key is refused for
every signature, whatever its time, since a compromised key can also sign with a back-dated
time.  Rotation is a new key with an overlapping period; the old one simply expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pixport.errors import KeyNotTrusted, SignatureInvalid
from pixport.trust import jws
from pixport.trust.keys import PublicKey, SigningKey, jwk_thumbprint, public_key_from_jwk

DIRECTORY_TYPE = "pixport-directory+jws"
FORMAT_VERSION = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    """UTC, to the second: the one time format of signed documents."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The inverse of ``format_time``."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One public key of an institution (or of the hub)."""

    kid: str
    jwk: dict[str, str]
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None
    revocation_reason: str = ""

    @property
    def public_key(self) -> PublicKey:
        return public_key_from_jwk(self.jwk)

    def check_valid_at(self, moment: datetime) -> None:
        """KeyNotTrusted, with the reason, unless this key could sign at ``moment``."""
        if self.revoked_at is not None:
            reason = f" ({self.revocation_reason})" if self.revocation_reason else ""
            raise KeyNotTrusted(f"key {self.kid} was revoked at {format_time(self.revoked_at)}{reason}")
        if moment < self.not_before:
            raise KeyNotTrusted(f"key {self.kid} is not valid before {format_time(self.not_before)}")
        if moment > self.not_after:
            raise KeyNotTrusted(f"key {self.kid} expired at {format_time(self.not_after)}")


@dataclass(frozen=True, slots=True)
class InstitutionEntry:
    """An admitted institution: names, gateway endpoint, keys."""

    code: str
    name_ko: str
    name_en: str
    endpoint: str
    active: bool = True
    keys: tuple[KeyEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class Directory:
    """Every institution and key, as of ``issued_at``, signed by the hub key ``hub_kid``."""

    issued_at: datetime
    hub_kid: str
    institutions: tuple[InstitutionEntry, ...] = field(default=())

    def institution(self, code: str) -> InstitutionEntry | None:
        return next((i for i in self.institutions if i.code == code), None)

    def key_of(self, kid: str) -> tuple[InstitutionEntry, KeyEntry] | None:
        for institution in self.institutions:
            for key in institution.keys:
                if key.kid == kid:
                    return institution, key
        return None

    def signer_key(self, kid: str, issuer: str, moment: datetime) -> tuple[InstitutionEntry, KeyEntry]:
        """The issuer's key ``kid``, checked valid at ``moment``; KeyNotTrusted saying why not."""
        found = self.key_of(kid)
        if found is None:
            raise KeyNotTrusted(f"key {kid} is not in the directory")
        institution, key = found
        if institution.code != issuer:
            raise KeyNotTrusted(f"key {kid} belongs to institution {institution.code}, not to the issuer {issuer}")
        if not institution.active:
            raise KeyNotTrusted(f"institution {issuer} is suspended")
        key.check_valid_at(moment)
        return institution, key


def key_entry_payload(key: KeyEntry) -> dict[str, Any]:
    """A key as JSON."""
    return {
        "kid": key.kid,
        "jwk": key.jwk,
        "not_before": format_time(key.not_before),
        "not_after": format_time(key.not_after),
        "revoked_at": format_time(key.revoked_at) if key.revoked_at else None,
        "revocation_reason": key.revocation_reason,
    }


def directory_payload(directory: Directory) -> dict[str, Any]:
    """The JSON object that is signed."""
    return {
        "version": FORMAT_VERSION,
        "issued_at": format_time(directory.issued_at),
        "hub_kid": directory.hub_kid,
        "institutions": [
            {
                "code": i.code,
                "name_ko": i.name_ko,
                "name_en": i.name_en,
                "endpoint": i.endpoint,
                "active": i.active,
                "keys": [key_entry_payload(k) for k in i.keys],
            }
            for i in directory.institutions
        ],
    }


def sign_directory(directory: Directory, hub_key: SigningKey) -> str:
    """The directory as a JWS signed by the hub."""
    if directory.hub_kid != hub_key.kid:
        raise KeyNotTrusted("the directory names another hub key than the one signing it")
    return jws.sign(directory_payload(directory), hub_key, DIRECTORY_TYPE)


def verify_directory(token: str, hub_jwk: dict[str, Any]) -> Directory:
    """The directory in ``token`` if the pinned hub key signed it; SignatureInvalid otherwise."""
    header = jws.read_header(token)
    if header["kid"] != jwk_thumbprint(hub_jwk):
        raise SignatureInvalid("the directory is not signed by the pinned hub key")
    payload = jws.verify(token, public_key_from_jwk(hub_jwk), DIRECTORY_TYPE)
    return directory_from_payload(payload)


def directory_from_payload(payload: dict[str, Any]) -> Directory:
    """The directory a (verified) payload describes."""
    try:
        if payload["version"] != FORMAT_VERSION:
            raise SignatureInvalid(f"unsupported directory version {payload['version']!r}")
        institutions = tuple(
            InstitutionEntry(
                code=str(i["code"]),
                name_ko=str(i["name_ko"]),
                name_en=str(i["name_en"]),
                endpoint=str(i["endpoint"]),
                active=bool(i["active"]),
                keys=tuple(key_entry_from_payload(k) for k in i["keys"]),
            )
            for i in payload["institutions"]
        )
        return Directory(parse_time(payload["issued_at"]), str(payload["hub_kid"]), institutions)
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureInvalid(f"the directory is malformed: {type(exc).__name__}") from None


def key_entry_from_payload(k: dict[str, Any]) -> KeyEntry:
    """A key from JSON; its kid must be its JWK's thumbprint."""
    jwk = {str(n): str(v) for n, v in k["jwk"].items()}
    if jwk_thumbprint(jwk) != k["kid"]:
        raise KeyNotTrusted(f"key {k['kid']} is not the thumbprint of its JWK")
    return KeyEntry(
        kid=str(k["kid"]),
        jwk=jwk,
        not_before=parse_time(k["not_before"]),
        not_after=parse_time(k["not_after"]),
        revoked_at=parse_time(k["revoked_at"]) if k.get("revoked_at") else None,
        revocation_reason=str(k.get("revocation_reason") or ""),
    )
