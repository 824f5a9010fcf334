"""Retrieving the CT study through the hub against the gateway directly, and against Orthanc, in one run.

Sets up a hub and one gateway with the CLI, as an operator would (``pixport hub init``, keys, the
institution, ``archive import``, ``gateway patients link``, ``gateway publish``), starts Orthanc
(Debian ``orthanc`` + ``orthanc-dicomweb``) with the same CT stored into it, then times WADO-RS
retrieval of the whole study from the gateway, through the hub (as the operator) relayed from the
gateway as a first read is (``Cache-Control: no-cache, no-store``: no copy kept), relayed keeping a
copy (``no-cache``), served from the hub's relay cache, and from Orthanc, and
reads the hub's peak memory from ``/proc``.  See bench/README.md.

    .venv/bin/python bench/hub_bench.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archive_bench as ab
import generate
from pixport.trust.assertions import authorization_header
from pixport.trust.keys import SigningKey

MB = ab.MB
HOST = "127.0.0.1"
HUB_AUDIENCE = "pixport-hub"
INSTITUTION = "BENCH"
RRN = "800101-1000001"  # synthetic: a valid birth date and century digit, nobody's number
OPERATOR = "operator"
PIXPORT_CLI = [sys.executable, "-c", "from pixport.cli.main import main; main()"]
DIRECT, ORTHANC = "gateway direct", ab.ORTHANC
HUB_GATEWAY = "through hub, relayed"  # a first read: from the gateway, no copy kept (no-cache, no-store)
HUB_KEEPING = "through hub, relayed and kept"  # from the gateway, a copy kept as it passes (no-cache)
HUB_CACHE = "through hub, from its relay cache"
TARGETS = (DIRECT, HUB_GATEWAY, HUB_KEEPING, HUB_CACHE, ORTHANC)
SOURCES = {HUB_GATEWAY: "gateway", HUB_KEEPING: "gateway", HUB_CACHE: "cache"}  # the hub's PixPort-Source header
SETTLE_TIMEOUT_S = 300.0
HUB_RATIO_TARGET = ">=0.5x"
RSS_LIMIT_MB = 300.0
RETRIEVE_TIMEOUT_S = 600.0


class BenchError(ab.BenchError):
    pass


# --------------------------------------------------------------------------------------------
# Set-up: hub, gateway, Orthanc
# --------------------------------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}


def cli(*args: str | Path, env: dict[str, str], stdin: str | None = None, what: str = "") -> str:
    """Run ``pixport <args>``; its stdout, or BenchError with its output."""
    done = subprocess.run(
        [*PIXPORT_CLI, *map(str, args)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        shown = what or " ".join(map(str, args[:3]))
        raise BenchError(f"pixport {shown} exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def _spawn_server(name: str, cmd: list[str], env: dict[str, str], workdir: Path, base: str) -> ab.Server:
    log_path = workdir / f"{name.replace(' ', '-')}.log"
    proc = ab._spawn(cmd, env, workdir, log_path)  # noqa: SLF001
    server = ab.Server(name, proc, base, base + "/dicomweb", workdir, log_path, "/healthz")
    ab._LIVE.append(server)  # noqa: SLF001 (stopped with the others, on error and Ctrl-C too)
    return server


def wait_answering(server: ab.Server, path: str, timeout: float = 60.0) -> None:
    """Ready when ``path`` gives any HTTP answer (the hub's API answers 401 without an assertion)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise BenchError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                client.get(server.base_url + path)
                return
            time.sleep(0.1)
    raise BenchError(f"{server.name} not answering after {timeout:.0f} s:\n{server.log_tail()}")


@dataclass
class Network:
    hub: ab.Server
    gateway: ab.Server
    operator: SigningKey
    setup_seconds: dict[str, float]
    relay_cache: Path

    def cache_entries(self) -> set[tuple[str, int]]:
        """(name, inode) of every relay cache entry: a refreshed entry is a new file under the same name."""
        return {(p.name, p.stat().st_ino) for p in self.relay_cache.glob("*.study")}

    def wait_cache_settled(self, before: set[tuple[str, int]] | None = None) -> None:
        """Wait until the relay cache has no fill in progress (written, verified and renamed, or dropped).

        After a read that keeps a copy, the hub fetches the study once more from the gateway and
        verifies it, on its own: not part of the reader's time, but CPU and disk the next read
        would share.  Waited for outside the clock (until the entry differs from ``before``,
        then no temporary file is left), so each read is timed on a quiet hub.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while before is not None and self.cache_entries() == before:
            if time.monotonic() > deadline:
                raise BenchError(f"the hub's relay cache was not refreshed in {SETTLE_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        while any(self.relay_cache.glob("tmp-*")):
            if time.monotonic() > deadline:
                raise BenchError(f"the hub's relay cache did not settle in {SETTLE_TIMEOUT_S:.0f} s")
            time.sleep(0.05)


def start_network(tmp: Path, files: list[Path], study_uid: str) -> Network:
    """The hub (one process) and one gateway (PIXPORT_HTTP__WORKERS=1) holding and publishing the CT."""
    timings: dict[str, float] = {}
    keys = tmp / "keys"
    keys.mkdir()
    operator = SigningKey.generate()
    operator.save(keys / "operator.pem")
    (keys / "operator.jwk").write_text(json.dumps(operator.public_jwk()))
    hub_dir = Path(tempfile.mkdtemp(prefix="hub-", dir=tmp))
    hub_port, gateway_port = ab.free_port(), ab.free_port()
    hub_env = {
        **_base_env(),
        "PIXPORT_HUB__DATA_DIR": str(hub_dir / "data"),
        "PIXPORT_HUB__HOST": HOST,
        "PIXPORT_HUB__PORT": str(hub_port),
        "PIXPORT_HUB__OPERATOR_KEYS": json.dumps([str(keys / "operator.jwk")]),
    }
    cli("hub", "init", env=hub_env)
    cli("hub", "network-key", keys / "network.key", env=hub_env)
    hub = _spawn_server("hub", [*PIXPORT_CLI, "hub", "serve"], hub_env, hub_dir, f"http://{HOST}:{hub_port}")
    wait_answering(hub, "/hub/directory")

    gw_dir = Path(tempfile.mkdtemp(prefix="gateway-", dir=tmp))
    gateway_env = {
        **_base_env(),
        "PIXPORT_STORAGE__DATA_DIR": str(gw_dir / "archive"),
        "PIXPORT_HTTP__HOST": HOST,
        "PIXPORT_HTTP__PORT": str(gateway_port),
        "PIXPORT_HTTP__WORKERS": "1",
        "PIXPORT_DIMSE__PORT": str(ab.free_port()),  # never collide with a node already on 11112
        "PIXPORT_GATEWAY__INSTITUTION_CODE": INSTITUTION,
        "PIXPORT_GATEWAY__SIGNING_KEY": str(gw_dir / "key.pem"),
        "PIXPORT_GATEWAY__NETWORK_KEY": str(keys / "network.key"),
        "PIXPORT_GATEWAY__HUB_URL": hub.base_url,
        "PIXPORT_GATEWAY__HUB_KEY": str(hub_dir / "data" / "hub-key.jwk"),
    }
    cli("gateway", "keys", "generate", env=gateway_env)
    cli(
        "hub", "institutions", "add", INSTITUTION, "--name-ko", "벤치병원", "--name-en", "Bench Hospital",
        "--endpoint", f"http://{HOST}:{gateway_port}", "--public-key", gw_dir / "key.jwk", env=hub_env,
    )  # fmt: skip
    t0 = time.perf_counter()
    cli("archive", "import", *files, env=gateway_env, what="archive import")
    timings["archive_import"] = time.perf_counter() - t0
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    issuer = str(first.get("IssuerOfPatientID", "") or "")
    link = ["gateway", "patients", "link", str(first.PatientID), *(["--issuer", issuer] if issuer else [])]
    cli(*link, env=gateway_env, stdin=RRN + "\n", what="gateway patients link")
    t0 = time.perf_counter()
    published = json.loads(cli("gateway", "publish", study_uid, "--json", env=gateway_env, what="gateway publish"))
    timings["publish"] = time.perf_counter() - t0
    if not published or published[0].get("status") != "current":
        raise BenchError(f"gateway publish: unexpected answer {published!r}")
    gateway = _spawn_server(
        "gateway", [*PIXPORT_CLI, "gateway", "serve"], gateway_env, gw_dir, f"http://{HOST}:{gateway_port}"
    )
    gateway.wait_ready()
    return Network(hub, gateway, operator, timings, hub_dir / "data" / "relay-cache")


def start_orthanc_with(tmp: Path, files: list[Path]) -> tuple[ab.Server, float]:
    orthanc = ab.start_orthanc(tmp, "hub")
    seconds = ab.stow_phase(orthanc, ab.build_requests(files, 25, "ct"), 1, timeout=RETRIEVE_TIMEOUT_S)
    return orthanc, seconds


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    received: int
    status: int
    content_type: str
    source: str = ""
    """The hub's PixPort-Source header (cache or gateway); empty for the others."""
    kept: bool | None = None
    """Read from the gateway through the hub: whether the relay cache was filled (refreshed) with it."""

    @property
    def mb_per_s(self) -> float:
        return self.received / MB / self.seconds


def retrieve(client: httpx.Client, url: str, headers: dict[str, str]) -> Sample:
    """GET the whole study, streamed: the bytes are counted, never kept."""
    received = 0
    t0 = time.perf_counter()
    with client.stream("GET", url, headers=headers) as reply:
        for chunk in reply.iter_bytes():
            received += len(chunk)
    elapsed = time.perf_counter() - t0
    return Sample(
        elapsed,
        received,
        reply.status_code,
        reply.headers.get("content-type", ""),
        reply.headers.get("pixport-source", ""),
    )


def retrievers(net: Network, orthanc: ab.Server, study_uid: str) -> dict[str, Callable[[httpx.Client], Sample]]:
    base = {"Accept": ab.WADO_ACCEPT, "Accept-Encoding": "identity"}
    path = f"/dicomweb/studies/{study_uid}"

    def through_hub(client: httpx.Client, extra: dict[str, str]) -> Sample:
        # Each assertion is single-use: a fresh one per request, made before the clock starts.
        auth = authorization_header(net.operator, OPERATOR, HUB_AUDIENCE, "GET", path)
        return retrieve(client, net.hub.base_url + path, {**base, **auth, **extra})

    def relayed(client: httpx.Client) -> Sample:
        return through_hub(client, {"Cache-Control": "no-cache, no-store"})

    def from_the_gateway(client: httpx.Client) -> Sample:
        before = net.cache_entries()
        sample = through_hub(client, {"Cache-Control": "no-cache"})
        net.wait_cache_settled(before)  # the refreshed copy fetched, verified and kept, outside the clock
        after = net.cache_entries()
        sample.kept = bool(after) and after != before
        return sample

    def from_the_cache(client: httpx.Client) -> Sample:
        return through_hub(client, {})

    return {
        DIRECT: lambda client: retrieve(client, net.gateway.base_url + path, base),
        HUB_GATEWAY: relayed,
        HUB_KEEPING: from_the_gateway,
        HUB_CACHE: from_the_cache,
        ORTHANC: lambda client: retrieve(client, f"{orthanc.root}/studies/{study_uid}", base),
    }


def check_source(name: str, sample: Sample) -> str | None:
    """A read through the hub must have come from where it is said to (PixPort-Source)."""
    expected = SOURCES.get(name)
    if expected is not None and sample.source != expected:
        return f"served from {sample.source or 'nowhere said'}, not from the {expected}"
    return None


def fill_relay_cache(net: Network, from_the_gateway: Callable[[httpx.Client], Sample], attempts: int = 10) -> None:
    """Read through the hub from the gateway (untimed) until the relay cache holds the study."""
    with httpx.Client(timeout=RETRIEVE_TIMEOUT_S) as client:
        for attempt in range(1, attempts + 1):
            from_the_gateway(client)
            if net.cache_entries():
                print(f"  relay cache filled ({attempt} read{'s' if attempt > 1 else ''} from the gateway)", flush=True)
                return
    raise BenchError(f"the hub's relay cache was still empty after {attempts} reads of the study")


def check(sample: Sample, min_bytes: int) -> str | None:
    if sample.status != 200:
        return f"HTTP {sample.status}"
    if not sample.content_type.startswith("multipart/related"):
        return f"content type {sample.content_type!r}"
    if sample.received < min_bytes:
        return f"{sample.received} bytes, expected at least {min_bytes}"
    return None


def measure(
    runs: dict[str, Callable[[httpx.Client], Sample]], rounds: int, warmup: int, min_bytes: int
) -> dict[str, dict[str, Any]]:
    """Warm up each, then ``rounds`` rounds, rotating which goes first so drift hits all alike."""
    clients = {name: httpx.Client(timeout=RETRIEVE_TIMEOUT_S) for name in runs}
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    notes: dict[str, str | None] = dict.fromkeys(runs)
    try:
        for name, run in runs.items():
            for _ in range(warmup):
                sample = run(clients[name])
                notes[name] = notes[name] or check(sample, min_bytes)
            print(
                f"  warm-up {name}: {sample.mb_per_s:.0f} MB/s, {sample.received:,} bytes"
                + (f", from the {sample.source}" if sample.source else ""),
                flush=True,
            )
        names = list(runs)
        for round_ in range(rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            line = []
            for name in order:
                sample = runs[name](clients[name])
                samples[name].append(sample)
                notes[name] = notes[name] or check(sample, min_bytes) or check_source(name, sample)
                line.append(f"{name} {sample.mb_per_s:.0f} MB/s ({sample.seconds:.2f} s)")
            print(f"  round {round_ + 1}/{rounds}: " + ", ".join(line), flush=True)
    finally:
        for client in clients.values():
            client.close()
    return {
        name: {
            "median_mb_per_s": statistics.median(s.mb_per_s for s in vals),
            "median_seconds": statistics.median(s.seconds for s in vals),
            "bytes": sorted({s.received for s in vals}),
            "samples": [vars(s) for s in vals],
            "check": notes[name],
        }
        for name, vals in samples.items()
    }


def proc_status_bytes(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in text.splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def tree_hwm(server: ab.Server) -> int:
    """Sum of VmHWM over a server's process tree (each process's own peak; an upper bound of the tree's)."""
    total = 0
    for pid in server.tree_pids():
        with contextlib.suppress(OSError, StopIteration):
            total += proc_status_bytes(pid, "VmHWM")
    return total


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def build_rows(reads: dict[str, dict[str, Any]], hub_hwm: int) -> list[ab.Row]:
    rate = {name: r["median_mb_per_s"] for name, r in reads.items()}
    rows = [
        ab.Row(f"WADO-RS CT study, {DIRECT}", "MB/s", rate[DIRECT], None, ""),
        ab.Row(f"WADO-RS CT study, {HUB_GATEWAY}", "MB/s", rate[HUB_GATEWAY], None, ""),
        ab.Row(f"WADO-RS CT study, {HUB_KEEPING}", "MB/s", rate[HUB_KEEPING], None, ""),
        ab.Row(f"WADO-RS CT study, {HUB_CACHE}", "MB/s", rate[HUB_CACHE], None, ""),
        ab.Row(f"WADO-RS CT study, {ORTHANC}", "MB/s", rate[ORTHANC], None, ""),
        ab.Row(f"{HUB_GATEWAY} vs {DIRECT}", "MB/s", rate[HUB_GATEWAY], rate[DIRECT], HUB_RATIO_TARGET),
        ab.Row(f"{HUB_KEEPING} vs {DIRECT}", "MB/s", rate[HUB_KEEPING], rate[DIRECT], HUB_RATIO_TARGET),
        ab.Row(f"{HUB_CACHE} vs {DIRECT}", "MB/s", rate[HUB_CACHE], rate[DIRECT], HUB_RATIO_TARGET),
        ab.Row("hub peak RSS (VmHWM)", "MB", hub_hwm / MB, None, f"<{RSS_LIMIT_MB:.0f} MB"),
        ab.Row(f"{DIRECT} vs {ORTHANC}", "MB/s", rate[DIRECT], rate[ORTHANC], ""),
    ]
    for row, hub_read in ((rows[5], HUB_GATEWAY), (rows[6], HUB_KEEPING), (rows[7], HUB_CACHE)):
        problems = [f"{name}: {reads[name]['check']}" for name in (DIRECT, hub_read) if reads[name]["check"]]
        if reads[DIRECT]["bytes"] != reads[hub_read]["bytes"]:
            problems.append(f"bytes differ: direct {reads[DIRECT]['bytes']}, {hub_read} {reads[hub_read]['bytes']}")
        if problems:
            row.note = "CHECK " + "; ".join(problems)
    if reads[ORTHANC]["check"]:
        rows[9].note = f"CHECK {ORTHANC}: {reads[ORTHANC]['check']}"
    for row in rows:
        row.judge()
        if row.verdict == "n/a":  # one-value rows without a target
            row.verdict = "info"
    return rows


def print_table(rows: Sequence[ab.Row]) -> None:
    header = ("metric", "unit", "value", "vs", "ratio", "target", "result")
    table = [header] + [
        (
            r.metric,
            r.unit,
            ab._fmt(r.pixport),  # noqa: SLF001
            ab._fmt(r.orthanc),  # noqa: SLF001
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "-",
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 CT slices")
    parser.add_argument("--ct", type=int, help="CT slices (default 500, --quick 50)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, median reported (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed retrieves of each first (default %(default)s)")
    parser.add_argument("--data", type=Path, default=generate.DEFAULT_OUT, help="data cache (default bench/.data)")
    parser.add_argument("--tmp", type=Path, help="where the servers' temporary folders go (default: system temp)")
    parser.add_argument("--out", type=Path, help="JSON results file (default bench/results/hub-<time>.json)")
    args = parser.parse_args(argv)
    if args.ct is None:
        args.ct = 50 if args.quick else generate.FULL_CT
    if args.ct < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--ct, --rounds and --warmup need at least 1")
    return args


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    plan = generate.ensure_data(generate.build_plan(args.ct, 0, args.data))
    files = plan.ct_files
    ct_bytes = sum(p.stat().st_size for p in files)
    print(
        f"data: {len(files)} CT slices ({ct_bytes / MB:.0f} MB); {args.rounds} rounds after {args.warmup} warm-up; "
        f"load average {load_at_start[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    t0 = time.perf_counter()
    net = start_network(tmp, files, plan.ct_study_uid)
    print(
        f"  hub and gateway up, CT imported and published in {time.perf_counter() - t0:.1f} s "
        f"(import {net.setup_seconds['archive_import']:.1f} s)",
        flush=True,
    )
    orthanc, stow_s = start_orthanc_with(tmp, files)
    print(f"  Orthanc {orthanc.info.get('version')} up, CT stored over STOW-RS in {stow_s:.1f} s", flush=True)
    hub_pid = net.hub.proc.pid
    hub_idle = {"rss": proc_status_bytes(hub_pid, "VmRSS"), "hwm": proc_status_bytes(hub_pid, "VmHWM")}
    runs = retrievers(net, orthanc, plan.ct_study_uid)
    fill_relay_cache(net, runs[HUB_KEEPING])
    reads = measure(runs, args.rounds, args.warmup, ct_bytes)
    relay_cache_bytes = sum(p.stat().st_size for p in net.relay_cache.glob("*.study"))
    hub_hwm = proc_status_bytes(hub_pid, "VmHWM")
    hub_rss_after = proc_status_bytes(hub_pid, "VmRSS")
    hub_processes = len(net.hub.tree_pids())
    gateway_hwm = tree_hwm(net.gateway)
    versions = {
        "pixport": None,
        "orthanc": orthanc.info.get("version"),
        "dicomweb": orthanc.info.get("dicomweb_plugin"),
    }
    with contextlib.suppress(Exception):
        versions["pixport"] = importlib.metadata.version("pixport")
    ab.stop_all()
    rows = build_rows(reads, hub_hwm)
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": load_at_start,
            "python": platform.python_version(),
        },
        "git": ab._git_describe(),  # noqa: SLF001
        "data": {
            "version": generate.DATASET_VERSION,
            "ct_instances": len(files),
            "ct_bytes": ct_bytes,
            "ct_study_uid": plan.ct_study_uid,
        },
        "settings": {"rounds": args.rounds, "warmup": args.warmup, "accept": ab.WADO_ACCEPT, "gateway_workers": 1},
        "versions": versions,
        "setup_seconds": {**net.setup_seconds, "orthanc_stow": stow_s},
        "memory": {
            "hub_pid": hub_pid,
            "hub_processes": hub_processes,
            "hub_rss_before_bytes": hub_idle["rss"],
            "hub_hwm_before_bytes": hub_idle["hwm"],
            "hub_hwm_bytes": hub_hwm,
            "hub_rss_after_bytes": hub_rss_after,
            "gateway_tree_hwm_bytes": gateway_hwm,
            "hub_relay_cache_bytes": relay_cache_bytes,
        },
        "orthanc_config": orthanc.info.get("config"),
        "reads": reads,
        "rows": [vars(r) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(ab.ORTHANC_BIN).exists():
        print(f"{ab.ORTHANC_BIN} not found (apt-get install orthanc orthanc-dicomweb)", file=sys.stderr)
        return 2
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pixport-hub-bench-", dir=args.tmp))
    started = time.monotonic()
    try:
        with ab.cleanup(tmp):
            result = run(args, tmp)
    except ab.BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    result["duration_s"] = round(time.monotonic() - started, 1)
    rows = [ab.Row(**r) for r in result["rows"]]
    print()
    print_table(rows)
    memory = result["memory"]
    print(
        f"  hub: {memory['hub_processes']} process, RSS {memory['hub_rss_before_bytes'] / MB:.0f} MB before the "
        f"retrieves, {memory['hub_rss_after_bytes'] / MB:.0f} MB after; gateway tree VmHWM "
        f"{memory['gateway_tree_hwm_bytes'] / MB:.0f} MB"
    )
    kept = [s["kept"] for s in result["reads"][HUB_KEEPING]["samples"]]
    print(
        f"  relay cache refreshed by {sum(kept)} of the {len(kept)} timed reads {HUB_KEEPING} "
        "(a copy fetched again from the gateway in the background after each, outside the clock)"
    )
    out = (
        args.out
        or ab.RESULTS_DIR / f"hub-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    judged = [r for r in rows if r.verdict in {"pass", "FAIL", "CHECK"}]
    failed = [r for r in judged if r.verdict != "pass"]
    print(f"\n{len(judged) - len(failed)}/{len(judged)} targets met; {result['duration_s']} s; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
