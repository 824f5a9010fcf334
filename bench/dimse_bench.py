"""PixPort's DICOM listener against Orthanc's, on the same data, in the same run, with DCMTK clients.

Starts Orthanc (Debian ``orthanc``, DICOM server on) and ``pixport dimse serve``, each in its own
temporary folder on free loopback ports, plus a DCMTK ``storescp`` as the C-MOVE destination.
Stores the generated data set (see ``generate.py``) with ``storescu`` on 1 and on 4 parallel
associations, then times ``getscu`` and ``movescu`` of the CT study and ``findscu`` by PatientID,
and prints PixPort/Orthanc ratios against the targets of issue 3.  See bench/README.md.

    .venv/bin/python bench/dimse_bench.py [--quick] [--servers pixport,orthanc]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archive_bench as ab
import disk_ceiling
import generate

PIXPORT, ORTHANC, MB = ab.PIXPORT, ab.ORTHANC, ab.MB
HOST = "127.0.0.1"
BENCH_AET = "BENCH"  # the DCMTK tools' calling AE title
MOVE_AET = "STORESCP"  # the DCMTK storescp that receives C-MOVE sub-operations
ORTHANC_AET = "ORTHANC"
PIXPORT_AET = "PIXPORT"
DCMTK_TOOLS = ("echoscu", "storescu", "getscu", "movescu", "findscu", "storescp")
# Timeouts for every DCMTK tool: connection, ACSE, DIMSE (s). A stalled server fails the run, never hangs it.
DCMTK_TIMEOUTS = ["-to", "30", "-ta", "30", "-td", "120"]
STEPS = ("store1", "store4", "get", "move", "find")
STORE_TIMEOUT_S = 900.0  # one storescu phase (all its processes)
RETRIEVE_TIMEOUT_S = 300.0

STORE_OK = re.compile(r"Received Store Response \(Success\)")
STORE_RECEIVED = re.compile(r"Received Store Request")
GET_COUNTS = re.compile(r"Number of (Remaining|Completed|Failed|Warning) Suboperations\s*:\s*(\d+)")
FIND_PENDING = re.compile(r"Find Response: \d+ \(Pending\)")


class BenchError(ab.BenchError):
    pass


# --------------------------------------------------------------------------------------------
# DCMTK clients
# --------------------------------------------------------------------------------------------


def dcmtk_env() -> dict[str, str]:
    """The DCMTK tools' environment: TCP_NODELAY on, as for Orthanc (and PixPort sets it itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXPORT_", "ORTHANC"))}
    env["TCP_NODELAY"] = "1"
    return env


_CLIENTS: list[subprocess.Popen[bytes]] = []


def kill_clients() -> None:
    while _CLIENTS:
        proc = _CLIENTS.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


@dataclass
class ClientRun:
    seconds: float
    outputs: list[str]  # each process's stdout+stderr
    codes: list[int]


def run_clients(cmds: list[list[str]], logdir: Path, timeout: float) -> ClientRun:
    """Start every command at once; wall-clock seconds until the last one exits."""
    logdir.mkdir(parents=True, exist_ok=True)
    logs = [logdir / f"client{i}.log" for i in range(len(cmds))]
    procs: list[subprocess.Popen[bytes]] = []
    env = dcmtk_env()
    started = time.perf_counter()
    try:
        for cmd, log_path in zip(cmds, logs, strict=True):
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=ab._die_with_parent,  # noqa: PLW1509, SLF001 (main thread, no client threads)
                )
            procs.append(proc)
            _CLIENTS.append(proc)
        # Blocking waits, the timeout enforced by a timer that kills: Popen.wait(timeout=...)
        # polls with sleeps doubling from 1 to 50 ms, so a 35 ms findscu was seen to end at
        # 63 ms, and one of 30 ms at 31 ms (the two groups about 30 ms apart that single
        # C-FIND timings fell into, for both servers).
        expired = threading.Event()

        def kill_all() -> None:
            expired.set()
            for proc in procs:
                with contextlib.suppress(OSError):
                    proc.kill()

        timer = threading.Timer(timeout, kill_all)
        timer.start()
        try:
            for proc in procs:
                proc.wait()
            elapsed = time.perf_counter() - started
        finally:
            timer.cancel()
            timer.join()  # no other thread alive at the next fork (preexec_fn)
        if expired.is_set():
            raise BenchError(f"{Path(cmds[0][0]).name} did not finish within {timeout:.0f} s")
    finally:
        for proc in procs:
            if proc in _CLIENTS:
                _CLIENTS.remove(proc)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [p.read_bytes().decode("utf-8", "surrogateescape") for p in logs]
    shutil.rmtree(logdir, ignore_errors=True)
    return ClientRun(elapsed, outputs, [p.returncode for p in procs])


