"""Micro-benchmark of the header parse: pydicom path vs fast path, in ms per instance.

Runs over the generated benchmark files (``generate.py``: bench/.data/v1/ct and small).

    .venv/bin/python bench/parse_bench.py [--repeat 3] [--limit 500]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from pixport.dicom.fastparse import FastPathUnsupported, read_header
from pixport.dicom.parse import ParseLimits, parse_instance, parse_instance_pydicom

DATA = Path(__file__).resolve().parent / ".data" / "v1"


def _time(parse: Callable[[Path, ParseLimits], object], files: list[Path], repeat: int) -> float:
    limits = ParseLimits()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for path in files:
            parse(path, limits)
        best = min(best, time.perf_counter() - start)
    return best * 1000 / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=500, help="files per folder")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'set':8} {'files':>6} {'fallback':>8} {'pydicom ms':>11} {'fast ms':>8} {'header ms':>9} {'speed-up':>8}")
    for kind in ("ct", "small"):
        folder = DATA / kind
        if not folder.is_dir():
            print(f"{kind:8} (no data: run bench/generate.py)")
            continue
        files = sorted(folder.iterdir())[: args.limit]
        fallback = 0
        for path in files:
            try:
                read_header(path, ParseLimits())
            except FastPathUnsupported:
                fallback += 1
        reference = _time(parse_instance_pydicom, files, args.repeat)
        fast = _time(parse_instance, files, args.repeat)
        header = _time(read_header, files, args.repeat)
        print(
            f"{kind:8} {len(files):>6} {fallback:>8} {reference:>11.3f} {fast:>8.3f} {header:>9.3f}"
            f" {reference / fast:>7.1f}x"
        )


if __name__ == "__main__":
    main()
