"""PixPort's exception tree.  Messages carry UIDs and internal ids, never patient data.

PixportError
├── ConfigurationError
├── StorageUnavailable          a backend failed (database, object store, filesystem)
│   └── OutOfResources          disk full, or a hard limit reached
├── InstanceRejected            one object refused at ingest (reason in .reason)
│   ├── MalformedInstance       not parseable DICOM, truncated, bad meta
│   ├── MissingAttribute        no Study/Series/SOP Instance UID, SOP Class UID
│   ├── LimitExceeded           object, element or nesting over a limit
│   └── InstanceConflict        same SOP Instance UID, different bytes
├── PeerUnavailable             a DICOM peer is unreachable, rejected the association or aborted it
├── NotFound                    no such study / series / instance / frame
├── BadQuery                    a query parameter that cannot be understood
├── PixelDataError              pixel data that cannot be decoded or rendered
├── TrustError                  a signature, key or manifest that cannot be trusted (.reason)
│   ├── SignatureInvalid        not signed by the key it names, or not a signature at all
│   ├── KeyNotTrusted           unknown, revoked, or not valid at the time it signed
│   └── ManifestInvalid         malformed, inconsistent, or refused by the registry
├── NotAuthenticated            a caller that did not prove who it is
└── NotAuthorized               a caller that may not do this
"""

from __future__ import annotations

import errno

# A write or flush that failed for want of space: the caller may try again once some is freed.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class PixportError(Exception):
    """Base class of every error PixPort raises on purpose."""


class ConfigurationError(PixportError):
    """The settings cannot be used as they are."""


class StorageUnavailable(PixportError):
    """A storage backend failed; the operation had no effect."""


class OutOfResources(StorageUnavailable):
    """No space left, or another resource exhausted; nothing was stored."""


def storage_error(exc: OSError, *, full: str, failed: str) -> StorageUnavailable:
    """A failed file operation as the caller should hear it.

    ``OutOfResources(full)`` for a full disk or quota, else ``StorageUnavailable`` with the
    system's reason after ``failed``: never the path, which ``str(exc)`` would quote.
    """
    if exc.errno in DISK_FULL:
        return OutOfResources(full)
    return StorageUnavailable(f"{failed}: {exc.strerror or type(exc).__name__}")


class InstanceRejected(PixportError):
    """One object was refused at ingest.  ``reason`` is safe to show to the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedInstance(InstanceRejected):
    """The bytes are not a DICOM object that can be stored."""


class MissingAttribute(InstanceRejected):
    """A required identifying attribute is absent or empty."""


class LimitExceeded(InstanceRejected):
    """The object is over a configured hard limit."""


class StudyMismatch(InstanceRejected):
    """The object belongs to another study than the one the request is for."""


class InstanceConflict(InstanceRejected):
    """An instance with this SOP Instance UID is stored already with different bytes."""


class PeerUnavailable(PixportError):
    """A DICOM peer cannot be reached, rejected the association or aborted it."""


class NotFound(PixportError):
    """The requested resource does not exist."""


class BadQuery(PixportError):
    """A query parameter cannot be understood."""


class PixelDataError(PixportError):
    """Pixel data cannot be decoded, transcoded or rendered (unsupported or corrupt)."""


class TrustError(PixportError):
    """Something signed cannot be trusted.  ``reason`` is precise and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureInvalid(TrustError):
    """The signature does not verify with the key it names, or is not a signature."""


class KeyNotTrusted(TrustError):
    """The signing key is unknown, revoked, or was not valid when it signed."""


class ManifestInvalid(TrustError):
    """A manifest is malformed or inconsistent, or the registry refuses it."""


class NotAuthenticated(PixportError):
    """The caller did not prove who it is (no, expired, replayed or bad credentials)."""


class NotAuthorized(PixportError):
    """The caller is known but may not do this."""
