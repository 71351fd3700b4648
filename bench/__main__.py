"""``python -m bench --full | --quick [--repeat N] [--out PATH] [--profile DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import STAGES, run, table

FULL_SIZES = [1_000, 10_000, 100_000]
FULL_END_TO_END = 10_000
# Ingest sides run this many times each, taking turns; the median run is reported.
FULL_REPEAT = 3
QUICK_SIZES = [2_000]
QUICK_END_TO_END = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="1k, 10k and 100k; end to end at 10k")
    mode.add_argument("--quick", action="store_true", help="2,000; end to end at 300")
    parser.add_argument("--sizes", help="comma-separated sizes instead of the mode's")
    parser.add_argument(
        "--repeat", type=int, help=f"ingest runs per side (default {FULL_REPEAT}; --quick: 1)"
    )
    parser.add_argument("--out", type=Path, help="results file (default bench/results.json)")
    parser.add_argument("--stages", help="comma-separated subset of ingest,flush,collect,e2e")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile per side here")
    args = parser.parse_args(argv)
    sizes, e2e = (QUICK_SIZES, QUICK_END_TO_END) if args.quick else (FULL_SIZES, FULL_END_TO_END)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    out = args.out or Path(__file__).parent / (
        "results.json" if not args.quick else "results-quick.json"
    )
    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else FULL_REPEAT)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    results = run(sizes, e2e, out, args.profile, stages, repeat)
    print(table(results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