def echo_ok(aet: str, port: int) -> bool:
    cmd = ["echoscu", "-aet", BENCH_AET, "-aec", aet, "-to", "2", "-ta", "2", "-td", "5", HOST, str(port)]
    try:
        return subprocess.run(cmd, env=dcmtk_env(), capture_output=True, timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """A DICOM server under test (or the move destination): its process and where it listens."""

    server: ab.Server
    aet: str
    port: int

    @property
    def name(self) -> str:
        return self.server.name

    def wait_echo(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.server.proc.returncode}:\n{self.server.log_tail()}")
            if echo_ok(self.aet, self.port):
                return
            time.sleep(0.2)
        raise BenchError(f"{self.name} does not answer C-ECHO after {timeout:.0f} s:\n{self.server.log_tail()}")


def start_move_destination(tmp: Path) -> Node:
    """DCMTK storescp: receives the C-MOVE sub-operations and discards them (``--ignore``)."""
    workdir = Path(tempfile.mkdtemp(prefix="storescp-", dir=tmp))
    port = ab.free_port()
    log_path = workdir / "storescp.log"
    cmd = ["storescp", "-v", "--ignore", "-aet", MOVE_AET, *DCMTK_TIMEOUTS[2:], str(port)]  # no -to for an SCP
    proc = ab._spawn(cmd, dcmtk_env(), workdir, log_path)  # noqa: SLF001
    server = ab.Server("storescp", proc, "", "", workdir, log_path, "")
    ab._LIVE.append(server)  # noqa: SLF001 (stopped with the servers, on error and Ctrl-C too)
    node = Node(server, MOVE_AET, port)
    node.wait_echo(20)
    return node


def received_by(dest: Node) -> int:
    """C-STORE requests the move destination has received so far (from its verbose log)."""
    try:
        return len(STORE_RECEIVED.findall(dest.server.log_path.read_text(errors="replace")))
    except OSError:
        return 0


def orthanc_overrides(dicom_port: int, move_port: int, threads: int) -> dict[str, Any]:
    """Orthanc's DICOM server, tuned for speed, knowing the bench's AE titles (all services allowed)."""

    def modality(aet: str, port: int) -> dict[str, Any]:
        allow = {f"Allow{s}": True for s in ("Echo", "Find", "Get", "Move", "Store", "NAction", "NEventReport")}
        return {"AET": aet, "Host": HOST, "Port": port, **allow}

    return {
        "Name": "PixPortDimseBench",
        "Plugins": [],  # DIMSE only: no DICOMweb plugin
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomThreadsCount": threads,
        "DicomCheckCalledAet": False,
        # Orthanc 1.10 listens for DICOM on every interface: only the known AE titles, from 127.0.0.1, get service.
        "DicomCheckModalityHost": True,
        **{f"DicomAlwaysAllow{s}": False for s in ("Echo", "Store", "Find", "FindWorklist", "Get", "Move")},
        "DicomModalitiesInDatabase": False,
        "DicomModalities": {
            "bench": modality(BENCH_AET, 104),  # the DCMTK SCUs (never called back: C-GET stays on the association)
            "storescp": modality(MOVE_AET, move_port),  # C-MOVE destination
            "pixport": modality(PIXPORT_AET, 104),
        },
        "DicomScpTimeout": 120,
        "DicomScuTimeout": 120,
        "SynchronousCMove": True,  # the default: C-MOVE answers when the sub-operations are done
        "DicomAssociationCloseDelay": 0,
        "DicomScuPreferredTransferSyntax": "1.2.840.10008.1.2.1",
        "DeidentifyLogs": False,
    }


def start_orthanc(tmp: Path, label: str, args: argparse.Namespace, move: Node) -> Node:
    dicom_port = ab.free_port()
    server = ab.start_orthanc(tmp, label, orthanc_overrides(dicom_port, move.port, args.orthanc_threads))
    node = Node(server, ORTHANC_AET, dicom_port)
    node.wait_echo()
    return node


def pixport_env(
    workdir: Path, port: int, workers: int, move: Node, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    remotes = [
        {"ae_title": MOVE_AET, "host": HOST, "port": move.port},
        {"ae_title": BENCH_AET, "host": HOST, "port": 104},  # a known caller; never called back
    ]
    env.update(
        {
            "PIXPORT_STORAGE__DATA_DIR": str(workdir / "data"),
            "PIXPORT_DIMSE__HOST": HOST,
            "PIXPORT_DIMSE__PORT": str(port),
            "PIXPORT_DIMSE__AE_TITLE": PIXPORT_AET,
            "PIXPORT_DIMSE__WORKERS": str(workers),
            "PIXPORT_DIMSE__REMOTES": json.dumps(remotes),
            "PIXPORT_DIMSE__ALLOW_ANY_CALLER": "true",
            "PIXPORT_HTTP__HOST": HOST,
            "PIXPORT_HTTP__PORT": str(ab.free_port()),  # never collide with a node already on 8042
        }
    )
    env.update(extra or {})  # last: may override the settings above (dimse_ab.py --new-env)
    return env


def listener_command(explicit: str | None) -> list[str]:
    """``pixport dimse serve`` when the CLI has it, else ``python -m pixport.dimse.listener``."""
    if explicit:
        return explicit.split()
    cli = [*ab.pixport_command(None), "dimse", "serve"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if subprocess.run([*cli, "--help"], capture_output=True, timeout=60, check=False).returncode == 0:
            return cli
    venv_python = ab.REPO / ".venv" / "bin" / "python"
    return [str(venv_python if venv_python.exists() else Path(sys.executable)), "-m", "pixport.dimse.listener"]


def start_pixport(
    tmp: Path, label: str, args: argparse.Namespace, move: Node, extra_env: dict[str, str] | None = None
) -> Node:
    """``extra_env``: more environment for the listener (``dimse_ab.py`` puts another build on PYTHONPATH)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pixport-dimse-{label}-", dir=tmp))
    port = ab.free_port()
    cmd = args.listener_cmd
    log_path = workdir / "pixport.log"
    env = pixport_env(workdir, port, args.workers, move, extra_env)
    proc = ab._spawn(cmd, env, workdir, log_path)  # noqa: SLF001
    server = ab.Server(PIXPORT, proc, "", "", workdir, log_path, "")
    ab._LIVE.append(server)  # noqa: SLF001
    server.info["command"] = cmd
    server.info["workers"] = args.workers or os.cpu_count() or 1
    server.info["ae_title"] = PIXPORT_AET
    with contextlib.suppress(Exception):
        server.info["version"] = importlib.metadata.version("pixport")
    node = Node(server, PIXPORT_AET, port)
    node.wait_echo()
    return node


def start(name: str, tmp: Path, label: str, args: argparse.Namespace, move: Node) -> Node:
    if name == ORTHANC:
        return start_orthanc(tmp, label, args, move)
    return start_pixport(tmp, label, args, move)


# --------------------------------------------------------------------------------------------
# C-STORE
# --------------------------------------------------------------------------------------------


def quarters(files: list[Path], parts: int) -> list[list[Path]]:
    """``parts`` disjoint, contiguous, nearly equal slices of ``files`` (none empty)."""
    parts = max(1, min(parts, len(files)))
    bounds = [len(files) * i // parts for i in range(parts + 1)]
    return [files[bounds[i] : bounds[i + 1]] for i in range(parts)]


def store_phase(node: Node, files: list[Path], assocs: int, tmp: Path, extra: list[str]) -> float:
    """storescu over ``assocs`` parallel associations (one process each); seconds, every store checked."""
    chunks = quarters(files, assocs)
    cmds = [
        [
            "storescu",
            "-v",
            "-aet",
            BENCH_AET,
            "-aec",
            node.aet,
            *DCMTK_TIMEOUTS,
            *extra,
            HOST,
            str(node.port),
            *map(str, chunk),
        ]
        for chunk in chunks
    ]
    run = run_clients(cmds, tmp / f"storescu-{node.name}", STORE_TIMEOUT_S)
    for chunk, out, code in zip(chunks, run.outputs, run.codes, strict=True):
        stored = len(STORE_OK.findall(out))
        if code != 0 or stored != len(chunk):
            tail = "\n".join(out.splitlines()[-15:])
            raise BenchError(
                f"storescu -> {node.name}: exit {code}, {stored}/{len(chunk)} stored with Success\n{tail}\n"
                f"--- {node.name} log:\n{node.server.log_tail()}"
            )
    return run.seconds


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(server: ab.Server) -> dict[int, float]:
    """CPU seconds (user + system) so far of each process in the server's tree, from /proc."""
    out = {}
    for pid in server.tree_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # fields[11], [12]: utime, stime (man 5 proc)
        out[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> list[float]:
    """CPU seconds each process spent between two ``tree_cpu`` readings, busiest first."""
    return sorted((round(t - before.get(pid, 0.0), 2) for pid, t in after.items()), reverse=True)


STUDY_INSTANCES = re.compile(r"\(0020,1208\) IS \[\s*(\d+)\s*\]")


def stored_check(node: Node, studies: int, instances: int, tmp: Path) -> str | None:
    """Ask the server what it holds (C-FIND of every study); None when it holds exactly what was sent."""
    cmd = ["findscu", "-aet", BENCH_AET, "-aec", node.aet, *DCMTK_TIMEOUTS, "-S", "-k", "QueryRetrieveLevel=STUDY"]
    cmd += ["-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", HOST, str(node.port)]
    out = run_clients([cmd], tmp / f"findscu-all-{node.name}", 120).outputs[0]
    got = len(FIND_PENDING.findall(out))
    counts = [int(x) for x in STUDY_INSTANCES.findall(out)]
    if got != studies:
        return f"C-FIND finds {got} studies, expected {studies}"
    if len(counts) == got and sum(counts) != instances:
        return f"NumberOfStudyRelatedInstances adds up to {sum(counts)}, expected {instances}"
    return None


@dataclass
class StoreResult:
    assocs: int
    ct_seconds: float
    small_seconds: float
    ct_instances: int
    small_instances: int
    ct_bytes: int
    small_bytes: int
    check: str | None = None  # what the server holds afterwards, when it is not what was sent
    ct_cpu_by_process: list[float] = field(default_factory=list)  # server CPU seconds, busiest process first
    small_cpu_by_process: list[float] = field(default_factory=list)

    @property
    def ct_cpu_ms_per_instance(self) -> float:
        return sum(self.ct_cpu_by_process) * 1000 / self.ct_instances if self.ct_instances else 0.0

    @property
    def small_cpu_ms_per_instance(self) -> float:
        return sum(self.small_cpu_by_process) * 1000 / self.small_instances if self.small_instances else 0.0

    @property
    def ct_mb_per_s(self) -> float:
        return self.ct_bytes / MB / self.ct_seconds if self.ct_seconds else 0.0

    @property
    def ct_instances_per_s(self) -> float:
        return self.ct_instances / self.ct_seconds if self.ct_seconds else 0.0

    @property
    def small_instances_per_s(self) -> float:
        return self.small_instances / self.small_seconds if self.small_seconds else 0.0


# --------------------------------------------------------------------------------------------
# C-GET, C-MOVE, C-FIND
# --------------------------------------------------------------------------------------------


def study_keys(study_uid: str) -> list[str]:
    return ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]


def cget(node: Node, study_uid: str, expected: int, tmp: Path) -> tuple[float, str | None]:
    """getscu of the study, received and discarded (``--ignore``): seconds, and a check note."""
    cmd = ["getscu", "-v", "-aet", BENCH_AET, "-aec", node.aet, *DCMTK_TIMEOUTS, *study_keys(study_uid)]
    run = run_clients([[*cmd, "--ignore", HOST, str(node.port)]], tmp / f"getscu-{node.name}", RETRIEVE_TIMEOUT_S)
    out = run.outputs[0]
    counts = {k: int(v) for k, v in GET_COUNTS.findall(out)}
    received = out.count("Received C-STORE Request")
    note = None
    if run.codes[0] != 0 or "Received C-GET Response (Success)" not in out:
        note = f"getscu exit {run.codes[0]}: " + " | ".join(out.splitlines()[-4:])
    elif counts.get("Completed") != expected or counts.get("Failed") or received != expected:
        note = f"completed {counts.get('Completed')}, failed {counts.get('Failed')}, received {received}/{expected}"
    return run.seconds, note


def cmove(node: Node, study_uid: str, expected: int, dest: Node, tmp: Path) -> tuple[float, str | None]:
    """movescu of the study to the DCMTK storescp: seconds until the final response, and a check note."""
    before = received_by(dest)
    cmd = ["movescu", "-v", "-aet", BENCH_AET, "-aec", node.aet, "-aem", dest.aet, *DCMTK_TIMEOUTS]
    run = run_clients(
        [[*cmd, *study_keys(study_uid), HOST, str(node.port)]], tmp / f"movescu-{node.name}", RETRIEVE_TIMEOUT_S
    )
    out = run.outputs[0]
    received = received_by(dest) - before
    note = None
    if run.codes[0] != 0 or "Received Final Move Response (Success)" not in out:
        note = f"movescu exit {run.codes[0]}: " + " | ".join(out.splitlines()[-4:])
    elif received != expected:
        note = f"the destination received {received}/{expected}"
    return run.seconds, note


def find_command(node: Node, patient_id: str, repeat: int = 1) -> list[str]:
    keys = ["StudyInstanceUID", "PatientName", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]
    cmd = ["findscu", "-aet", BENCH_AET, "-aec", node.aet, *DCMTK_TIMEOUTS, "-S"]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}"]
    for key in keys:
        cmd += ["-k", key]
    if repeat > 1:
        cmd += ["--repeat", str(repeat)]
    return [*cmd, HOST, str(node.port)]


def names_whole(out: str, name: str, expected: int) -> bool:
    """Every answer holds the patient's whole name (all component groups), in UTF-8 or Latin-1.

    findscu prints values as received; the server picks the Specific Character Set of its answer.
    """
    raw = out.encode("utf-8", "surrogateescape")
    encodings = {name.encode(c) for c in ("utf-8", "latin-1") if _encodable(name, c)}
    found = sum(raw.count(b"[" + e + pad + b"]") for e in encodings for pad in (b"", b" "))
    return found == expected


def _encodable(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def cfind(node: Node, patient_id: str, expected: int, name: str, tmp: Path) -> tuple[float, str | None]:
    """findscu by PatientID, one association, one query: seconds (process start to exit), and a check."""
    run = run_clients([find_command(node, patient_id)], tmp / f"findscu-{node.name}", 60)
    out = run.outputs[0]
    got = len(FIND_PENDING.findall(out))
    note = None
    if run.codes[0] != 0:
        note = f"findscu exit {run.codes[0]}: " + " | ".join(out.splitlines()[-4:])
    elif got != expected:
        note = f"{got} studies, expected {expected}"
    elif not names_whole(out, name, expected):
        note = f"PatientName not returned whole ({name})"
    return run.seconds, note


def cfind_open(node: Node, patient_id: str, repeat: int, tmp: Path) -> tuple[float, str | None]:
    """One C-FIND on an open association: findscu --repeat R, minus a single query, over R - 1.

    R is large (101) so that the jitter of process start and association set-up (a few ms) is
    spread over many queries.
    """
    one = run_clients([find_command(node, patient_id)], tmp / f"findscu1-{node.name}", 60)
    many = run_clients([find_command(node, patient_id, repeat)], tmp / f"findscuR-{node.name}", 120)
    if one.codes[0] or many.codes[0]:
        return 0.0, f"findscu exit {one.codes[0]}/{many.codes[0]}"
    return max(many.seconds - one.seconds, 0.0) / (repeat - 1), None


@dataclass
class Probe:
    key: str
    label: str
    n: int
    warmup: int
    budget_s: float
    run: Callable[[Node], tuple[float, str | None]]
    per_second: float = 0.0  # report ``per_second / seconds`` (a speed) instead of milliseconds


def measure(probe: Probe, nodes: list[Node]) -> dict[str, dict[str, Any]]:
    """Warm up, then alternate servers sample by sample, so that drift hits both alike."""
    notes: dict[str, str | None] = {}
    samples: dict[str, list[float]] = {n.name: [] for n in nodes}
    for node in nodes:
        for i in range(max(probe.warmup, 1)):
            _, note = probe.run(node)
            if i == 0:
                notes[node.name] = note
    deadline = time.monotonic() + probe.budget_s
    for i in range(probe.n):
        for node in nodes:
            seconds, note = probe.run(node)
            samples[node.name].append(seconds)
            notes[node.name] = notes[node.name] or note
        if i >= 2 and time.monotonic() > deadline:
            break
    out = {}
    for name, secs in samples.items():
        med = statistics.median(secs)
        value = probe.per_second / med if probe.per_second else med * 1000
        out[name] = {"value": value, "median_seconds": med, "seconds": secs, "check": notes[name]}
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Row(ab.Row):
    own: bool = False  # the target applies to PixPort's own value (a 4-vs-1 speed-up), not to the ratio

    def judge(self) -> None:
        if not self.own:
            super().judge()
            if self.verdict in {"pass", "FAIL"} and self.ratio is not None:
                # Judge the ratio as printed (two decimals): 1.003x against <=1.0x is a tie, not a failure.
                bound = float(self.target.strip("<>=x"))
                shown = round(self.ratio, 2)
                self.verdict = (
                    "pass" if (shown >= bound if self.target.startswith(">=") else shown <= bound) else "FAIL"
                )
            return
        if self.pixport is None:
            self.verdict = "n/a"
            return
        bound = float(self.target.split(">=")[1].rstrip("x"))
        self.verdict = "pass" if self.pixport >= bound else "FAIL"


def paired_note(ours: list[float], theirs: list[float]) -> str:
    """The mean difference of alternating samples, with its standard error (ms): medians of
    single ``findscu`` runs move with the machine more than the servers differ."""
    diffs = [(a - b) * 1000 for a, b in zip(ours, theirs, strict=False)]
    if len(diffs) < 2:
        return ""
    error = statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"pairs: PixPort - Orthanc {statistics.mean(diffs):+.1f} ± {error:.1f} ms (mean ± s.e., n={len(diffs)})"


def _median_by_server(
    runs_by_server: dict[str, list[StoreResult]], fn: Callable[[StoreResult], float]
) -> dict[str, float]:
    return {n: statistics.median(fn(x) for x in runs) for n, runs in runs_by_server.items()}


def _pair(values: dict[str, float]) -> tuple[float | None, float | None]:
    return values.get(PIXPORT), values.get(ORTHANC)


def speedup_rows(stores: dict[int, dict[str, list[StoreResult]]], ceilings: list[disk_ceiling.Ceiling]) -> list[Row]:
    """4 vs 1 association, CT and small studies, then the disk's own 4 vs 1 for the CT's writes."""
    rows: list[Row] = []
    rates: tuple[tuple[str, Callable[[StoreResult], float]], ...] = (
        ("CT", lambda x: x.ct_mb_per_s),
        ("small", lambda x: x.small_instances_per_s),
    )
    if 1 not in stores or 4 not in stores:
        return rows
    for part, fn in rates:
        one, four = _median_by_server(stores[1], fn), _median_by_server(stores[4], fn)
        speedup = {n: four[n] / one[n] for n in one if one[n]}
        row = Row(f"C-STORE {part}, 4 vs 1 association", "x", *_pair(speedup), "PixPort >=1.5x", own=True)
        # Each round's own ratio beside the ratio of the medians: a round on a slow stretch of
        # the machine shows as one low value, not as a shift of the whole.
        ones, fours = stores[1].get(PIXPORT, []), stores[4].get(PIXPORT, [])
        per_round = [fn(b) / fn(a) for a, b in zip(ones, fours, strict=False) if fn(a)]
        if len(per_round) > 1:
            row.note = "PixPort by round " + " ".join(f"{x:.2f}" for x in per_round)
        rows.append(row)
    if ceilings:
        # Not a server: what the disk alone gives four writers of the CT over one, in the PixPort
        # column.  PixPort's CT ratio well under it means the listener, near it the disk.
        disk = Row(
            "  disk alone, CT's durable writes, 4 vs 1", "x", statistics.median(c.ratio for c in ceilings), None, ""
        )
        if len(ceilings) > 1:
            disk.note = "by round " + " ".join(f"{c.ratio:.2f}" for c in ceilings)
        rows.append(disk)
    return rows


def build_rows(
    stores: dict[int, dict[str, list[StoreResult]]],
    reads: dict[str, dict[str, Any]],
    ceilings: list[disk_ceiling.Ceiling] | None = None,
) -> list[Row]:
    rows: list[Row] = []

    def med(assocs: int, fn: Callable[[StoreResult], float]) -> dict[str, float]:
        return _median_by_server(stores[assocs], fn)

    pair = _pair

    def per_assoc(n: int) -> str:
        return f"{n} association{'s' if n > 1 else ''}"

    for assocs in sorted(stores):
        checks = [f"{n}: {x.check}" for n, runs in stores[assocs].items() for x in runs if x.check]
        ct = Row(f"C-STORE CT, {per_assoc(assocs)}", "MB/s", *pair(med(assocs, lambda x: x.ct_mb_per_s)), ">=0.7x")
        small = med(assocs, lambda x: x.small_instances_per_s)
        small_row = Row(f"C-STORE small, {per_assoc(assocs)}", "inst/s", *pair(small), ">=0.7x")
        for row in (ct, small_row):
            row.note = "CHECK " + "; ".join(checks) if checks else ""
            rows.append(row)
    rows.extend(speedup_rows(stores, ceilings or []))
    for part, cpu in (("CT", lambda x: x.ct_cpu_ms_per_instance), ("small", lambda x: x.small_cpu_ms_per_instance)):
        assocs = min(stores)
        label = f"  C-STORE {part}, server CPU per instance{'' if assocs == 1 else ', 4 associations'}"
        rows.append(Row(label, "ms", *pair(med(assocs, cpu)), ""))
    for key, unit, target in (
        ("cget", "MB/s", ">=0.7x"),
        ("cmove", "MB/s", ">=0.7x"),
        ("cfind", "ms", "<=1.0x"),
        ("cfind_open", "ms", "<=1.0x"),
    ):
        if key not in reads:
            continue
        res = reads[key]
        row = Row(res["label"], unit, *pair({n: x["value"] for n, x in res["servers"].items()}), target)
        checks = [f"{n}: {x['check']}" for n, x in res["servers"].items() if x["check"]]
        if checks:
            row.note = "CHECK " + "; ".join(checks)
        elif key == "cfind" and PIXPORT in res["servers"] and ORTHANC in res["servers"]:
            row.note = paired_note(res["servers"][PIXPORT]["seconds"], res["servers"][ORTHANC]["seconds"])
        rows.append(row)
    for row in rows:
        row.judge()
    return rows


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 CT slices, 100 small studies, fewer samples"
    )
    parser.add_argument("--ct", type=int, help="CT slices (default 500, --quick 50)")
    parser.add_argument("--small", type=int, help="small studies (default 2000, --quick 100)")
    parser.add_argument("--servers", default="pixport,orthanc", help="which servers to run (default %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="PIXPORT_DIMSE__WORKERS, listener processes (default %(default)s, the settings' default: one per core)",
    )
    parser.add_argument(
        "--orthanc-threads", type=int, default=8, help="Orthanc's DicomThreadsCount (default %(default)s)"
    )
    parser.add_argument(
        "--pixport-cmd",
        help="command that runs PixPort's DICOM listener (default: 'pixport dimse serve' from the venv, "
        "else 'python -m pixport.dimse.listener')",
    )
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="what to measure (default %(default)s); retrieves and queries use the last C-STORE servers",
    )
    parser.add_argument("--rounds", type=int, help="C-STORE rounds, median reported (default 5, --quick 1)")
    parser.add_argument("--storescu-args", default="", help="extra storescu options, e.g. '-R' (default none)")
    parser.add_argument("--data", type=Path, default=generate.DEFAULT_OUT, help="data cache (default bench/.data)")
    parser.add_argument("--tmp", type=Path, help="where the servers' temporary folders go (default: system temp)")
    parser.add_argument("--out", type=Path, help="JSON results file (default bench/results/dimse-<time>.json)")
    args = parser.parse_args(argv)
    names = {"pixport": PIXPORT, "orthanc": ORTHANC}
    try:
        args.server_names = [names[s.strip().lower()] for s in args.servers.split(",") if s.strip()]
    except KeyError as exc:
        parser.error(f"unknown server {exc}")
    if not args.server_names:
        parser.error("--servers names no server")
    args.steps = [x.strip().lower() for x in args.steps.split(",") if x.strip()]
    if unknown := set(args.steps) - set(STEPS):
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    if not {"store1", "store4"} & set(args.steps):
        parser.error("--steps needs store1 or store4 (the retrieves and queries use the stored data)")
    if (args.ct is not None and args.ct < 1) or (args.small is not None and args.small < 1):
        parser.error("--ct and --small need at least 1")
    # Five rounds: the machine has slow stretches of tens of seconds (CPU per CT slice up 1.7x
    # for both servers in one round of three); the median of five leaves one such round out.
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.listener_cmd = listener_command(args.pixport_cmd) if PIXPORT in args.server_names else []
    if args.ct is None:
        args.ct = 50 if args.quick else generate.FULL_CT
    if args.small is None:
        args.small = 100 if args.quick else generate.FULL_SMALL
    return args


Stores = dict[int, dict[str, list[StoreResult]]]


def store_all(
    args: argparse.Namespace, tmp: Path, plan: generate.Plan, move: Node, sizes: tuple[int, int]
) -> tuple[Stores, dict[str, Node], dict[str, dict[str, Any]], list[disk_ceiling.Ceiling]]:
    """Every (round, associations, server) C-STORE run on a fresh server; the last 4-association ones stay up.

    Each round ends with ``disk_ceiling``: the same durable file writes as the CT's, without DICOM.
    """
    names: list[str] = args.server_names
    plans = [a for a in (1, 4) if f"store{a}" in args.steps]
    stores: Stores = {a: {n: [] for n in names} for a in plans}
    infos: dict[str, dict[str, Any]] = {}
    live: dict[str, Node] = {}
    extra = args.storescu_args.split()
    ceilings: list[disk_ceiling.Ceiling] = []
    for round_ in range(args.rounds):
        for k, assocs in enumerate(plans):
            order = names if (round_ + k) % 2 == 0 else names[::-1]  # alternate who goes first
            for name in order:
                node = start(name, tmp, f"r{round_}a{assocs}", args, move)
                infos[name] = node.server.info
                print(f"  C-STORE {assocs} assoc -> {name} ...", end="", flush=True)
                cpu0 = tree_cpu(node.server)
                ct_s = store_phase(node, plan.ct_files, assocs, tmp, extra)
                cpu1 = tree_cpu(node.server)
                small_s = store_phase(node, plan.small_files, assocs, tmp, extra)
                cpu2 = tree_cpu(node.server)
                res = StoreResult(assocs, ct_s, small_s, len(plan.ct_files), len(plan.small_files), *sizes)
                res.ct_cpu_by_process, res.small_cpu_by_process = cpu_spent(cpu0, cpu1), cpu_spent(cpu1, cpu2)
                res.check = stored_check(node, plan.n_studies, len(plan.ct_files) + len(plan.small_files), tmp)
                stores[assocs][name].append(res)
                busy = " ".join(f"{t:.1f}" for t in res.small_cpu_by_process if t >= 0.05)
                print(
                    f" CT {ct_s:.1f} s ({res.ct_mb_per_s:.1f} MB/s, {res.ct_instances_per_s:.0f} inst/s), "
                    f"small {small_s:.1f} s ({res.small_instances_per_s:.0f} inst/s); server CPU/inst "
                    f"{res.ct_cpu_ms_per_instance:.1f} / {res.small_cpu_ms_per_instance:.1f} ms, small by process "
                    f"[{busy}] s; {'CHECK ' + res.check if res.check else 'all stored'}",
                    flush=True,
                )
                if assocs == plans[-1] and round_ == args.rounds - 1:
                    live[name] = node  # the last C-STORE servers answer the retrieves and queries
                else:
                    # A fresh server for every C-STORE run; its files stay until the end of the
                    # benchmark.  On this machine's ext4 (no journal) every new inode skips the
                    # inodes deleted in the last 30 s one by one (find_inode_bit/recently_deleted
                    # were 13% of the listener's CPU after a round's 2,500 files were deleted):
                    # the next server would pay for the previous one's clean-up.
                    ab.retire(node.server, keep_files=True)
        if "store1" in args.steps and "store4" in args.steps and PIXPORT in names:
            # The disk's own 4-vs-1 for the same durable writes, beside this round's servers.
            ceiling = disk_ceiling.measure(plan.ct_files, tmp, 4, f"r{round_}")
            ceilings.append(ceiling)
            print(
                f"  disk alone, the CT's durable writes: 1 writer {ceiling.one:.0f}/s, 4 writers "
                f"{ceiling.many:.0f}/s ({ceiling.ratio:.2f}x)",
                flush=True,
            )
    return stores, live, infos, ceilings


def build_probes(args: argparse.Namespace, plan: generate.Plan, ct_bytes: int, move: Node, tmp: Path) -> list[Probe]:
    qpid = plan.query_patient_id()
    expected = plan.count_patient_id(qpid)
    patient = next(p for p in plan.all_patients() if p.patient_id == qpid)
    n_ct, uid = len(plan.ct_files), plan.ct_study_uid
    n_retrieve = 2 if args.quick else 5
    # A single findscu is mostly findscu's own start (43-90 ms apart in one run of 20 on this
    # machine): 60 alternating samples make a 2-3 ms difference between servers visible.
    n_find = 8 if args.quick else 60
    repeat = 41 if args.quick else 101  # enough queries that process-start jitter averages out
    return [
        Probe(
            "cget", f"C-GET CT study ({n_ct} inst)", n_retrieve, 1, 60, lambda n: cget(n, uid, n_ct, tmp), ct_bytes / MB
        ),
        Probe(
            "cmove",
            f"C-MOVE CT study ({n_ct} inst)",
            n_retrieve,
            1,
            60,
            lambda n: cmove(n, uid, n_ct, move, tmp),
            ct_bytes / MB,
        ),
        Probe(
            "cfind",
            f"C-FIND PatientID={qpid} (findscu)",
            n_find,
            2,
            60,
            lambda n: cfind(n, qpid, expected, patient.name, tmp),
        ),
        Probe(
            "cfind_open",
            "  C-FIND on an open association",
            3 if args.quick else 5,
            1,
            30,
            lambda n: cfind_open(n, qpid, repeat, tmp),
        ),
    ]


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    plan = generate.ensure_data(generate.build_plan(args.ct, args.small, args.data))
    names: list[str] = args.server_names
    ct_bytes = sum(p.stat().st_size for p in plan.ct_files)
    small_bytes = sum(p.stat().st_size for p in plan.small_files)
    print(
        f"data: {len(plan.ct_files)} CT slices ({ct_bytes / MB:.0f} MB) + {len(plan.small_files)} small studies "
        f"({small_bytes / MB:.1f} MB); servers: {', '.join(names)}; "
        f"load average {load_at_start[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    move = start_move_destination(tmp)
    stores, live, infos, ceilings = store_all(args, tmp, plan, move, (ct_bytes, small_bytes))
    nodes = [live[n] for n in names]
    reads: dict[str, dict[str, Any]] = {}
    for probe in build_probes(args, plan, ct_bytes, move, tmp):
        if probe.key.removeprefix("c").split("_")[0] not in args.steps:
            continue
        print(f"  {probe.label.strip()} ...", end="", flush=True)
        res = measure(probe, nodes)
        reads[probe.key] = {"label": probe.label, "servers": res}
        unit = "MB/s" if probe.per_second else "ms"
        print(" " + ", ".join(f"{n} {ab._fmt(r['value'])} {unit}" for n, r in res.items()), flush=True)  # noqa: SLF001
    ab.stop_all()
    rows = build_rows(stores, reads, ceilings)
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "dcmtk": _dcmtk_version(),
        },
        "git": ab._git_describe(),  # noqa: SLF001
        "data": {
            "version": generate.DATASET_VERSION,
            "ct_instances": len(plan.ct_files),
            "ct_bytes": ct_bytes,
            "small_instances": len(plan.small_files),
            "small_bytes": small_bytes,
            "ct_study_uid": plan.ct_study_uid,
            "query_patient_id": plan.query_patient_id(),
        },
        "settings": {
            "rounds": args.rounds,
            "steps": args.steps,
            "pixport_workers": args.workers,
            "orthanc_threads": args.orthanc_threads,
            "storescu_args": args.storescu_args,
            "dcmtk_env": {"TCP_NODELAY": "1"},
            "dcmtk_timeouts": DCMTK_TIMEOUTS,
        },
        "servers": infos,
        "store": {
            str(a): {
                n: [
                    {
                        **vars(r),
                        "ct_mb_per_s": r.ct_mb_per_s,
                        "ct_instances_per_s": r.ct_instances_per_s,
                        "small_instances_per_s": r.small_instances_per_s,
                        "ct_cpu_ms_per_instance": r.ct_cpu_ms_per_instance,
                        "small_cpu_ms_per_instance": r.small_cpu_ms_per_instance,
                    }
                    for r in runs
                ]
                for n, runs in v.items()
            }
            for a, v in stores.items()
        },
        "reads": reads,
        "disk_ceiling": [vars(c) | {"ratio": c.ratio} for c in ceilings],
        "rows": [vars(r) for r in rows],
    }


def _dcmtk_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["storescu", "--version"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.splitlines()[0].strip("$ ")
    return ""


@contextlib.contextmanager
def cleanup(tmp: Path) -> Iterator[None]:
    """archive_bench's clean-up (servers, temp folder, signals), after any DCMTK client still running."""
    with ab.cleanup(tmp):
        try:
            yield
        finally:
            kill_clients()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in DCMTK_TOOLS if not shutil.which(t)]
    if missing:
        print(f"{', '.join(missing)} not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    if not Path(ab.ORTHANC_BIN).exists() and ORTHANC in args.server_names:
        print(f"{ab.ORTHANC_BIN} not found (apt-get install orthanc)", file=sys.stderr)
        return 2
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pixport-dimse-bench-", dir=args.tmp))
    started = time.monotonic()
    try:
        with cleanup(tmp):
            result = run(args, tmp)
    except ab.BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    result["duration_s"] = round(time.monotonic() - started, 1)
    rows = [Row(**r) for r in result["rows"]]
    print()
    ab.print_table(rows)
    out = (
        args.out
        or ab.RESULTS_DIR / f"dimse-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    judged = [r for r in rows if r.verdict in {"pass", "FAIL", "CHECK"}]
    failed = [r for r in judged if r.verdict != "pass"]
    print(f"\n{len(judged) - len(failed)}/{len(judged)} targets met; {result['duration_s']} s; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
