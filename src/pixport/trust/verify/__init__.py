"""Offline verification of a signed study manifest against a set of images (``pixport verify``).

Four checks, all reported, and the study is verified only if every one holds:

1. **The key directory**: signed by the hub key the verifier pinned (``verify_directory``).
2. **The signer**: the manifest's key (its JWS ``kid``) is in the directory, the JWS verifies
   with it, the key belongs to the manifest's issuer and was valid, and not revoked, at the
   manifest's ``issued_at`` (``Directory.signer_key``).
3. **The instances**, matched by SOP Instance UID: ``intact`` (the file's bytes, or its data
   set after the File Meta, have the manifest's digest), ``re-encoded`` (other bytes, but the
   same decoded pixels: a lossless re-encoding, accepted and reported), ``altered`` (neither),
   ``missing`` (listed, not found), ``extra`` (found, not listed).  The SOP Class, Series and
   Study Instance UIDs must also be the manifest's.
4. **Patient identity**: every image's PatientID, IssuerOfPatientID, PatientName,
   PatientBirthDate and PatientSex must be the manifest's.  An image without an
   IssuerOfPatientID is accepted: the issuer is then the one the manifest names.

A re-encoded instance has its pixels and the attributes above checked, not the rest of its
header: nothing else of a re-encoded file's header is covered by a digest.

Images are read one at a time (``image_sources.iter_images``): the digests are computed file by
file, the decoded pixels only when the bytes do not match.  Files that are not DICOM (a
viewer's, a README, the DICOMDIR) are ignored; DICOM that cannot be read is reported.

Patient data (names, IDs, birth dates) never appears in log lines, exception messages or the
report's text: an identity difference names the attribute and the SOP Instance UID.  The values
are kept on ``IdentityDifference`` (out of its ``repr``) and are put in ``as_dict`` only when
asked for, under ``patient_data``.

Its parts:

- ``study.py``: ``verify_study`` and ``verify_study_offline``, the four checks together;
- ``signer.py``: check 2, the manifest's signature and its key in the directory;
- ``instances.py``: check 3, each image's UIDs and digests against the manifest's;
- ``identity.py``: check 4, each image's patient attributes against the manifest's;
- ``report.py``: ``VerificationReport`` and its parts, their summary line and JSON form.
"""

from pixport.trust.verify.identity import IDENTITY_ATTRIBUTES
from pixport.trust.verify.instances import CHUNK, Progress, check_images
from pixport.trust.verify.report import (
    ACCEPTED,
    STATUSES,
    DirectoryCheck,
    IdentityDifference,
    InstanceCheck,
    SignerCheck,
    Status,
    VerificationReport,
)
from pixport.trust.verify.signer import check_signer
from pixport.trust.verify.study import CLOCK_SKEW, verify_study, verify_study_offline

__all__ = [
    "ACCEPTED",
    "CHUNK",
    "CLOCK_SKEW",
    "IDENTITY_ATTRIBUTES",
    "STATUSES",
    "DirectoryCheck",
    "IdentityDifference",
    "InstanceCheck",
    "Progress",
    "SignerCheck",
    "Status",
    "VerificationReport",
    "check_images",
    "check_signer",
    "verify_study",
    "verify_study_offline",
]
