"""Load generation: wrk (installed from the OS packages when missing) or the Python fallback.

``LoadGenerator.choose`` decides once per run; ``run`` drives one closed-loop load of fixed
concurrency and duration and returns a ``LoadResult``. wrk runs with ``-t1``: one core for the load
generator, the other for the server under test (the upstream's share is reported separately).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.http1 import header_lines

LUA = Path(__file__).with_name("wrk_post.lua")


@dataclass(frozen=True)
class LoadResult:
    """One load run. Latencies in ms; ``loadgen_cpu_pct`` is the generator's own CPU use."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    loadgen_cpu_pct: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _install_wrk() -> str:
    """Try ``apt-get install -y wrk`` (root only); return why not, or "" on success."""
    if os.geteuid() != 0:
        return "not root, cannot apt-get install wrk"
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    print("bench: wrk missing; installing it with apt-get (Debian package 'wrk') ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env, check=False)

    if apt("install", "-y", "-qq", "wrk").returncode != 0:
        apt("update", "-qq")  # a fresh machine may have no package lists yet
        second = apt("install", "-y", "-qq", "wrk")
        if second.returncode != 0:
            return "apt-get install wrk failed: " + second.stderr.strip()[-200:]
    return "" if shutil.which("wrk") else "apt-get ran but wrk is still not on PATH"


class LoadGenerator:
    """wrk when it can be had, else bench.pyload; ``name`` and ``note`` go into the report."""

    def __init__(self, name: str, note: str) -> None:
        self.name = name
        self.note = note
        self.version = ""
        if name == "wrk":
            out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
            self.version = (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else ""

    @classmethod
    def choose(cls, preference: str = "auto", install: bool = True) -> LoadGenerator:
        if preference == "python":
            return cls("python", "Python load generator (bench/pyload.py), as asked with --loadgen python")
        if shutil.which("wrk"):
            return cls("wrk", "wrk -t1 (one load-generator thread, i.e. one core)")
        why = _install_wrk() if install else "wrk not installed (--no-install)"
        if not why:
            return cls("wrk", "wrk -t1 (one load-generator thread, i.e. one core); installed by this run")
        if preference == "wrk":
            raise SystemExit(f"bench: --loadgen wrk but {why}")
        return cls(
            "python",
            f"FALLBACK: wrk unavailable ({why}); used the Python load generator "
            "(bench/pyload.py), slower than wrk, so figures are not comparable with wrk runs",
        )

    def run(
        self,
        url: str,
        bearer: str,
        body: bytes,
        connections: int,
        duration_s: float,
        headers: dict[str, str] | None = None,
    ) -> LoadResult:
        """``headers`` are sent with every request besides Content-Type and Authorization."""
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
            f.write(body)
            body_file = f.name
        try:
            if self.name == "wrk":  # wrk takes whole seconds only.
                argv = [
                    "wrk",
                    "-t1",
                    f"-c{connections}",
                    f"-d{max(1, round(duration_s))}s",
                    "--timeout",
                    "30s",
                    "-s",
                    str(LUA),
                    url,
                ]
            else:
                argv = [
                    sys.executable,
                    "-m",
                    "bench.pyload",
                    "--url",
                    url,
                    "--key",
                    bearer,
                    "--body-file",
                    body_file,
                    "--connections",
                    str(connections),
                    "--duration",
                    str(duration_s),
                ]
                for line in header_lines(headers or {}):
                    argv += ["--header", line]
            env = {**os.environ, **wrk_env(body_file, bearer, headers or {})}
            return _drive(argv, env)
        finally:
            os.unlink(body_file)


def wrk_env(body_file: str, bearer: str, headers: dict[str, str]) -> dict[str, str]:
    """What bench/wrk_post.lua reads: the body file, the bearer key, extra headers one ``Name: value`` a line."""
    return {
        "BENCH_WRK_BODY_FILE": body_file,
        "BENCH_WRK_BEARER": bearer,
        "BENCH_WRK_HEADERS": "\n".join(header_lines(headers)),
    }


def _drive(argv: list[str], env: dict[str, str]) -> LoadResult:
    """Run the generator, reap it with wait4 for its CPU use, parse its BENCH_WRK line."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parent.parent
    )
    assert proc.stdout is not None
    with proc.stdout:
        output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    line = next((x for x in output.splitlines() if x.startswith("BENCH_WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"load generator failed (exit {proc.returncode}): {' '.join(argv)}\n{output[-2000:]}")
    data = json.loads(line.removeprefix("BENCH_WRK "))
    seconds = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return LoadResult(
        requests=data["requests"],
        seconds=seconds,
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        errors=data["errors"],
        loadgen_cpu_pct=100 * (usage.ru_utime + usage.ru_stime) / wall if wall else 0.0,
    )
