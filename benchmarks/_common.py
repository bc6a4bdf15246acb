"""Helpers shared by the benchmark scripts: where the data is, and how results are recorded."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def monuseg_dir() -> Path:
    path = Path(os.environ.get("POINTCELL_MONUSEG", SHARED / "monuseg"))
    if not (path / "images").is_dir():
        raise SystemExit(f"MoNuSeg data not found at {path}; set POINTCELL_MONUSEG")
    return path


def provenance() -> str:
    """Commit, machine and date, for the header of a results file."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = cpu_name()
    return (
        f"commit `{commit}`, {os.cpu_count()} CPU cores ({cpu}), Python "
        f"{platform.python_version()}, {datetime.date.today().isoformat()}"
    )


def cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text, encoding="utf-8")
    print(f"results written to {path}")
    return path


def write_section(name: str, key: str, text: str) -> Path:
    """Put ``text`` into results file ``name`` as its section ``key``, replacing that section
    if present and keeping the others (several scripts report into one file)."""
    path = RESULTS / name
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = f"<!-- section: {key} -->", f"<!-- end: {key} -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    if start in old and end in old:
        before, rest = old.split(start, 1)
        rest = rest.split(end, 1)[1].lstrip("\n")
        new = before + block + ("\n" + rest if rest else "")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    return write_result(name, new)
