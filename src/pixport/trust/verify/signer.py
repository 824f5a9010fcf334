"""The signer check: the manifest's signature, and its key in the directory, valid when it was signed."""

from __future__ import annotations

from pixport.errors import ManifestInvalid, SignatureInvalid, TrustError
from pixport.trust import jws
from pixport.trust.directory import Directory, InstitutionEntry, KeyEntry
from pixport.trust.manifest import MANIFEST_TYPE, Manifest, manifest_from_payload
from pixport.trust.verify.report import SignerCheck


def check_signer(token: str, directory: Directory | None) -> tuple[SignerCheck, Manifest | None, str]:
    """(the signer check, the manifest if it can be read, why it cannot be read otherwise).

    The signature is checked with the key its ``kid`` names before the manifest is read, so
    that a changed payload is reported as what it is (a signature that does not verify).  A
    manifest whose signer is not trusted is still returned, to compare the images with what
    it claims; the report then fails.
    """
    try:
        kid = str(jws.read_header(token)["kid"])
    except SignatureInvalid as exc:
        return SignerCheck(ok=False, reason=f"not a signed manifest: {exc.reason}"), None, exc.reason
    claimed, problem = _claimed_manifest(token)
    if directory is None:
        return SignerCheck(ok=False, reason="no trusted key directory", kid=kid), claimed, problem
    found = directory.key_of(kid)
    if found is None:
        return SignerCheck(ok=False, reason=f"key {kid} is not in the directory", kid=kid), claimed, problem
    institution, key = found
    try:
        payload = jws.verify(token, key.public_key, MANIFEST_TYPE)
    except TrustError as exc:
        return _signer(institution, key, exc.reason), claimed, problem
    try:
        manifest = manifest_from_payload(payload)
    except ManifestInvalid as exc:
        return _signer(institution, key, f"the signed manifest is invalid: {exc.reason}"), None, exc.reason
    try:
        directory.signer_key(kid, manifest.issuer, manifest.issued_at)
    except TrustError as exc:
        return _signer(institution, key, exc.reason), manifest, ""
    return _signer(institution, key, ""), manifest, ""


def _claimed_manifest(token: str) -> tuple[Manifest | None, str]:
    """The manifest as the token claims it, unverified, or why it cannot be read."""
    try:
        return manifest_from_payload(jws.read_payload_unverified(token)), ""
    except TrustError as exc:
        return None, exc.reason


def _signer(institution: InstitutionEntry, key: KeyEntry, reason: str) -> SignerCheck:
    return SignerCheck(
        ok=not reason,
        reason=reason,
        kid=key.kid,
        institution_code=institution.code,
        name_ko=institution.name_ko,
        name_en=institution.name_en,
        key_not_before=key.not_before,
        key_not_after=key.not_after,
    )
