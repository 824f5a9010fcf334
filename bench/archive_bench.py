"""PixPort against Orthanc on the same data, in the same run, over DICOMweb.

Starts Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) and ``pixport archive serve``, each in
its own temporary folder on free loopback ports, ingests the generated data set (see
``generate.py``) with STOW-RS, then times QIDO-RS, study metadata and WADO-RS retrieval, and
prints PixPort/Orthanc ratios against the targets of issue 2.  See bench/README.md.

    .venv/bin/python bench/archive_bench.py [--quick] [--servers pixport,orthanc]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
ORTHANC_BIN = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PIXPORT = "PixPort"
ORTHANC = "Orthanc"
MB = 1e6
STOW_ACCEPT = "application/dicom+json"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RSS_LIMIT_MB = 300.0


class BenchError(Exception):
    """Something the benchmark cannot measure around (a server that does not start, a failed STOW)."""


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the benchmark itself is killed (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    root: str  # DICOMweb root, no trailing slash
    workdir: Path
    log_path: Path
    ready_path: str
    info: dict[str, Any] = field(default_factory=dict)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.base_url + self.ready_path).status_code == 200:
                        return
                time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def tree_pids(self) -> list[int]:
        """The server process and all its descendants, from /proc."""
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:  # noqa: PTH123 (hot loop)
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop the server's process group; delete its folder unless ``keep_files``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # Workers of a process group that outlived their parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)


_LIVE: list[Server] = []


def stop_all() -> None:
    while _LIVE:
        _LIVE.pop().stop()


def _spawn(cmd: list[str], env: dict[str, str], workdir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops the group itself
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (started from the main thread before client threads)
        )


def start_orthanc(tmp: Path, label: str, overrides: dict[str, Any] | None = None) -> Server:
    """Orthanc in a fresh folder; ``overrides`` replaces top-level keys of the configuration."""
    workdir = Path(tempfile.mkdtemp(prefix=f"orthanc-{label}-", dir=tmp))
    http_port = free_port()
    config = {
        "Name": "PixPortBench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "StorageCompression": False,
        "SyncStorageArea": True,  # the default, and what PixPort does (fsync before acknowledging)
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpThreadsCount": 50,
        "SaveJobs": False,
        "MetricsEnabled": False,
        "StorageAccessOnFind": "Never",  # answer C-FIND / tools/find from the index only
        "DefaultEncoding": "Utf8",  # Korean names survive; Latin1 (the default) turns them into "^"
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "OverwriteInstances": False,
        "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "Host": f"127.0.0.1:{http_port}",
            "Ssl": False,
            "StudiesMetadata": "Full",  # complete metadata (the default); "MainDicomTags" omits what viewers need
            "SeriesMetadata": "Full",
        },
    }
    config.update(overrides or {})
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHANC")}
    env["TCP_NODELAY"] = "1"
    log_path = workdir / "orthanc.log"
    proc = _spawn([ORTHANC_BIN, str(config_path)], env, workdir, log_path)
    base = f"http://127.0.0.1:{http_port}"
    server = Server(ORTHANC, proc, base, base + "/dicom-web", workdir, log_path, "/system")
    _LIVE.append(server)
    server.wait_ready()
    with httpx.Client(timeout=5.0) as client:
        server.info["version"] = client.get(base + "/system").json().get("Version")
        plugin = client.get(base + "/plugins/dicom-web")
        server.info["dicomweb_plugin"] = plugin.json().get("Version") if plugin.status_code == 200 else None
    server.info["config"] = config
    return server


def pixport_command(explicit: str | None) -> list[str]:
    if explicit:
        return explicit.split()
    for candidate in (Path(sys.executable).parent / "pixport", REPO / ".venv" / "bin" / "pixport"):
        if candidate.exists():
            return [str(candidate)]
    return ["pixport"]


def start_pixport(tmp: Path, label: str, workers: int, command: list[str]) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix=f"pixport-{label}-", dir=tmp))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    env.update(
        {
            "PIXPORT_STORAGE__DATA_DIR": str(workdir / "data"),
            "PIXPORT_HTTP__HOST": "127.0.0.1",
            "PIXPORT_HTTP__PORT": str(port),
            "PIXPORT_HTTP__WORKERS": str(workers),
            "PIXPORT_DIMSE__PORT": str(free_port()),  # never collide with a node already on 11112
        }
    )
    log_path = workdir / "pixport.log"
    proc = _spawn([*command, "archive", "serve"], env, workdir, log_path)
    base = f"http://127.0.0.1:{port}"
    server = Server(PIXPORT, proc, base, base + "/dicomweb", workdir, log_path, "/healthz")
    _LIVE.append(server)
    server.wait_ready()
    server.info["command"] = [*command, "archive", "serve"]
    server.info["workers"] = workers
    with contextlib.suppress(Exception):
        server.info["version"] = importlib.metadata.version("pixport")
    return server


def start(name: str, tmp: Path, label: str, args: argparse.Namespace) -> Server:
    if name == ORTHANC:
        return start_orthanc(tmp, label)
    return start_pixport(tmp, label, args.workers, pixport_command(args.pixport_cmd))


def retire(server: Server, *, keep_files: bool = False) -> None:
    """Stop a server for good; ``keep_files`` leaves its folder to the final clean-up (see dimse_bench)."""
    server.stop(keep_files=keep_files)
    if server in _LIVE:  # only once it is stopped: an interrupted stop is finished by stop_all()
        _LIVE.remove(server)


# --------------------------------------------------------------------------------------------
# Memory sampling
# --------------------------------------------------------------------------------------------


def _proc_kb(path: str, key: bytes) -> int:
    """A ``Key:   123 kB`` line of a /proc file, in bytes (0 if the process is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(path, "rb") as f:  # noqa: PTH123 (hot loop)
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return ""


class RssSampler:
    """Peak of the summed VmRSS of a server's process tree, sampled from /proc every 20 ms.

    Also the summed PSS (shared pages divided among the processes that share them) every 100 ms,
    and the per-process RSS at the first sample, to tell the idle footprint from the growth.
    """

    def __init__(self, server: Server, interval: float = 0.02) -> None:
        self.server = server
        self.interval = interval
        self.peak_bytes = 0
        self.peak_pss_bytes = 0
        self.first_bytes = 0
        self.first_processes: list[dict[str, Any]] = []
        self.processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids: list[int] = []
        refreshed = 0.0
        while True:
            now = time.monotonic()
            if now - refreshed > 0.5:
                pids, refreshed = self.server.tree_pids(), now
            per_pid = {pid: _proc_kb(f"/proc/{pid}/status", b"VmRSS:") for pid in pids}
            total = sum(per_pid.values())
            if not self.samples:
                self.first_bytes = total
                self.first_processes = [{"pid": p, "rss_bytes": r, "cmdline": _cmdline(p)} for p, r in per_pid.items()]
            if self.samples % 5 == 0:
                pss = sum(_proc_kb(f"/proc/{pid}/smaps_rollup", b"Pss:") for pid in pids)
                self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            self.peak_bytes = max(self.peak_bytes, total)
            self.processes = max(self.processes, len(pids))
            self.samples += 1
            if self._stop.wait(self.interval):
                return


# --------------------------------------------------------------------------------------------
# STOW-RS
# --------------------------------------------------------------------------------------------


@dataclass
class StowRequest:
    body: bytes
    content_type: str
    instances: int
    payload_bytes: int


def build_requests(files: list[Path], per_request: int, tag: str) -> list[StowRequest]:
    out = []
    for start_at in range(0, len(files), per_request):
        chunk = files[start_at : start_at + per_request]
        boundary = f"PixPortBench-{tag}-{start_at:06d}-b0undary"
        parts, payload = [], 0
        for path in chunk:
            data = path.read_bytes()
            payload += len(data)
            parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data, b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        out.append(StowRequest(b"".join(parts), content_type, len(chunk), payload))
    return out


def _count_stow_reply(reply: httpx.Response) -> tuple[int, int]:
    """(stored, failed) from a PS3.18 STOW-RS response in DICOM JSON."""
    try:
        doc = reply.json()
    except ValueError:
        return 0, 0
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    stored = len(doc.get("00081199", {}).get("Value", []))
    failed = len(doc.get("00081198", {}).get("Value", []))
    return stored, failed


def stow_phase(server: Server, requests: list[StowRequest], clients: int, timeout: float) -> float:
    """Send every request with ``clients`` concurrent connections; wall-clock seconds."""
    url = server.root + "/studies"
    replies: list[httpx.Response | BaseException | None] = [None] * len(requests)
    cursor = iter(range(len(requests)))
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        with httpx.Client(timeout=timeout) as client:
            while not stop.is_set():
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                req = requests[i]
                headers = {"Content-Type": req.content_type, "Accept": STOW_ACCEPT, "Accept-Encoding": "identity"}
                try:
                    replies[i] = client.post(url, content=req.body, headers=headers)
                except httpx.HTTPError as exc:
                    replies[i] = exc
                    stop.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        stop.set()
    elapsed = time.perf_counter() - started
    for req, reply in zip(requests, replies, strict=True):
        if not isinstance(reply, httpx.Response):
            raise BenchError(f"{server.name} STOW-RS failed: {reply!r}\n{server.log_tail()}")
        stored, failed = _count_stow_reply(reply)
        if reply.status_code != 200 or stored != req.instances or failed:
            raise BenchError(
                f"{server.name} STOW-RS: HTTP {reply.status_code}, stored {stored}/{req.instances}, failed {failed}: "
                f"{reply.text[:500]}"
            )
    return elapsed


@dataclass
class IngestResult:
    clients: int
    ct_seconds: float
    small_seconds: float
    ct_instances: int
    small_instances: int
    ct_bytes: int
    small_bytes: int
    peak_rss_ct_bytes: int
    peak_pss_ct_bytes: int
    start_rss_bytes: int  # just before the CT ingest: the idle server
    start_processes: list[dict[str, Any]]
    processes: int
    client_cpu_seconds: float  # this benchmark's own CPU time over the ingest (client overhead)

    @property
    def seconds(self) -> float:
        return self.ct_seconds + self.small_seconds

    @property
    def instances_per_s(self) -> float:
        return (self.ct_instances + self.small_instances) / self.seconds

    @property
    def mb_per_s(self) -> float:
        return (self.ct_bytes + self.small_bytes) / MB / self.seconds


def ingest(server: Server, ct: list[StowRequest], small: list[StowRequest], clients: int) -> IngestResult:
    cpu0 = time.process_time()
    with RssSampler(server) as rss:
        ct_s = stow_phase(server, ct, clients, timeout=600) if ct else 0.0
    small_s = stow_phase(server, small, clients, timeout=600) if small else 0.0
    return IngestResult(
        clients=clients,
        ct_seconds=ct_s,
        small_seconds=small_s,
        ct_instances=sum(r.instances for r in ct),
        small_instances=sum(r.instances for r in small),
        ct_bytes=sum(r.payload_bytes for r in ct),
        small_bytes=sum(r.payload_bytes for r in small),
        peak_rss_ct_bytes=rss.peak_bytes,
        peak_pss_ct_bytes=rss.peak_pss_bytes,
        start_rss_bytes=rss.first_bytes,
        start_processes=rss.first_processes,
        processes=rss.processes,
        client_cpu_seconds=time.process_time() - cpu0,
    )


# --------------------------------------------------------------------------------------------
# Reads: QIDO-RS, metadata, WADO-RS
# --------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One timed read: returns seconds (or bytes/s) and checks the first answer."""

    key: str
    label: str
    n: int
    warmup: int
    budget_s: float
    run: Callable[[httpx.Client, Server], tuple[float, str | None]]


def qido(path: str, params: dict[str, str], expected: int, *, gzip: bool) -> Callable[..., tuple[float, str | None]]:
    # "*" and "^" stay literal, as browsers and dicomweb-client send them (Orthanc 1.10 does not decode %2A).
    query = urllib.parse.urlencode(params, safe="*^")

    def run(client: httpx.Client, server: Server) -> tuple[float, str | None]:
        headers = {"Accept": "application/dicom+json", "Accept-Encoding": "gzip" if gzip else "identity"}
        t0 = time.perf_counter()
        reply = client.get(f"{server.root}{path}?{query}", headers=headers)
        body = reply.content
        elapsed = time.perf_counter() - t0
        if reply.status_code not in {200, 204}:
            return elapsed, f"HTTP {reply.status_code}"
        got = len(json.loads(body)) if body else 0
        return elapsed, None if got == expected else f"{got} results, expected {expected}"

    return run


def metadata(study_uid: str, expected: int, *, gzip: bool) -> Callable[..., tuple[float, str | None]]:
    def run(client: httpx.Client, server: Server) -> tuple[float, str | None]:
        headers = {"Accept": "application/dicom+json", "Accept-Encoding": "gzip" if gzip else "identity"}
        t0 = time.perf_counter()
        reply = client.get(f"{server.root}/studies/{study_uid}/metadata", headers=headers)
        body = reply.content
        elapsed = time.perf_counter() - t0
        if reply.status_code != 200:
            return elapsed, f"HTTP {reply.status_code}"
        got = len(json.loads(body))
        return elapsed, None if got == expected else f"{got} instances, expected {expected}"

    return run


def wado_study(study_uid: str, min_bytes: int) -> Callable[..., tuple[float, str | None]]:
    def run(client: httpx.Client, server: Server) -> tuple[float, str | None]:
        headers = {"Accept": WADO_ACCEPT, "Accept-Encoding": "identity"}
        received = 0
        t0 = time.perf_counter()
        with client.stream("GET", f"{server.root}/studies/{study_uid}", headers=headers) as reply:
            for chunk in reply.iter_raw(1 << 20):
                received += len(chunk)
        elapsed = time.perf_counter() - t0
        if reply.status_code != 200:
            return elapsed, f"HTTP {reply.status_code}"
        if reply.headers.get("content-encoding"):
            return elapsed, f"compressed ({reply.headers['content-encoding']})"
        note = None if received >= min_bytes else f"{received} bytes, expected at least {min_bytes}"
        return received / MB / elapsed, note

    return run


def measure(probe: Probe, servers: list[Server]) -> dict[str, dict[str, Any]]:
    """Warm up, then alternate servers sample by sample so drift hits both alike."""
    clients = {s.name: httpx.Client(timeout=300) for s in servers}
    notes: dict[str, str | None] = {}
    samples: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for s in servers:
            for i in range(max(probe.warmup, 1)):
                _, note = probe.run(clients[s.name], s)
                if i == 0:
                    notes[s.name] = note
        deadline = time.monotonic() + probe.budget_s
        for i in range(probe.n):
            for s in servers:
                value, note = probe.run(clients[s.name], s)
                samples[s.name].append(value)
                notes[s.name] = notes[s.name] or note
            if i >= 2 and time.monotonic() > deadline:
                break
    finally:
        for c in clients.values():
            c.close()
    return {
        name: {"median": statistics.median(vals), "samples": vals, "check": notes[name]}
        for name, vals in samples.items()
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    unit: str
    pixport: float | None
    orthanc: float | None
    target: str  # e.g. ">=1.2x", "<=0.5x", "<300 MB", "" (information only)
    aim: str = ""
    note: str = ""
    ratio: float | None = None
    verdict: str = ""

    def judge(self) -> None:
        if self.pixport is not None and self.orthanc:
            self.ratio = self.pixport / self.orthanc
        if self.pixport is None or (self.orthanc is None and "MB" not in self.target):
            self.verdict = "n/a" if self.target else "info"
            return
        if self.note.startswith("CHECK"):
            self.verdict = "CHECK"
            return
        if not self.target:
            self.verdict = "info"
            return
        if self.target.startswith("<") and self.target.endswith("MB"):
            bound = float(self.target.strip("<= MB"))
            ok = self.pixport is not None and self.pixport < bound
        elif self.ratio is None:
            self.verdict = "n/a"
            return
        else:
            bound = float(self.target.strip("<>=x"))
            ok = self.ratio >= bound if self.target.startswith(">=") else self.ratio <= bound
        self.verdict = "pass" if ok else "FAIL"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_table(rows: Sequence[Row]) -> None:
    header = ("metric", "unit", PIXPORT, ORTHANC, "ratio", "target", "result")
    table = [header] + [
        (
            r.metric,
            r.unit,
            _fmt(r.pixport),
            _fmt(r.orthanc),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            (r.target + (f" (aim {r.aim})" if r.aim else "")) or "-",
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {2, 3, 4}
    for n, line in enumerate(table):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r.note:
            print(f"  note: {r.metric}: {r.note}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: object) -> None:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def cleanup(tmp: Path) -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        # Don't interrupt the clean-up itself (a second Ctrl-C would leave servers behind).
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stop_all()
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 CT slices, 100 small studies, fewer samples"
    )
    parser.add_argument("--ct", type=int, help="CT slices (default 500, --quick 50)")
    parser.add_argument("--small", type=int, help="small studies (default 2000, --quick 100)")
    parser.add_argument("--servers", default="pixport,orthanc", help="which servers to run (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="PIXPORT_HTTP__WORKERS (default %(default)s)")
    parser.add_argument("--per-request", type=int, default=25, help="instances per STOW-RS request (default 25)")
    parser.add_argument("--pixport-cmd", help="command that runs PixPort's CLI (default: the venv's pixport)")
    parser.add_argument("--data", type=Path, default=generate.DEFAULT_OUT, help="data cache (default bench/.data)")
    parser.add_argument("--tmp", type=Path, help="where the servers' temporary folders go (default: system temp)")
    parser.add_argument("--rounds", type=int, help="ingest rounds, median reported (default 2, --quick 1)")
    parser.add_argument("--gzip", action="store_true", help="ask for gzip on JSON replies (default: identity)")
    parser.add_argument("--out", type=Path, help="JSON results file (default bench/results/archive-<time>.json)")
    args = parser.parse_args(argv)
    names = {"pixport": PIXPORT, "orthanc": ORTHANC}
    try:
        args.server_names = [names[s.strip().lower()] for s in args.servers.split(",") if s.strip()]
    except KeyError as exc:
        parser.error(f"unknown server {exc}")
    if (args.ct is not None and args.ct < 1) or (args.small is not None and args.small < 1):
        parser.error("--ct and --small need at least 1")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.ct is None:
        args.ct = 50 if args.quick else generate.FULL_CT
    if args.small is None:
        args.small = 100 if args.quick else generate.FULL_SMALL
    return args


def _git_describe() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "src"))}
    return {}


Ingests = dict[int, dict[str, list[IngestResult]]]
Reads = dict[str, dict[str, dict[str, Any]]]


def ingest_all(
    args: argparse.Namespace, tmp: Path, ct: list[StowRequest], small: list[StowRequest]
) -> tuple[Ingests, dict[str, Server], dict[str, dict[str, Any]]]:
    """Every (round, clients, server) ingest on a fresh server; the last 4-client servers stay up."""
    names: list[str] = args.server_names
    ingests: Ingests = {c: {n: [] for n in names} for c in (1, 4)}
    infos: dict[str, dict[str, Any]] = {}
    live: dict[str, Server] = {}
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]  # alternate who goes first
        for clients in (1, 4):
            for name in order:
                server = start(name, tmp, f"r{round_}c{clients}", args)
                infos[name] = server.info
                print(f"  STOW-RS {clients} client(s) -> {name} ...", end="", flush=True)
                res = ingest(server, ct, small, clients)
                ingests[clients][name].append(res)
                print(
                    f" {res.seconds:.1f} s, {res.instances_per_s:.0f} inst/s, {res.mb_per_s:.1f} MB/s, "
                    f"RSS {res.start_rss_bytes / MB:.0f} MB idle, {res.peak_rss_ct_bytes / MB:.0f} MB peak "
                    f"({res.processes} proc); client CPU {res.client_cpu_seconds:.1f} s",
                    flush=True,
                )
                if clients == 4 and round_ == args.rounds - 1:
                    live[name] = server  # the last 4-client servers answer the reads
                else:
                    retire(server)  # fresh state for every ingest
    return ingests, live, infos


def build_probes(args: argparse.Namespace, plan: generate.Plan, ct_bytes: int) -> list[Probe]:
    qpid = plan.query_patient_id()
    n_qido = 10 if args.quick else 40
    return [
        Probe(
            "qido_patient_id",
            f"QIDO-RS PatientID={qpid}",
            n_qido,
            3,
            30,
            qido("/studies", {"PatientID": qpid}, plan.count_patient_id(qpid), gzip=args.gzip),
        ),
        Probe(
            "qido_page",
            "QIDO-RS studies limit=100",
            n_qido,
            3,
            30,
            qido("/studies", {"limit": "100"}, min(100, plan.n_studies), gzip=args.gzip),
        ),
        Probe(
            "qido_wildcard_name",
            "QIDO-RS PatientName=KIM*",
            n_qido,
            3,
            30,
            qido("/studies", {"PatientName": "KIM*"}, plan.count_name_prefix("KIM"), gzip=args.gzip),
        ),
        Probe(
            "study_metadata",
            f"CT study /metadata ({len(plan.ct_files)} inst)",
            5 if args.quick else 10,
            1,
            45,
            metadata(plan.ct_study_uid, len(plan.ct_files), gzip=args.gzip),
        ),
        Probe(
            "wado_study",
            "WADO-RS CT study retrieve",
            3 if args.quick else 5,
            1,
            45,
            wado_study(plan.ct_study_uid, ct_bytes),
        ),
    ]


def _pair(values: dict[str, float]) -> tuple[float | None, float | None]:
    return values.get(PIXPORT), values.get(ORTHANC)


def build_rows(ingests: Ingests, reads: Reads, probes: list[Probe]) -> list[Row]:
    rows: list[Row] = []

    def ingest_median(clients: int, fn: Callable[[IngestResult], float]) -> dict[str, float]:
        return {n: statistics.median(fn(x) for x in runs) for n, runs in ingests[clients].items()}

    for clients, target, aim in ((1, ">=1.2x", "1.5x"), (4, ">=1.0x", "1.5x")):
        label = f"STOW-RS {clients} client{'s' if clients > 1 else ''}"
        inst_rate = ingest_median(clients, lambda x: x.instances_per_s)
        rows.append(Row(f"{label}, all", "inst/s", *_pair(inst_rate), target, aim))
        rows.append(Row(f"{label}, all", "MB/s", *_pair(ingest_median(clients, lambda x: x.mb_per_s)), target, aim))
        ct_rate = ingest_median(clients, lambda x: x.ct_bytes / MB / x.ct_seconds if x.ct_seconds else 0.0)
        rows.append(Row(f"  {label}, CT part", "MB/s", *_pair(ct_rate), ""))
        small_rate = ingest_median(clients, lambda x: x.small_instances / x.small_seconds if x.small_seconds else 0.0)
        rows.append(Row(f"  {label}, small part", "inst/s", *_pair(small_rate), ""))
    for key, target in (
        ("qido_patient_id", "<=0.5x"),
        ("qido_page", "<=0.5x"),
        ("qido_wildcard_name", "<=0.5x"),
        ("study_metadata", "<=0.25x"),
    ):
        label = next(p.label for p in probes if p.key == key)
        rows.append(Row(label, "ms", *_pair({n: x["median"] * 1000 for n, x in reads[key].items()}), target))
    wado = {n: x["median"] for n, x in reads["wado_study"].items()}
    rows.append(Row("WADO-RS CT study retrieve", "MB/s", *_pair(wado), ">=0.8x", "1.0x"))
    every = {n: [x for c in (1, 4) for x in ingests[c][n]] for n in ingests[1]}
    peak = {n: max(x.peak_rss_ct_bytes for x in runs) / MB for n, runs in every.items()}
    rows.append(Row("peak RSS while ingesting CT", "MB", *_pair(peak), f"<{RSS_LIMIT_MB:.0f} MB"))
    pss = {n: max(x.peak_pss_ct_bytes for x in runs) / MB for n, runs in every.items()}
    rows.append(Row("  peak PSS while ingesting CT", "MB", *_pair(pss), ""))
    idle = {n: min(x.start_rss_bytes for x in runs) / MB for n, runs in every.items()}
    rows.append(Row("  RSS of the idle server", "MB", *_pair(idle), ""))
    for probe in probes:
        for n, res in reads[probe.key].items():
            if res["check"]:
                row = next(x for x in rows if x.metric == probe.label)
                row.note = f"CHECK {n}: {res['check']}" if not row.note else f"{row.note}; {n}: {res['check']}"
    for row in rows:
        row.judge()
    return rows


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    plan = generate.ensure_data(generate.build_plan(args.ct, args.small, args.data))
    names: list[str] = args.server_names
    ct = build_requests(plan.ct_files, args.per_request, "ct")
    small = build_requests(plan.small_files, args.per_request, "small")
    ct_bytes = sum(r.payload_bytes for r in ct)
    small_bytes = sum(r.payload_bytes for r in small)
    print(
        f"data: {len(plan.ct_files)} CT slices ({ct_bytes / MB:.0f} MB) + {len(plan.small_files)} small studies "
        f"({small_bytes / MB:.1f} MB), {args.per_request} instances per STOW-RS request; servers: {', '.join(names)}; "
        f"load average {load_at_start[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    ingests, live, infos = ingest_all(args, tmp, ct, small)
    servers = [live[n] for n in names]
    probes = build_probes(args, plan, ct_bytes)
    reads: Reads = {}
    for probe in probes:
        print(f"  {probe.label} ...", end="", flush=True)
        reads[probe.key] = measure(probe, servers)
        scale = 1 if probe.key == "wado_study" else 1000
        print(" " + ", ".join(f"{n} {_fmt(r['median'] * scale)}" for n, r in reads[probe.key].items()), flush=True)
    stop_all()
    rows = build_rows(ingests, reads, probes)
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "python": platform.python_version(),
        },
        "git": _git_describe(),
        "data": {
            "version": generate.DATASET_VERSION,
            "ct_instances": len(plan.ct_files),
            "ct_bytes": ct_bytes,
            "small_instances": len(plan.small_files),
            "small_bytes": small_bytes,
            "instances_per_request": args.per_request,
            "ct_study_uid": plan.ct_study_uid,
            "query_patient_id": plan.query_patient_id(),
        },
        "settings": {"rounds": args.rounds, "pixport_workers": args.workers, "gzip": args.gzip},
        "servers": infos,
        "ingest": {
            str(c): {
                n: [{**vars(res), "instances_per_s": res.instances_per_s, "mb_per_s": res.mb_per_s} for res in runs]
                for n, runs in v.items()
            }
            for c, v in ingests.items()
        },
        "reads": reads,
        "rows": [vars(r) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(ORTHANC_BIN).exists() and ORTHANC in args.server_names:
        print(f"{ORTHANC_BIN} not found (apt-get install orthanc orthanc-dicomweb)", file=sys.stderr)
        return 2
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pixport-bench-", dir=args.tmp))
    started = time.monotonic()
    try:
        with cleanup(tmp):
            result = run(args, tmp)
    except BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    result["duration_s"] = round(time.monotonic() - started, 1)
    rows = [Row(**r) for r in result["rows"]]
    print()
    print_table(rows)
    out = (
        args.out
        or RESULTS_DIR / f"archive-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    judged = [r for r in rows if r.verdict in {"pass", "FAIL", "CHECK"}]
    failed = [r for r in judged if r.verdict != "pass"]
    print(f"\n{len(judged) - len(failed)}/{len(judged)} targets met; {result['duration_s']} s; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
