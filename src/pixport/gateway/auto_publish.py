"""Automatic publishing: a study is published once it has received nothing for a while.

With ``gateway.auto_publish_after`` set (seconds), the gateway's HTTP server runs a
publisher thread.  Each pass (every half of that time, at least every 30 s):

1. asks the index for the studies whose newest instance was received between the previous
   pass's cutoff (less ``OVERLAP``, for transactions that committed late or another node's
   clock) and now less the quiet time; the first pass after start asks for every quiet study;
2. adds the studies it has to retry that are still quiet (one that received more since comes
   back through step 1 once it is quiet again);
3. publishes each study that is not published, or whose publication does not cover its
   newest instances (``Publication.is_behind``: the new manifest supersedes the previous
   one), oldest first.  A withdrawn study is left alone: withdrawing was a person's decision,
   and only an explicit publish (command or API) undoes it.

A study whose patient is not linked to a national key yet is tried again every pass (cheap: no
hashing happens before that check) and logged once per change of the study, by its UID only.
Any other failure of one study is logged (error class and, for our own errors, their
message, which carries UIDs and ids only) and retried with a backoff doubling up to an hour;
the others go on.  The hub unreachable ends the pass: every study left is retried next pass.

One runner per gateway: every server worker process starts the thread, but it runs passes
only while it holds an exclusive lock (``flock``) on ``gateway-auto-publish.lock`` in the
archive's data folder; the others wait, and one takes over if the holder's process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool

from pixport.errors import PeerUnavailable, PixportError
from pixport.gateway.hub_client import HubRefused
from pixport.gateway.node import Gateway, PatientNotLinked
from pixport.storage.base import StudyActivity

log = structlog.get_logger("pixport.gateway")

OVERLAP = timedelta(minutes=5)
MAX_INTERVAL_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 3600.0
LOCK_FILE = "gateway-auto-publish.lock"
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(slots=True)
class _Retry:
    last_received_at: datetime
    attempts: int = 0
    not_before: float = 0.0  # time.monotonic()
    reported_unlinked: bool = False


@dataclass(slots=True)
class PassResult:
    """What one pass did, by Study Instance UID."""

    published: list[str] = field(default_factory=list)
    waiting_for_link: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class AutoPublisher:
    """Finds the studies that are quiet and not (or no longer) covered by a publication; publishes them."""

    def __init__(self, gateway: Gateway, quiet_seconds: float) -> None:
        self.gateway = gateway
        self.quiet = timedelta(seconds=quiet_seconds)
        self.interval = min(quiet_seconds / 2, MAX_INTERVAL_SECONDS)
        self._watermark: datetime | None = None
        self._retries: dict[str, _Retry] = {}

    def run_pass(self, stop: threading.Event | None = None) -> PassResult:
        """One pass; publishing errors are logged and retried later, never raised."""
        cutoff = datetime.now(UTC) - self.quiet
        found = self._quiet_studies(cutoff)
        self._watermark = cutoff
        queue = sorted(found, key=lambda a: (a.last_received_at, a.study_instance_uid))
        result = PassResult()
        position = 0
        try:
            for position, activity in enumerate(queue):
                if stop is not None and stop.is_set():
                    self._keep(queue[position:])
                    break
                if not self._publish_if_needed(activity, result):
                    self._keep(queue[position + 1 :])
                    break
        except BaseException:
            # E.g. the gateway's database unavailable: the window has moved on, so keep the rest.
            self._keep(queue[position:])
            raise
        return result

    def _quiet_studies(self, cutoff: datetime) -> list[StudyActivity]:
        index = self.gateway.archive.index
        after = None if self._watermark is None else self._watermark - OVERLAP
        found = {
            a.study_instance_uid: a for a in index.list_study_activity(received_after=after, received_until=cutoff)
        }
        to_retry = [uid for uid in self._retries if uid not in found]
        if to_retry:
            still_quiet = index.list_study_activity(received_until=cutoff, study_instance_uids=to_retry)
            found.update({a.study_instance_uid: a for a in still_quiet})
            for uid in to_retry:
                if uid not in found:  # received more since: back through the window once quiet
                    del self._retries[uid]
        return list(found.values())

    def _keep(self, left: list[StudyActivity]) -> None:
        for activity in left:
            self._retries.setdefault(activity.study_instance_uid, _Retry(activity.last_received_at))

    def _publish_if_needed(self, activity: StudyActivity, result: PassResult) -> bool:
        """Publish one study if it needs it; False when the hub cannot be reached (end the pass)."""
        uid = activity.study_instance_uid
        retry = self._retries.get(uid)
        if retry is not None and retry.last_received_at != activity.last_received_at:
            retry = self._retries[uid] = _Retry(activity.last_received_at)  # changed: a fresh start
        if retry is not None and retry.not_before > time.monotonic():
            return True
        publication = self.gateway.find_publication(uid)
        if publication is not None and (publication.status != "current" or not publication.is_behind(activity)):
            self._retries.pop(uid, None)
            return True
        try:
            registered = self.gateway.publish_study(uid)
        except PatientNotLinked:
            retry = self._retries.setdefault(uid, _Retry(activity.last_received_at))
            if not retry.reported_unlinked:
                log.warning("auto_publish.patient_not_linked", study_instance_uid=uid)
                retry.reported_unlinked = True
            result.waiting_for_link.append(uid)
            return True
        except (PeerUnavailable, HubRefused) as exc:
            if isinstance(exc, HubRefused) and exc.status < 500:  # noqa: PLR2004  refused this study
                self._failed(activity, exc, result)
                return True
            log.warning("auto_publish.hub_unavailable", study_instance_uid=uid, reason=str(exc))
            self._retries.setdefault(uid, _Retry(activity.last_received_at))
            result.failed.append(uid)
            return False
        except Exception as exc:  # noqa: BLE001  one study's failure must not stop the others
            self._failed(activity, exc, result)
            return True
        self._retries.pop(uid, None)
        result.published.append(uid)
        log.info(
            "auto_publish.published",
            study_instance_uid=uid,
            manifest_id=registered.get("manifest_id"),
            supersedes=registered.get("supersedes"),
            instances=registered.get("number_of_instances"),
        )
        return True

    def _failed(self, activity: StudyActivity, exc: Exception, result: PassResult) -> None:
        uid = activity.study_instance_uid
        retry = self._retries.setdefault(uid, _Retry(activity.last_received_at))
        retry.attempts += 1
        delay = min(self.interval * 2**retry.attempts, MAX_BACKOFF_SECONDS)
        retry.not_before = time.monotonic() + delay
        # Our errors' messages carry UIDs and ids only; anyone else's might quote data: class only.
        reason = str(exc) if isinstance(exc, PixportError) else ""
        log.warning(
            "auto_publish.failed",
            study_instance_uid=uid,
            error=type(exc).__name__,
            reason=reason,
            attempts=retry.attempts,
            retry_in_s=round(delay, 1),
        )
        result.failed.append(uid)


class SingleRunnerLock:
    """An exclusive, non-blocking ``flock`` on a file; the kernel releases it when its process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this object holds it now."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Let another runner take over."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


