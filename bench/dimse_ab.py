"""A/B of PixPort's DICOM listener: this checkout against another git revision, side by side.

The full benchmark (``dimse_bench.py``) compares PixPort with Orthanc; a change to PixPort is
judged better here, against the code before it, on the same machine in the same minutes: the
machine's speed drifts by up to 2x within minutes, so two benchmark runs apart tell little.

The base revision is checked out into a temporary ``git worktree`` and put first on the
listener's PYTHONPATH; everything else (the venv, the DCMTK clients, the data of
``generate.py``) is shared.  Each round runs every workload against both builds, in
alternating order, and the medians of the rounds are printed, with the listener's CPU time per
instance (user + system, from /proc):

- ``small1`` / ``small4``: storescu of the first ``--small`` small studies on 1 / 4
  associations, each build on a fresh listener (an empty folder) every round;
- ``ct1`` / ``ct4``: the same with the first ``--ct`` CT slices;
- ``move`` / ``get``: movescu (to a DCMTK storescp) / getscu of those CT slices, from one
  listener per build that stored them once.

    .venv/bin/python bench/dimse_ab.py --base HEAD~1
    .venv/bin/python bench/dimse_ab.py --base 5bc153b --workloads small4,ct4 --rounds 7

Rounds take 10-30 s each with the defaults.  Only the code under ``src/`` differs between the
two: a change to dependencies or settings is not compared by this script.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import archive_bench as ab
import dimse_bench as db
import generate

WORKLOADS = ("small1", "small4", "ct1", "ct4", "move", "get")
BUILDS = ("base", "new")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare with (e.g. HEAD~1, main, a commit)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="which (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, medians reported (default %(default)s)")
    parser.add_argument("--small", type=int, default=400, help="small studies per store (default %(default)s)")
    parser.add_argument("--ct", type=int, default=250, help="CT slices per store/retrieve (default %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="PIXPORT_DIMSE__WORKERS (default 0: one per core)")
    parser.add_argument("--tmp", type=Path, help="where the listeners' folders go (default: system temp)")
    for build in BUILDS:
        parser.add_argument(
            f"--{build}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"more environment for the {build} listener (repeatable), e.g. PIXPORT_DIMSE__WORKERS=4",
        )
    args = parser.parse_args(argv)
    for build in BUILDS:
        pairs = getattr(args, f"{build}_env")
        if bad := [pair for pair in pairs if "=" not in pair]:
            parser.error(f"--{build}-env takes NAME=VALUE, not {bad[0]!r}")
        setattr(args, f"{build}_env", dict(pair.split("=", 1) for pair in pairs))
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if args.rounds < 1 or args.small < 1 or args.ct < 1:
        parser.error("--rounds, --small and --ct need at least 1")
    args.listener_cmd = db.listener_command(None)
    return args


def checkout(revision: str, folder: Path) -> Path:
    """The ``src`` folder of ``revision``, checked out into ``folder`` as a detached worktree."""
    subprocess.run(
        ["git", "-C", str(ab.REPO), "worktree", "add", "--detach", "--force", str(folder), revision],
        check=True,
        capture_output=True,
    )
    return folder / "src"


def cpu_seconds(node: db.Node) -> float:
    return sum(db.tree_cpu(node.server).values())


class Comparison:
    """Per (workload, build): seconds and server CPU seconds of each round."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], list[float]] = {}
        self.cpu: dict[tuple[str, str], list[float]] = {}

    def record(self, workload: str, build: str, seconds: float, cpu: float) -> None:
        self.seconds.setdefault((workload, build), []).append(seconds)
        self.cpu.setdefault((workload, build), []).append(cpu)

    def print(self, workloads: list[str], instances: dict[str, int]) -> None:
        columns = ("base inst/s", "new inst/s", "new/base", "base CPU ms", "new CPU ms")
        header = f"{'workload':<8} " + " ".join(f"{c:>11}" for c in columns)
        print(header)
        print("-" * len(header))
        for workload in workloads:
            n = instances[workload]
            rate = {b: n / statistics.median(self.seconds[(workload, b)]) for b in BUILDS}
            cpu = {b: 1000 * statistics.median(self.cpu[(workload, b)]) / n for b in BUILDS}
            print(
                f"{workload:<8} {rate['base']:>11.0f} {rate['new']:>11.0f} {rate['new'] / rate['base']:>10.2f}x "
                f"{cpu['base']:>11.2f} {cpu['new']:>11.2f}"
            )


