"""`make mutation`: mutation testing of the core with mutmut 3, on a reproducible sample, and the score.

    .venv/bin/python scripts/mutation.py [--seed 2026] [--size 600 | --all] [--per-module 0] [--resume | --report]
                                         [--fail-under 95]

1. mutmut writes every mutant of the modules `[tool.mutmut]` in pyproject.toml selects into `mutants/`.
2. A sample of them is drawn with `random.Random(seed)` from the sorted mutant names, so one seed and size give the
   same mutants on any machine (for the same source). With `--per-module N` the draw is stratified: each module
   first gets N of its own mutants (all of them if it has fewer), then the rest of the size is drawn from the
   mutants left, so a small or new module is not left to chance.
3. `mutmut run` runs that sample: each mutant against the tests that called the mutated function (mutmut records
   that in one plain pytest run first, xdist off; the moto server and the fake UserHub are fixtures of those tests).
4. Each survivor is looked up in `scripts/mutation_equivalents.tsv`, the triage of survivors that change no
   observable behaviour (name, kind, the change, why); kind `accepted` marks the few that do change it where
   no test could tell (they count against the score). An entry counts only while its change still
   reads the same, so a triage made stale by a change of the source shows up as an untriaged survivor.

The score is (killed + timed out) / (sampled − equivalent), over the mutants that change behaviour. Untriaged
survivors, with their diffs, go to `mutants/survivors.txt`. The run is slow (one pytest per mutant): not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENTS = ROOT / "scripts" / "mutation_equivalents.tsv"
CARRIED = MUTANTS / "carried.json"  # kills a resume carried over, which mutmut's own results forget
MUTMUT = Path(sys.executable).parent / "mutmut"
ACCEPTED = "accepted"  # a triage kind that changes behaviour: counted against the score, listed, not a test gap
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 36: "timeout", 24: "timeout"}
STATUS |= {-24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


MODULE = re.compile(r"^(.*?)\.x[_ǁ]")  # mutmut 3 names a mutant module.x_function__mutmut_N or module.xǁClassǁ...


@dataclass(frozen=True)
class Equivalent:
    kind: str
    line: str
    why: str


def generate() -> list[str]:
    """Every mutant name, sorted; mutmut's own generation step (pinned mutmut 3.8.1), without running a test."""
    from mutmut.__main__ import (
        copy_also_copy_files,
        copy_src_dir,
        create_mutants,
        set_mutant_under_test,
        setup_source_paths,
        store_lines_covered_by_tests,
    )

    set_mutant_under_test("mutant_generation")
    MUTANTS.mkdir(exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # a line per file copied
        copy_src_dir()
        copy_also_copy_files()
        setup_source_paths()
        store_lines_covered_by_tests()
        create_mutants(2)
    return sorted(
        name for meta in MUTANTS.rglob("*.py.meta") for name in json.loads(meta.read_text())["exit_code_by_key"]
    )


def module_of(name: str) -> str:
    found = MODULE.match(name)
    return found.group(1) if found else name


def draw(names: list[str], size: int, seed: int, per_module: int) -> list[str]:
    """A reproducible sample: `per_module` of each module's mutants first, the rest uniformly from what is left."""
    rng = random.Random(seed)
    if per_module <= 0:
        return sorted(rng.sample(names, size))
    by_module: dict[str, list[str]] = {}
    for name in names:
        by_module.setdefault(module_of(name), []).append(name)
    chosen: set[str] = set()
    for module in sorted(by_module):
        mine = by_module[module]
        chosen.update(rng.sample(mine, min(per_module, len(mine))))
    rest = [name for name in names if name not in chosen]
    chosen.update(rng.sample(rest, max(0, min(size - len(chosen), len(rest)))))
    return sorted(chosen)


def recorded() -> dict[str, str]:
    """mutmut's results, plus the kills the last resume carried over while the mutant still reads the same."""
    found = results()
    if CARRIED.exists():
        for name, (line, result) in json.loads(CARRIED.read_text()).items():
            if found.get(name) == "not checked" and mutated_line(get_diff_for_mutant(name)) == line:
                found[name] = result
    return found


def results() -> dict[str, str]:
    found: dict[str, str] = {}
    for meta in MUTANTS.rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = STATUS.get(code, "suspicious")
    return found


def mutated_line(diff: str) -> str:
    """The lines a mutant removes and adds, stripped, as one line: what the triage file matches on."""
    changed = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    return " | ".join(line[0] + line[1:].strip() for line in changed)


def load_equivalents() -> dict[str, Equivalent]:
    if not EQUIVALENTS.exists():
        return {}
    rows = [line.split("\t", 3) for line in EQUIVALENTS.read_text().splitlines() if line and line[0] != "#"]
    return {name: Equivalent(kind, line, why) for name, kind, line, why in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--size", type=int, default=600, help="mutants to sample (default 600)")
    parser.add_argument("--all", action="store_true", help="run every mutant instead of a sample")
    parser.add_argument(
        "--per-module",
        type=int,
        default=0,
        help="stratify: each module gets this many of its mutants first (default 0: a uniform draw)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep mutants/ and its results; run again only the sampled mutants not yet killed (after adding tests)",
    )
    parser.add_argument("--report", action="store_true", help="only print the score of the results in mutants/")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 below this score (percent)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    os.chdir(ROOT)
    if args.report:
        sample, to_run, before, carried = (MUTANTS / "sample.txt").read_text().split(), [], {}, {}
    elif args.resume:
        generate()  # mutmut keeps the results of every function whose source did not change
        sample = (MUTANTS / "sample.txt").read_text().split()
        before = recorded()
        to_run = [name for name in sample if before.get(name) not in ("killed", "timeout")]
        # mutmut forgets every result when the test selection in pyproject.toml changes (a new test file): a kill
        # of the last run stands while the mutant reads the same, since tests were only added
        carried = {name: mutated_line(get_diff_for_mutant(name)) for name in sample if name not in to_run}
        print(f"resuming: {len(to_run)} of the {len(sample)} sampled mutants are not killed yet", flush=True)
    else:
        if MUTANTS.exists():
            shutil.rmtree(MUTANTS)
        names = generate()
        size = len(names) if args.all else min(args.size, len(names))
        sample = draw(names, size, args.seed, args.per_module) if size < len(names) else names
        print(
            f"mutants generated: {len(names)}; sampled: {len(sample)} "
            f"(seed {args.seed}, size {size}, per module {args.per_module})",
            flush=True,
        )
        (MUTANTS / "sample.txt").write_text("\n".join(sample) + "\n")
        to_run, before, carried = sample, {}, {}

    if to_run:
        with (MUTANTS / "mutmut-run.log").open("a") as log:
            run = subprocess.run(
                [str(MUTMUT), "run", "--max-children", str(args.max_children), *to_run],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if run.returncode != 0:
            print(f"mutmut run failed ({run.returncode}): see {MUTANTS / 'mutmut-run.log'}", file=sys.stderr)
            return run.returncode

    status = recorded() if args.report else results()
    for name, line in carried.items():
        if status.get(name) == "not checked" and mutated_line(get_diff_for_mutant(name)) == line:
            status[name] = before[name]
    if carried:  # a second resume or a report after this one must not lose them
        CARRIED.write_text(json.dumps({name: [line, status[name]] for name, line in carried.items()}))
    equivalents = load_equivalents()
    tally: Counter[str] = Counter(status[name] for name in sample)
    kinds: Counter[str] = Counter()
    accepted: list[str] = []
    untriaged: list[tuple[str, str]] = []
    modules: dict[str, Counter[str]] = {}  # per module: sampled, killed, equivalent, accepted, untriaged
    for name in sample:
        row = modules.setdefault(module_of(name), Counter())
        row["sampled"] += 1
        if status[name] in ("killed", "timeout"):
            row["killed"] += 1
        if status[name] not in ("survived", "no tests"):
            continue
        diff = get_diff_for_mutant(name)
        known = equivalents.get(name)
        if known is None or known.line != mutated_line(diff):
            untriaged.append((name, diff))
            row["untriaged"] += 1
        elif known.kind == ACCEPTED:
            accepted.append(name)
            row["accepted"] += 1
        else:
            kinds[known.kind] += 1
            row["equivalent"] += 1
    equivalent = sum(kinds.values())
    behaviour = len(sample) - equivalent
    killed = tally["killed"] + tally["timeout"]  # a mutant that makes the tests hang is caught too
    score = 100 * killed / behaviour if behaviour else 100.0
    with (MUTANTS / "survivors.txt").open("w") as handle:
        for name, diff in untriaged:
            handle.write(f"# {name}\n{diff}\n\n")

    minutes = (time.monotonic() - started) / 60
    print(f"results: {dict(sorted(tally.items()))}")
    print("by module: sampled, killed, equivalent, accepted, untriaged")
    for module, row in sorted(modules.items(), key=lambda item: (-item[1]["sampled"], item[0])):
        counts = ", ".join(str(row[key]) for key in ("sampled", "killed", "equivalent", "accepted", "untriaged"))
        print(f"  {module}: {counts}")
    print(f"survivors triaged equivalent: {equivalent} {dict(sorted(kinds.items()))}")
    print(f"survivors accepted (they change behaviour; no test can tell, see the triage file): {len(accepted)}")
    print(f"survivors not triaged (behaviour-changing until shown otherwise): {len(untriaged)}")
    for name, _ in untriaged:
        print(f"  {name}")
    print(f"score over behaviour-changing mutants: {killed}/{behaviour} = {score:.1f} %")
    print(f"time: {minutes:.1f} min; survivors' diffs: {MUTANTS / 'survivors.txt'}" if to_run else "")
    return 1 if score < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