class AutoPublishThread:
    """The publisher's thread: passes while it holds the gateway's runner lock, standby otherwise."""

    def __init__(self, gateway: Gateway, quiet_seconds: float) -> None:
        self.publisher = AutoPublisher(gateway, quiet_seconds)
        self.lock = SingleRunnerLock(gateway.settings.storage.data_dir / LOCK_FILE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixport-auto-publish", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Ask the thread to stop after the study it is publishing, and wait for it a while."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        interval = self.publisher.interval
        code = self.publisher.gateway.code
        try:
            while not self._stop.is_set():
                if not self.lock.try_acquire():
                    self._stop.wait(interval)
                    continue
                log.info(
                    "auto_publish.running",
                    institution=code,
                    pid=os.getpid(),
                    after_s=self.publisher.quiet.total_seconds(),
                )
                while not self._stop.is_set():
                    try:
                        self.publisher.run_pass(self._stop)
                    except Exception as exc:  # noqa: BLE001  e.g. the index unavailable: try again next pass
                        log.warning("auto_publish.pass_failed", error=type(exc).__name__)
                    self._stop.wait(interval)
        finally:
            self.lock.release()


def auto_publish_lifespan(gateway: Gateway, quiet_seconds: float) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Starlette lifespan that runs the publisher while the server does."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        runner = AutoPublishThread(gateway, quiet_seconds)
        runner.start()
        try:
            yield
        finally:
            await run_in_threadpool(runner.stop)

    return lifespan
