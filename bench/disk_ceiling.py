"""How much faster this machine's disk lets four writers store than one, with no DICOM at all.

A C-STORE is acknowledged only once its object is durable.  Per object PixPort's listener
makes one new file in a staging folder, writes it as it arrives, hashes it, fsyncs it,
renames it under its digest, fsyncs that directory, and then commits the index row, whose
write-ahead log it flushes.  This script does exactly those file operations, on the same
files, from 1 and from N threads (the waits release the GIL), and prints objects a second:
the disk's own 4-vs-1 ceiling for the 500-slice CT, measured in the same run as the
listener's.  If the disk alone cannot give four writers 1.5x one writer's rate, no server
that makes the same promise can.

    .venv/bin/python bench/disk_ceiling.py [--threads 4] [--rounds 3] [--tmp DIR]

dimse_bench.py runs it once per C-STORE round and prints it as an information row.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate

CHUNK = 64 * 1024  # a few P-DATA PDUs' worth: the listener writes each PDU's fragment as it comes
INDEX_RECORD = 1024  # about what one instance's index row adds to the write-ahead log
LOG_BYTES = 4 * 1024 * 1024  # the log is reused from its start after each checkpoint


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableWriter:
    """A staging folder, 256 digest-prefix folders and a log file, like the listener's data folder."""

    def __init__(self, root: Path) -> None:
        self.staging = root / "tmp"
        self.blobs = root / "blobs"
        self.staging.mkdir(parents=True)
        for value in range(256):
            (self.blobs / f"{value:02x}").mkdir(parents=True)
        _fsync_dir(str(self.blobs))
        _fsync_dir(str(root))
        self._log = os.open(root / "index-wal", os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(self._log, bytes(LOG_BYTES), 0)
        os.fsync(self._log)
        self._names = itertools.count()
        self._records = itertools.count()
        self._record = os.urandom(INDEX_RECORD)

    def store(self, data: bytes) -> None:
        """Stage, hash, fsync, rename, fsync the directory, append to the log and flush it."""
        staged = os.path.join(self.staging, f"s{next(self._names)}")  # noqa: PTH118
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        digest = hashlib.sha256()
        try:
            view = memoryview(data)
            for start in range(0, len(view), CHUNK):
                piece = view[start : start + CHUNK]
                os.write(fd, piece)
                digest.update(piece)
            os.fsync(fd)
        finally:
            os.close(fd)
        name = digest.hexdigest()
        folder = os.path.join(self.blobs, name[:2])  # noqa: PTH118
        os.replace(staged, os.path.join(folder, name))  # noqa: PTH105, PTH118
        _fsync_dir(folder)
        offset = (next(self._records) * INDEX_RECORD) % LOG_BYTES
        os.pwrite(self._log, self._record, offset)
        os.fdatasync(self._log)

    def close(self) -> None:
        os.close(self._log)


def objects_per_second(root: Path, payloads: list[bytes], threads: int) -> float:
    """Store every payload once, from ``threads`` threads pulling from one queue."""
    writer = DurableWriter(root)
    queue = iter(payloads)
    lock = threading.Lock()
    failures: list[OSError] = []

    def work() -> None:
        try:
            while True:
                with lock:
                    data = next(queue, None)
                if data is None:
                    return
                writer.store(data)
        except OSError as exc:  # reported below: a failed write must not look fast
            failures.append(exc)

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - started
    writer.close()
    if failures:
        raise failures[0]
    return len(payloads) / seconds


def unique_payloads(files: list[Path], salt: str) -> list[bytes]:
    """The files' bytes, each made distinct per run so that no digest repeats (a repeat is no write)."""
    tag = salt.encode()
    return [path.read_bytes() + tag for path in files]


@dataclass
class Ceiling:
    one: float  # objects a second, one writer
    many: float  # objects a second, ``threads`` writers
    threads: int

    @property
    def ratio(self) -> float:
        return self.many / self.one if self.one else 0.0


def measure(files: list[Path], tmp: Path, threads: int, label: str) -> Ceiling:
    """One writer, then ``threads``; each in a new folder that stays until the caller's clean-up.

    Folders are not deleted between measurements: on this machine's ext4 (no journal) new
    inodes skip recently deleted ones one by one, so a deletion would slow what follows.
    """
    rates = []
    for count in (1, threads):
        root = Path(tempfile.mkdtemp(prefix=f"disk-{label}-{count}-", dir=tmp))
        rates.append(objects_per_second(root, unique_payloads(files, f"{label}/{count}"), count))
    return Ceiling(rates[0], rates[1], threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4, help="writers in the parallel run (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements, median reported (default %(default)s)")
    parser.add_argument("--ct", type=int, default=generate.FULL_CT, help="CT slices (default %(default)s)")
    parser.add_argument("--data", type=Path, default=generate.DEFAULT_OUT, help="data cache (default bench/.data)")
    parser.add_argument("--tmp", type=Path, help="where the test folders go (default: system temp)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds need at least 1")
    plan = generate.ensure_data(generate.build_plan(args.ct, 1, args.data))
    with tempfile.TemporaryDirectory(prefix="pixport-disk-ceiling-", dir=args.tmp) as tmp:
        results = []
        for round_ in range(args.rounds):
            ceiling = measure(plan.ct_files, Path(tmp), args.threads, f"r{round_}")
            results.append(ceiling)
            print(
                f"round {round_ + 1}: 1 writer {ceiling.one:.0f}/s, {args.threads} writers {ceiling.many:.0f}/s, "
                f"{ceiling.ratio:.2f}x",
                flush=True,
            )
    print(f"median {args.threads} vs 1: {statistics.median(c.ratio for c in results):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
