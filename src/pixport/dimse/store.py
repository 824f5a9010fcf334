"""C-STORE SCP: each received data set goes through the archive's one ingest pipeline.

pynetdicom writes the incoming data set, with File Meta built from the request and the
presentation context, to a temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``).  In
the listener that file is already in the archive's staging area (``serve`` points pynetdicom's
temporary directory there), hashed as it arrived (``received.py``) and size-checked in place;
elsewhere the handler copies it into the staging area.  Then it parses it, checks it against
the request, makes it durable and indexes it, and only then answers.

How it waits for the disk depends on what else the process is doing.  Serving one association,
the data's fsync runs on a helper thread while the data set is parsed and its index rows
written: the chain of waits before the answer is shorter (small studies +8%).  With other
associations active in the same process, their work fills those waits, and handing each fsync
to a helper and back (thread switches, futex calls) cost more CPU than it saved: syncing on
the association's own thread there took 11% less CPU per small instance and stored 6% more
per second on four associations (the CT: 13% less CPU, 7% more per second).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from pydicom.dataset import Dataset

from pixport.archive.ingest import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_CONFLICT,
    OUT_OF_RESOURCES,
    WARNING_NOT_CONFORMANT,
    IngestPipeline,
    InstanceResult,
)
from pixport.archive.node import Archive
from pixport.dimse.fast_store import discard_partial
from pixport.dimse.received import receive_failure, received_digest
from pixport.errors import LimitExceeded, StorageUnavailable

log = structlog.get_logger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO


def status(code: int, comment: str | None = None) -> Dataset:
    """A status data set, with a short Error Comment (no patient data: UIDs at most)."""
    result = Dataset()
    result.Status = code
    if comment:
        result.ErrorComment = comment.encode("ascii", "replace").decode()[:ERROR_COMMENT_LENGTH]
    return result


def handle_c_store(event: Any, archive: Archive) -> Dataset | int:
    """EVT_C_STORE: store one instance; always answer with an explicit status, never raise.

    Success is the bare status code (pynetdicom takes either): a Dataset per instance cost
    more than the answer it carries.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    answer, _ = store_event(archive.ingest, event, f"dimse:{calling}", overlap=_alone(event.assoc))
    return answer


def store_event(
    ingest: IngestPipeline, event: Any, source: str, *, overlap: bool = False
) -> tuple[Dataset | int, InstanceResult]:
    """Store the data set of an EVT_C_STORE durably: the status to answer, and what was done.

    The one path of every C-STORE we receive, as an SCP or as the SCU of a C-GET: the answer
    comes only after the instance is durable, or with the status that says why it is not.
    """
    request = event.request
    try:
        path = Path(event.dataset_path)
    except (AttributeError, TypeError):  # no file: pynetdicom was not told to write one
        log.error("dimse.store.no_dataset_file")  # noqa: TRY400  nothing to trace
        return _refused(PROCESSING_FAILURE, "data set not received", request)
    if (failure := receive_failure(request)) is not None:
        # Disk full or over the size limit while it arrived: nothing of it is left on disk.
        log.warning("dimse.store.not_received", error=type(failure).__name__)
        reason = failure.reason if isinstance(failure, LimitExceeded) else str(failure)
        return _refused(OUT_OF_RESOURCES, reason, request)
    try:
        return _store(ingest, path, request, source, overlap=overlap)
    except LimitExceeded as exc:
        return _refused(OUT_OF_RESOURCES, exc.reason, request)
    except StorageUnavailable as exc:
        log.error("dimse.store.storage_unavailable", error=type(exc).__name__, detail=str(exc))  # noqa: TRY400
        return _refused(OUT_OF_RESOURCES, str(exc), request)
    except Exception as exc:  # noqa: BLE001  an exception would become 0xC211 without a reason
        # Type only: a library message may quote patient data.
        log.error("dimse.store.failed", error=type(exc).__name__)  # noqa: TRY400
        return _refused(PROCESSING_FAILURE, "processing failure", request)


def _refused(code: int, reason: str, request: Any) -> tuple[Dataset, InstanceResult]:
    result = InstanceResult(
        "rejected",
        sop_class_uid=str(getattr(request, "AffectedSOPClassUID", "") or "") or None,
        sop_instance_uid=str(getattr(request, "AffectedSOPInstanceUID", "") or "") or None,
        reason=reason,
        failure_code=code,
    )
    return status(code, reason), result


def _alone(assoc: Any) -> bool:
    """Whether ``assoc`` is the only association its server is serving (module doc)."""
    server = getattr(assoc, "_server", None)
    if server is None:
        return True
    serving = getattr(server, "serving", None)  # a scp.ListenerServer counts them
    return (len(server.active_associations) if serving is None else serving) <= 1


def _store(
    ingest: IngestPipeline, path: Path, request: Any, source: str, *, overlap: bool
) -> tuple[Dataset | int, InstanceResult]:
    if path.parent == ingest.blobs.staging_dir.absolute():
        # The listener has pynetdicom write into staging, hashing as it writes.
        staged = ingest.adopt_file(path, received_digest(request))
    else:
        with path.open("rb") as stream:
            staged = ingest.stage_stream(stream)
    # With ``overlap``, its bytes go to disk while it is parsed; only the rename waits for the
    # verdict.  Without, commit syncs and renames it before the index statements.
    data_synced = ingest.sync_in_background(staged) if overlap else None
    examined = ingest.examine(staged)
    result = examined.result
    if examined.parsed is None:
        code = result.failure_code or CANNOT_UNDERSTAND
        log.info("dimse.store.rejected", sop_instance_uid=result.sop_instance_uid, status=f"{code:04X}")
        return status(code, result.reason), result
    affected_class = str(request.AffectedSOPClassUID or "")
    affected_instance = str(request.AffectedSOPInstanceUID or "")
    if (affected_class, affected_instance) != (result.sop_class_uid, result.sop_instance_uid):
        ingest.discard([staged])
        log.info("dimse.store.uid_mismatch", sop_instance_uid=affected_instance)
        return _refused(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class/Instance UID differ from the C-STORE request", request
        )
    (result,) = ingest.commit([examined], source, data_synced=[data_synced] if data_synced is not None else None)
    if result.status == "conflict":
        return status(DUPLICATE_CONFLICT, "stored already with different content"), result
    if not result.ok:  # pragma: no cover - commit only stores, finds a duplicate or a conflict
        return status(result.failure_code or PROCESSING_FAILURE, result.reason), result
    log.debug("dimse.store.stored", sop_instance_uid=result.sop_instance_uid, status=result.status)
    if result.warnings:
        return status(WARNING_NOT_CONFORMANT, result.warnings[0]), result
    return SUCCESS, result


def discard_partial_data_set(event: Any) -> None:
    """EVT_CONN_CLOSE: delete the temporary file of a data set that never arrived whole.

    pynetdicom deletes the file of every C-STORE it hands to the handler; one cut off by an
    abort or a vanished peer would stay behind.
    """
    if discard_partial(event.assoc.dimse):  # a data set the fast path was receiving
        log.info("dimse.store.partial_discarded")
        return
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)
    except OSError:
        log.warning("dimse.store.partial_not_deleted")
    else:
        log.info("dimse.store.partial_discarded")
