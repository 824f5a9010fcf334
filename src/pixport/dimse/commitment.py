"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION answered by N-EVENT-REPORT.

An instance is committed only if it is indexed (so its blob was made durable first) and its
blob, read back now, still hashes to the digest recorded at ingest.  The report goes to the
requester on a new association (the requester must be a known remote node); if it is not
known, on the requesting association while that is still open.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role

from pixport.archive.node import Archive
from pixport.config import DimseSettings
from pixport.dimse.network import NODELAY_HANDLERS, client_ssl_context, find_remote
from pixport.storage.base import Match, Query

log = structlog.get_logger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1
ALL_SUCCESS = 1
SOME_FAILURES = 2
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT = 0x0115
HASH_CHUNK = 1024 * 1024
REPORT_DELAY = 0.2  # seconds: let the N-ACTION response leave first


@dataclass(slots=True)
class CommitmentResult:
    """The outcome of one commitment request."""

    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)


def check_commitment(archive: Archive, transaction_uid: str, references: list[tuple[str, str]]) -> CommitmentResult:
    """Which referenced (SOP Class, SOP Instance) are durably stored and intact."""
    result = CommitmentResult(transaction_uid)
    for sop_class, sop_instance in references:
        reason = _failure_reason(archive, sop_class, sop_instance)
        if reason is None:
            result.committed.append((sop_class, sop_instance))
        else:
            result.failed.append((sop_class, sop_instance, reason))
    return result


def _failure_reason(archive: Archive, sop_class: str, sop_instance: str) -> int | None:
    rows = archive.index.search(Query(level="instance", matches=[Match("sop_instance_uid", "single", sop_instance)]))
    if not rows:
        return NO_SUCH_OBJECT_INSTANCE
    row = rows[0]
    stored = archive.index.list_instances(row.study_instance_uid, row.series_instance_uid, sop_instance)
    if not stored:
        return NO_SUCH_OBJECT_INSTANCE
    if stored[0].sop_class_uid != sop_class:
        return CLASS_INSTANCE_CONFLICT
    digest = hashlib.sha256()
    try:
        with archive.blobs.open(stored[0].digest) as blob:
            while chunk := blob.read(HASH_CHUNK):
                digest.update(chunk)
    except Exception as exc:  # noqa: BLE001  a missing or unreadable blob is not committed
        log.error("dimse.commitment.blob_unreadable", sop_instance_uid=sop_instance, error=type(exc).__name__)  # noqa: TRY400
        return NO_SUCH_OBJECT_INSTANCE
    if digest.hexdigest() != stored[0].digest:
        log.error("dimse.commitment.digest_mismatch", sop_instance_uid=sop_instance)
        return PROCESSING_FAILURE
    return None


def event_report(result: CommitmentResult) -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) of the N-EVENT-REPORT for ``result``."""
    info = Dataset()
    info.TransactionUID = result.transaction_uid
    if result.committed:
        info.ReferencedSOPSequence = [_item(c, i) for c, i in result.committed]
    if result.failed:
        items = []
        for sop_class, sop_instance, reason in result.failed:
            item = _item(sop_class, sop_instance)
            item.FailureReason = reason
            items.append(item)
        info.FailedSOPSequence = items
    return (SOME_FAILURES if result.failed else ALL_SUCCESS), info


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def handle_n_action(event: Any, archive: Archive, settings: DimseSettings) -> tuple[int, Dataset | None]:
    """EVT_N_ACTION: accept the request, then report the outcome from another thread; never raise."""
    try:
        if int(event.action_type) != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION_TYPE, None
        information = event.action_information
        transaction_uid = str(information.TransactionUID)
        references = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in information.get("ReferencedSOPSequence", [])
        ]
    except Exception as exc:  # noqa: BLE001  a request we cannot read is the peer's error
        log.info("dimse.commitment.bad_request", error=type(exc).__name__)
        return INVALID_ARGUMENT, None
    calling = str(event.assoc.requestor.ae_title).strip()
    log.info("dimse.commitment.requested", transaction_uid=transaction_uid, instances=len(references))
    thread = threading.Thread(
        target=_report,
        args=(archive, settings, event.assoc, calling, transaction_uid, references),
        name=f"commitment-{transaction_uid[-12:]}",
        daemon=True,
    )
    thread.start()
    return 0x0000, None


def _report(
    archive: Archive,
    settings: DimseSettings,
    requesting_assoc: Any,
    calling: str,
    transaction_uid: str,
    references: list[tuple[str, str]],
) -> None:
    try:
        threading.Event().wait(REPORT_DELAY)
        result = check_commitment(archive, transaction_uid, references)
        event_type, info = event_report(result)
        sent = send_event_report(settings, calling, event_type, info, requesting_assoc)
        log.info(
            "dimse.commitment.reported",
            transaction_uid=transaction_uid,
            committed=len(result.committed),
            failed=len(result.failed),
            sent=sent,
        )
    except Exception as exc:  # noqa: BLE001  a background thread must not die with a traceback
        log.error("dimse.commitment.report_failed", transaction_uid=transaction_uid, error=type(exc).__name__)  # noqa: TRY400


def send_event_report(
    settings: DimseSettings, calling: str, event_type: int, info: Dataset, requesting_assoc: Any = None
) -> bool:
    """Send the report to the requester; True if it answered with Success."""
    remote = find_remote(settings, calling)
    if remote is None:
        if requesting_assoc is not None and requesting_assoc.is_established:
            return _send(requesting_assoc, event_type, info)
        log.warning("dimse.commitment.requester_unknown")
        return False
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ssl_context = client_ssl_context(settings, remote)
    assoc = ae.associate(
        remote.host,
        remote.port,
        contexts=[build_context(STORAGE_COMMITMENT_PUSH_MODEL)],
        ae_title=remote.ae_title,
        ext_neg=[build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)],
        tls_args=(ssl_context, remote.host) if ssl_context is not None else None,
        evt_handlers=list(NODELAY_HANDLERS),
    )
    if not assoc.is_established:
        log.warning("dimse.commitment.requester_unreachable", ae_title=remote.ae_title)
        return False
    try:
        return _send(assoc, event_type, info)
    finally:
        assoc.release()


def _send(assoc: Any, event_type: int, info: Dataset) -> bool:
    status, _ = assoc.send_n_event_report(
        info, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
    )
    return bool(status) and int(status.get("Status", 0xFFFF)) == 0
