"""python -m bench profile: where the gateway's CPU goes during scenario 1's load.

Starts the fake upstream and the gateway under a sampling profiler, drives ``--duration`` seconds of
non-stream load at the first ``--concurrency`` value above 1 (16 by default), stops the gateway and
writes the profile to bench/results/profile-<UTC timestamp>.{html,txt} (pyinstrument) or .txt (py-spy's
collapsed stacks, every thread: ``--profiler py-spy``, if ``py-spy`` is on PATH; ``pip install py-spy``
provides it).

pyinstrument wraps the gateway's ``{python} -m MODULE ...`` command, so ``--gateway-cmd`` must start
that way (the default does). The profile includes start-up and shutdown; they are short next to the load.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import gateway, report
from bench.load import LoadGenerator
from bench.probe import chat_body
from bench.scenario import Settings
from bench.target import start_upstream

PREFIX = "{python} -m "


def profile(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.gateway_cmd
    if why := gateway.unavailable(cmd):
        print(f"bench: profile: skipped: {why}")
        return 1
    concurrency = next((c for c in settings.concurrency if c > 1), settings.concurrency[0])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    report.RESULTS_DIR.mkdir(exist_ok=True)
    out = report.RESULTS_DIR / f"profile-{stamp}"
    use_pyspy = args.profiler == "py-spy"
    if use_pyspy and not shutil.which("py-spy"):
        print("bench: profile: py-spy is not on PATH (pip install py-spy), or use --profiler pyinstrument")
        return 1
    if not use_pyspy:
        if not cmd.startswith(PREFIX):
            print(f"bench: profile: pyinstrument needs a gateway command starting with {PREFIX!r}")
            return 1
        session = out.with_suffix(".pyisession")
        cmd = f"{{python}} -m pyinstrument -r session -o {session} -m " + cmd.removeprefix(PREFIX)
    load = LoadGenerator.choose(args.loadgen, install=not args.no_install)
    with tempfile.TemporaryDirectory(prefix="tollgate-profile-") as tmp:
        workdir = Path(tmp)
        upstream = start_upstream(workdir)
        target = gateway.start(cmd, workdir, upstream)
        spy = None
        try:
            load.run(target.url, target.bearer, chat_body(), concurrency, 1)  # warm-up
            if use_pyspy:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(target.pid),
                        "--duration",
                        str(round(settings.duration_s)),
                        "--threads",
                        "--format",
                        "raw",
                        "-o",
                        str(out.with_suffix(".txt")),
                    ]
                )
            print(f"bench: profile: {settings.duration_s:g} s of load at c={concurrency} ...", flush=True)
            result = load.run(target.url, target.bearer, chat_body(), concurrency, settings.duration_s)
            print(f"bench: profile: {result.rps:.0f} req/s under the profiler (slower than without it)")
            if spy is not None:
                spy.wait(60)
        finally:
            target.server.stop(signal.SIGINT, timeout_s=30)  # pyinstrument writes its file on exit
            upstream.server.stop()
    if use_pyspy:
        print(f"bench: wrote {out.with_suffix('.txt')} (collapsed stacks, one per thread)")
        return 0
    for renderer, suffix in (("html", ".html"), ("text", ".txt")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--load",
                str(session),
                "-r",
                renderer,
                "-o",
                str(out.with_suffix(suffix)),
            ],
            check=True,
        )
        print(f"bench: wrote {out.with_suffix(suffix)}")
    session.unlink()
    return 0
