"""`python -m bench [--only delivery,signin,reconcile,cost,drain,reconcile-memory] [--quick]`: run, print, write
bench/results.md. Without --only, the first four run within 10 minutes; the others run on demand: drain (about 7
minutes: `make bench-drain` writes bench/results-drain.md) and reconcile-memory (reconcile's own bytes)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from bench.common import RESULTS_PATH, Options, Section, log, machine_info, print_section, render_results
from userhub_sync.local.moto import aws_environ, patched_environ

DEFAULT = ("delivery", "signin", "reconcile", "cost")
BENCHMARKS = (*DEFAULT, "drain", "reconcile-memory")
MINIMUM_SECONDS = {
    "delivery": 60,
    "signin": 30,
    "reconcile": 60,
    "cost": 60,
    "reconcile-memory": 30,
    "drain": 300,
}  # else skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated, from {', '.join(BENCHMARKS)} (default: {', '.join(DEFAULT)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, and skip the 50k-user reconcile")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the results (markdown)")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    # No AWS call may leave this machine: every benchmark points boto3 at a loopback moto; until then, nowhere.
    with patched_environ({**aws_environ("http://127.0.0.1:9"), "USERHUB_SYNC_METRICS": "off"}):
        return _run(args, selected)


def _run(args: argparse.Namespace, selected: list[str]) -> int:
    from chalicelib.observability import get_logger

    get_logger("bench")  # configure the project's JSON logger once, then keep it quiet except where measured
    logging.getLogger("userhub_sync").setLevel(logging.WARNING)

    started = time.monotonic()
    options = Options(quick=args.quick, output_dir=Path(args.output).resolve().parent)
    machine = machine_info()
    log("userhub-sync benchmarks: " + ", ".join(selected) + (" (quick)" if args.quick else ""))
    for key, value in machine.items():
        log(f"   {key}: {value}")
    sections: list[Section] = []
    for name in BENCHMARKS:
        if name not in selected:
            continue
        log(f"\n-- {name}")
        section_started = time.monotonic()
        try:
            if options.left() < MINIMUM_SECONDS[name]:
                raise TimeoutError(f"skipped: {options.left():.0f} s of the time budget left")
            module = importlib.import_module(f"bench.{name.replace('-', '_')}")
            section = module.run(options)
        except Exception as error:  # one broken benchmark must not hide the others' figures
            if not isinstance(error, TimeoutError):
                traceback.print_exc()
            section = Section(name, name, error=f"{type(error).__name__}: {error}")
        section.seconds = time.monotonic() - section_started
        sections.append(section)
        print_section(section)
    wall = time.monotonic() - started
    machine["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    command = (
        "python -m bench"
        + (f" --only {','.join(selected)}" if set(selected) != set(DEFAULT) else "")
        + (" --quick" if args.quick else "")
    )
    partial = args.quick or not set(DEFAULT) <= set(selected)
    with open(args.output, "w", encoding="utf-8") as out:
        out.write(render_results(machine, sections, command=command, wall_seconds=wall, partial=partial))
    log(f"\nwrote {args.output} in {wall:.0f} s")
    missed = [f"{s.title}: {f.name}" for s in sections for f in s.figures if f.met is False]
    failed = [s.title for s in sections if s.error]
    if missed:
        log("targets missed: " + "; ".join(missed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