def run(args: argparse.Namespace, tmp: Path) -> None:
    plan = generate.ensure_data(generate.build_plan(generate.FULL_CT, generate.FULL_SMALL, generate.DEFAULT_OUT))
    small, ct = plan.small_files[: args.small], plan.ct_files[: args.ct]
    base_src = checkout(args.base, tmp / "base")
    environments = {"base": {"PYTHONPATH": str(base_src), **args.base_env}, "new": dict(args.new_env)}
    move = db.start_move_destination(tmp)
    comparison = Comparison()
    stores = {"small1": (small, 1), "small4": (small, 4), "ct1": (ct, 1), "ct4": (ct, 4)}
    retrievers: dict[str, db.Node] = {}
    if {"move", "get"} & set(args.workloads):
        for build in BUILDS:
            retrievers[build] = db.start_pixport(tmp, f"{build}-retrieve", args, move, environments[build])
            db.store_phase(retrievers[build], ct, 1, tmp, [])
    retrieves: dict[str, Callable[[db.Node], tuple[float, str | None]]] = {
        "move": lambda node: db.cmove(node, plan.ct_study_uid, len(ct), move, tmp),
        "get": lambda node: db.cget(node, plan.ct_study_uid, len(ct), tmp),
    }
    if len(ct) != len(plan.ct_files):  # a retrieve sends the whole study: only the slices stored
        print(f"(move and get send the {len(ct)} CT slices stored)")
    for round_ in range(args.rounds):
        order = BUILDS if round_ % 2 == 0 else BUILDS[::-1]
        for workload in args.workloads:
            for build in order:
                if workload in stores:
                    files, assocs = stores[workload]
                    node = db.start_pixport(tmp, f"{build}-r{round_}", args, move, environments[build])
                    before = cpu_seconds(node)
                    seconds = db.store_phase(node, files, assocs, tmp, [])
                    comparison.record(workload, build, seconds, cpu_seconds(node) - before)
                    ab.retire(node.server, keep_files=True)  # deleted at the end (see dimse_bench)
                else:
                    node = retrievers[build]
                    before = cpu_seconds(node)
                    seconds, check = retrieves[workload](node)
                    if check:
                        raise db.BenchError(f"{workload} from {build}: {check}")
                    comparison.record(workload, build, seconds, cpu_seconds(node) - before)
        print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    instances = {w: len(ct) if w.startswith(("ct", "move", "get")) else len(small) for w in args.workloads}
    settings = "".join(
        f"; {b} with {' '.join(f'{k}={v}' for k, v in getattr(args, f'{b}_env').items())}"
        for b in BUILDS
        if getattr(args, f"{b}_env")
    )
    print(f"\nbase {args.base} against this checkout{settings}; medians of {args.rounds} rounds")
    comparison.print(args.workloads, instances)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pixport-dimse-ab-", dir=args.tmp))
    started = time.monotonic()
    try:
        with db.cleanup(tmp):  # every listener (and its workers) stopped, the folder deleted
            try:
                run(args, tmp)
            finally:
                subprocess.run(
                    ["git", "-C", str(ab.REPO), "worktree", "remove", "--force", str(tmp / "base")],
                    check=False,
                    capture_output=True,
                )
    except ab.BenchError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; listeners stopped", file=sys.stderr)
        return 130
    print(f"{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
