"""What the numbers were measured on: CPU, cores, kernel, Python, package versions, git revision."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trio", "httpx", "hypercorn", "quart", "quart-trio", "eventsourcing", "h11", "tollgate")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def git_revision() -> dict[str, object]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    return {"sha": sha or "(no commits)", "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def describe() -> dict[str, object]:
    """A JSON-ready description of this machine and software."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg_at_start": list(os.getloadavg()),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "git": git_revision(),
    }


def one_line(info: dict[str, object]) -> str:
    return f"{info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['kernel']}, {info['python']}"


def cpu_snapshot() -> dict[str, float]:
    """Machine-wide busy and steal CPU seconds (/proc/stat), this process's and its reaped children's."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    ticks = os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": time.monotonic(),
        "busy": (user + nice + system + irq + softirq) / ticks,
        "steal": steal / ticks,
        "own": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
    }


def outside_load(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """What the rest of the machine did during the run, as % of all cores: other processes' CPU use and
    the hypervisor's steal. Take ``end`` after every child has been stopped and reaped."""
    capacity = (end["wall"] - start["wall"]) * (os.cpu_count() or 1)
    other = (end["busy"] - start["busy"]) - (end["own"] - start["own"])
    return {
        "other_processes_pct": round(max(0.0, 100 * other / capacity), 1),
        "steal_pct": round(100 * (end["steal"] - start["steal"]) / capacity, 1),
    }
