"""What every benchmark shares: machine facts, timing helpers, subprocess servers and the results writer."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "results.md"
TOTAL_BUDGET_SECONDS = 570.0  # `make bench` must end within 10 minutes on the 2-core machine
PACKAGES = ("boto3", "botocore", "httpx", "httpcore", "anyio", "moto", "pydantic", "chalice")


@dataclass
class Options:
    """How the run was asked for; `deadline` is a time.monotonic() value no benchmark may pass."""

    quick: bool = False
    deadline: float = field(default_factory=lambda: time.monotonic() + TOTAL_BUDGET_SECONDS)
    output_dir: Path = BENCH_DIR  # where results.md goes; the plot is written next to it

    def left(self) -> float:
        return self.deadline - time.monotonic()


def log(message: str) -> None:
    """Progress on stdout, flushed, so `make bench` shows where it is."""
    print(message, flush=True)


@dataclass
class Figure:
    """One measured figure, its baseline and the ratio the target is stated on."""

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None  # None: informational, no target
    note: str = ""


@dataclass
class Section:
    """The outcome of one benchmark: its figures, extra tables and notes, in results.md order."""

    key: str
    title: str
    method: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits, without scientific notation for everyday sizes."""
    if value is None:
        return "–"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:,.{decimals}f}"


def ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def met_text(met: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "(info)"}[met]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), p in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def interleaved(rounds: int, subjects: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each subject once per round, rotating the order every round, and collect what each returns.

    Adjacent runs see the same machine state, so drift (another process, thermal, GC) hits subject and baseline
    alike; rotating the order keeps "runs first" or "runs second" from favouring either.
    """
    names = list(subjects)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(subjects[name]())
    return results


def paired_ratio(subject: Sequence[float], baseline: Sequence[float]) -> float:
    """Median of the per-round ratios: each pair ran back to back, so it shares the machine's mood."""
    return median([s / b for s, b in zip(subject, baseline, strict=True)])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app.py", "chalicelib", "userhub_sync", "bench", "requirements.txt"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = out.stdout.strip() or "unknown"
        return commit + (" + uncommitted changes to the measured code" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    """The facts a reader needs to compare two results.md files."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus (nproc)": str(cpus),
        "cpu model": _cpu_model(),
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "commit": _git_commit(),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.args!r} within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{proc.args!r} exited with {proc.wait(timeout=5)} before it was ready")
    return line.strip()


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a child we started (by its own pid), then kill it if it does not go within 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def fake_userhub_process(latency_ms: float, admin_key: str) -> Iterator[str]:
    """The fake UserHub in its own process (its own GIL), on a free loopback port; yields its base URL."""
    from userhub_sync.local.fake_userhub import command

    proc = subprocess.Popen(
        command(admin_keys=[admin_key], latency_ms=latency_ms),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = _read_line(proc, 30)
        prefix = "fake UserHub listening on "
        if not line.startswith(prefix):
            raise RuntimeError(f"unexpected first line from the fake UserHub: {line!r}")
        yield line[len(prefix) :]
    finally:
        stop_process(proc)


@contextlib.contextmanager
def json_line_process(module: str, *args: str, ready_timeout: float = 60) -> Iterator[JsonLineChild]:
    """A helper process of ours that speaks one JSON object per line on stdin/stdout (see bench/_moto_proc.py)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        child = JsonLineChild(proc)
        child.hello = json.loads(_read_line(proc, ready_timeout))
        yield child
    finally:
        with contextlib.suppress(Exception):
            child.call({"cmd": "quit"}, timeout=10)
        stop_process(proc)


class JsonLineChild:
    """Request/response over a child's stdin/stdout, one JSON object per line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.hello: dict[str, Any] = {}

    def call(self, request: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(_read_line(self.proc, timeout))
        if reply.get("error"):
            raise RuntimeError(f"{request.get('cmd')}: {reply['error']}")
        return reply


def http_post(url: str, timeout: float = 10) -> None:
    """POST with no body (the fake UserHub's control routes), for resets between runs."""
    urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout).read()


def _figure_rows(figures: list[Figure]) -> list[str]:
    rows = ["| figure | value | baseline | ratio | target | met? |", "| --- | ---: | --- | ---: | --- | --- |"]
    for f in figures:
        value = f"{fmt(f.value)} {f.unit}".strip() if f.value is not None else "–"
        baseline = f"{fmt(f.baseline)} ({f.baseline_name})" if f.baseline is not None else (f.baseline_name or "–")
        name = f.name + (f" — {f.note}" if f.note else "")
        rows.append(
            f"| {name} | {value} | {baseline} | {ratio_text(f.ratio)} | {f.target or '–'} | "
            f"{met_text(f.met) if f.target else '(info)'} |"
        )
    return rows


def render_results(
    machine: dict[str, str], sections: list[Section], *, command: str, wall_seconds: float, partial: bool
) -> str:
    """results.md: machine, a summary of every target, then one section per benchmark."""
    lines = [
        "# userhub-sync benchmark results",
        "",
        f"Generated by `{command}` in {wall_seconds:.0f} s. Written by `bench/common.py`; do not edit by hand "
        "(docs/PERFORMANCE.md explains the method and quotes these figures).",
        "",
    ]
    if partial:
        lines += ["**Partial run** (`--only` or `--quick`): some benchmarks or sizes were skipped.", ""]
    lines += ["## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += [
        "",
        "## Targets",
        "",
        "| benchmark | figure | ratio or value | target | met? |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for section in sections:
        for f in section.figures:
            if f.target:
                shown = ratio_text(f.ratio) if f.ratio is not None else f"{fmt(f.value)} {f.unit}"
                lines.append(f"| {section.title} | {f.name} | {shown} | {f.target} | {met_text(f.met)} |")
        if section.error:
            lines.append(f"| {section.title} | (did not run) | – | – | {section.error} |")
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        if section.error:
            lines += [f"**Not measured:** {section.error}", ""]
        if section.method:
            lines += ["Method:", ""] + [f"- {m}" for m in section.method] + [""]
        if section.figures:
            lines += [*_figure_rows(section.figures), ""]
        for table in section.tables:
            lines += [table, ""]
        if section.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in section.notes] + [""]
        lines.append(f"_{section.key}: {section.seconds:.0f} s_")
    return "\n".join(lines).rstrip() + "\n"


def print_section(section: Section) -> None:
    log(f"\n== {section.title} ({section.seconds:.0f} s)")
    if section.error:
        log(f"   not measured: {section.error}")
    for f in section.figures:
        value = f"{fmt(f.value)} {f.unit}".strip() if f.value is not None else "–"
        base = f" vs {fmt(f.baseline)} {f.baseline_name}" if f.baseline is not None else ""
        target = f"  target {f.target}: {met_text(f.met)}" if f.target else ""
        log(f"   {f.name}: {value}{base}  ratio {ratio_text(f.ratio)}{target}")
