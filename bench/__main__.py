"""python -m bench: run the benchmark scenarios, direct vs through Tollgate (and peers), and report.

Commands:
  run (default)   start the fake upstream and the gateway(s), run every available scenario, print the
                  tables, write bench/results/<UTC timestamp>.json and regenerate bench/RESULTS.md
  list            the scenario registry and whether each can run now
  profile         run the gateway under pyinstrument during scenario 1; write the profile to bench/results/

Examples:
  python -m bench                        # the full run (about 5 minutes)
  python -m bench --quick                # 2 s x 1 round smoke test (JSON as *-quick.json, RESULTS.md kept)
  python -m bench --peers                # also Portkey and LiteLLM, side by side (installed into bench/.peers/ once)
  python -m bench --scenarios chat --concurrency 1,16 --duration 5 --rounds 5
  python -m bench --gateway-cmd "{python} -m bench.standin --config {config}"   # test the harness
  python -m bench profile --duration 10 --concurrency 16
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench import floors, gateway, machine, report
from bench.http1 import raise_fd_limit
from bench.load import LoadGenerator
from bench.peers import start_litellm, start_portkey
from bench.probe import check
from bench.process import StartError
from bench.scenario import Context, Outcome, Settings
from bench.scenarios import SCENARIOS, by_name
from bench.target import Target, start_upstream

QUICK = Settings(
    duration_s=2.0,
    rounds=1,
    warmup_s=1.0,
    overhead_requests=100,
    stream_requests=50,
    capacity_levels=(10, 50, 100),
    capacity_seconds=2.0,
    quick=True,
)


MIN_CHAT_CELL_S = 8.0  # issue #14: scenario 1's cells last at least this long in a recorded run


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", nargs="?", choices=["run", "list", "profile"], default="run")
    g = p.add_argument_group("run shape")
    g.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK.duration_s:g} s, {QUICK.rounds} round, short streams; writes "
        "results/*-quick.json and leaves RESULTS.md alone (explicit flags still win)",
    )
    g.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated scenario names (default: all; see `list`)",
    )
    g.add_argument("--duration", type=float, help=f"seconds per load run (default {d.duration_s:g})")
    g.add_argument("--rounds", type=int, help=f"rounds per figure; medians are reported (default {d.rounds})")
    g.add_argument("--concurrency", type=_ints, help="comma-separated connection counts (default 1,16,64)")
    g.add_argument(
        "--warmup", type=float, help=f"warm-up seconds per target before scenario 1 (default {d.warmup_s:g})"
    )
    g.add_argument(
        "--overhead-requests",
        type=int,
        help=f"requests in the self-reported overhead pass (default {d.overhead_requests})",
    )
    g.add_argument("--stream-requests", type=int, help=f"sequential streams per round (default {d.stream_requests})")
    g.add_argument("--stream-chunks", type=int, help=f"chunks per sequential stream (default {d.stream_chunks})")
    g.add_argument(
        "--capacity-levels",
        type=_ints,
        help="concurrent stream counts of the relay-capacity ramp (default "
        + ",".join(map(str, d.capacity_levels))
        + ")",
    )
    g.add_argument(
        "--capacity-seconds", type=float, help=f"length of each paced stream (default {d.capacity_seconds:g})"
    )
    g.add_argument(
        "--max-chunk-delay-ms",
        type=float,
        help=f"relay capacity limit on p99 chunk delay (default {d.max_chunk_delay_ms:g})",
    )
    t = p.add_argument_group("targets")
    t.add_argument(
        "--gateway-cmd",
        default=gateway.DEFAULT_CMD,
        help="command starting the gateway; {python}, {config}, {repo} are filled in; it must "
        "print 'listening on http://HOST:PORT' (default: %(default)s)",
    )
    t.add_argument("--no-gateway", action="store_true", help="measure the direct upstream only")
    t.add_argument(
        "--no-memory-ledger",
        action="store_true",
        help="skip the second Tollgate with an in-memory ledger (scenario 1's measure of what SQLite costs)",
    )
    t.add_argument(
        "--no-postgres-twin",
        action="store_true",
        help="skip the second Tollgate on a PostgreSQL ledger (scenario 1's PostgreSQL vs SQLite CPU cost)",
    )
    t.add_argument(
        "--no-obs-twin",
        action="store_true",
        help="skip the second Tollgate without metrics and access log (scenario 1's measure of what they cost)",
    )
    t.add_argument(
        "--no-workers-twin",
        action="store_true",
        help="skip the second Tollgate with --workers 2 (scenario 1's throughput ratio of two workers to one)",
    )
    t.add_argument(
        "--peers",
        action="store_true",
        help="also measure the Portkey gateway (pinned npm package in bench/.peers/portkey/, the machine's "
        "node) and the LiteLLM proxy (pinned, own venv in bench/.peers/, no DB, 1 worker)",
    )
    t.add_argument(
        "--no-floors",
        action="store_true",
        help="skip the two floors of Tollgate's stack in scenario 1 (bench/floors.py: hypercorn + raw ASGI "
        "fixed answer; the same + a shared httpx client forwarding)",
    )
    o = p.add_argument_group("tools and output")
    o.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="auto: wrk, installed with apt-get if missing, else the Python fallback",
    )
    o.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    o.add_argument("--no-results-md", action="store_true", help="do not regenerate bench/RESULTS.md")
    o.add_argument(
        "--profiler",
        choices=["pyinstrument", "py-spy"],
        default="pyinstrument",
        help="for `profile`: pyinstrument (installed) or py-spy (if on PATH)",
    )
    o.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (configs, ledger, logs)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    given = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "overhead_requests": args.overhead_requests,
        "stream_requests": args.stream_requests,
        "stream_chunks": args.stream_chunks,
        "capacity_levels": args.capacity_levels,
        "capacity_seconds": args.capacity_seconds,
        "max_chunk_delay_ms": args.max_chunk_delay_ms,
    }
    values = {**base.__dict__, **{k: v for k, v in given.items() if v is not None}}
    return Settings(**values)


def list_scenarios() -> None:
    for scenario in SCENARIOS:
        why = scenario.unavailable(None)
        print(f"{scenario.name:<10} {scenario.title}" + (f"\n{'':<10} skipped: {why}" if why else ""))


def start_gateways(args: argparse.Namespace, workdir: Path, upstream: Target, skipped: dict[str, str]) -> list[Target]:
    """Tollgate (unless --no-gateway) and the peers asked for; each one checked before use."""
    found: list[Target] = []
    wanted: list[tuple[str, object]] = []
    if args.no_gateway:
        skipped["tollgate"] = "--no-gateway"
    elif why := gateway.unavailable(args.gateway_cmd):
        skipped["tollgate"] = why
    else:
        variants = [gateway.DEFAULT]
        if args.gateway_cmd == gateway.DEFAULT_CMD:
            skip = {
                "memory": args.no_memory_ledger,
                "postgres": args.no_postgres_twin,
                "no-obs": args.no_obs_twin,
                "workers-2": args.no_workers_twin,
            }
            variants += [v for v in gateway.TWINS if not skip[v.name]]
        for variant in variants:
            wanted.append(
                (variant.target, lambda v=variant: gateway.start(args.gateway_cmd, workdir, upstream, v))  # type: ignore[misc]
            )
    if args.peers:
        wanted.append(("portkey", lambda: start_portkey(workdir, upstream)))
        wanted.append(("litellm", lambda: start_litellm(workdir, upstream)))
    for name, start in wanted:
        print(f"bench: starting {name} ...", flush=True)
        try:
            assert callable(start)
            target: Target = start()
        except (StartError, RuntimeError, OSError) as exc:
            skipped[name] = f"could not start: {exc}"
            print(f"bench: {name} skipped: could not start: {exc}", flush=True)
            continue
        if problem := check(target):
            target.server.stop()
            skipped[name] = f"failed the pre-flight request: {problem}"
            print(f"bench: {name} skipped: failed the pre-flight request: {problem}", flush=True)
            continue
        print(f"bench: {name} ready at {target.url} (pid {target.pid})", flush=True)
        found.append(target)
    return found


def start_floors(workdir: Path, upstream: Target, skipped: dict[str, str]) -> list[Target]:
    """Floor A and floor B (bench/floors.py), each checked with a non-stream request before use."""
    found: list[Target] = []
    for kind, (name, _label) in floors.KINDS.items():
        print(f"bench: starting {name} ...", flush=True)
        try:
            target = floors.start(kind, workdir, upstream)
        except (StartError, OSError) as exc:
            skipped[name] = f"could not start: {exc}"
            print(f"bench: {name} skipped: could not start: {exc}", flush=True)
            continue
        if problem := check(target, stream=False):
            target.server.stop()
            skipped[name] = f"failed the pre-flight request: {problem}"
            print(f"bench: {name} skipped: failed the pre-flight request: {problem}", flush=True)
            continue
        print(f"bench: {name} ready at {target.url} (pid {target.pid})", flush=True)
        found.append(target)
    return found


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    scenarios = by_name([n.strip() for n in args.scenarios.split(",") if n.strip()])
    if not settings.quick and settings.duration_s < MIN_CHAT_CELL_S and any(s.name == "chat" for s in scenarios):
        print(
            f"bench: WARNING: scenario 1 cells of {settings.duration_s:g} s; its CPU ratios need cells of at least "
            f"{MIN_CHAT_CELL_S:g} s (issue #14) to be worth recording",
            flush=True,
        )
    raise_fd_limit()  # children inherit it: many streams
    info = machine.describe()
    print(f"bench: machine: {machine.one_line(info)}", flush=True)
    load = LoadGenerator.choose(args.loadgen, install=not args.no_install)
    print(f"bench: load generator: {load.note}", flush=True)
    if load.name == "wrk":
        print(
            "bench: wrk -t1 takes one core, the server under test the other; the fake upstream shares "
            "them and its own CPU use is reported",
            flush=True,
        )
    quiet_start = machine.cpu_snapshot()
    time.sleep(1)  # is anything else busy before we start?
    cpu_start = machine.cpu_snapshot()
    before = machine.outside_load(quiet_start, cpu_start)
    if before["other_processes_pct"] > 10:
        print(
            f"bench: WARNING: other processes are using {before['other_processes_pct']} % of this machine's CPU "
            "right now; the figures will be noisier (the report says how much over the whole run)",
            flush=True,
        )
    started = datetime.datetime.now(datetime.UTC)
    tmp = tempfile.TemporaryDirectory(prefix="tollgate-bench-")
    workdir = Path(tmp.name)
    skipped_targets: dict[str, str] = {}
    upstream = start_upstream(workdir)
    print(f"bench: fake upstream at {upstream.url} (pid {upstream.pid})", flush=True)
    gateways: list[Target] = []
    floor_targets: list[Target] = []
    outcomes: list[Outcome] = []
    try:
        if problem := check(upstream):
            raise SystemExit(f"bench: the fake upstream failed its own pre-flight request: {problem}")
        gateways = start_gateways(args, workdir, upstream, skipped_targets)
        if args.no_floors:
            skipped_targets["floors"] = "--no-floors"
        elif any(s.name == "chat" for s in scenarios):
            floor_targets = start_floors(workdir, upstream, skipped_targets)
        ctx = Context(settings, load, upstream, gateways, floors=floor_targets)
        for scenario in scenarios:
            why = scenario.unavailable(ctx)
            if why:
                print(f"bench: {scenario.title}: skipped: {why}", flush=True)
                outcomes.append(Outcome(scenario.name, scenario.title, skipped=why))
                continue
            ctx.log(f"{scenario.title}: running")
            outcomes.append(scenario.run(ctx))
        for target in [*ctx.targets, *ctx.floors]:
            if not target.server.alive():
                print(
                    f"bench: WARNING: {target.name} exited during the run (exit {target.server.proc.poll()}); "
                    f"log: {target.server.log}",
                    flush=True,
                )
    finally:
        for target in [*gateways, *floor_targets, upstream]:
            target.server.stop()
        if args.keep_workdir:
            print(f"bench: kept {workdir}", flush=True)
        else:
            tmp.cleanup()
    finished = datetime.datetime.now(datetime.UTC)
    info["outside_load"] = machine.outside_load(cpu_start, machine.cpu_snapshot())
    doc = document(
        args, settings, info, load, upstream, [*gateways, *floor_targets], skipped_targets, outcomes, started, finished
    )
    print("\n" + report.text(doc, outcomes), flush=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    if not (args.no_results_md or settings.quick):  # RESULTS.md keeps what this run did not measure
        doc["kept_from"] = report.kept_from_results_md({o.name for o in outcomes if not o.skipped})
    json_path = report.write_json(doc, stamp, settings.quick)
    print(f"bench: wrote {json_path.relative_to(Path.cwd()) if json_path.is_relative_to(Path.cwd()) else json_path}")
    if not (args.no_results_md or settings.quick):
        print(f"bench: wrote {report.write_results_md(doc, outcomes, json_path)}")
    print(f"bench: done in {(finished - started).total_seconds():.0f} s")
    return 0


def _load(loadavg: object) -> str:
    return f"{loadavg[0]:.2f}" if isinstance(loadavg, list) and loadavg else "?"


def document(
    args: argparse.Namespace,
    settings: Settings,
    info: dict[str, object],
    load: LoadGenerator,
    upstream: Target,
    gateways: list[Target],
    skipped_targets: dict[str, str],
    outcomes: list[Outcome],
    started: datetime.datetime,
    finished: datetime.datetime,
) -> dict[str, object]:
    """Everything about the run, JSON-ready; ``header`` is the report's opening lines."""
    git, outside = info["git"], info["outside_load"]
    assert isinstance(git, dict) and isinstance(outside, dict)
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    targets = [upstream, *gateways]
    header = [
        f"## Tollgate bench, {date}",
        "",
        f"- machine: {machine.one_line(info)} (noisy shared VM; medians of {settings.rounds} round(s))",
        f"- outside noise during the run: other processes used {outside['other_processes_pct']} % and the "
        f"hypervisor stole {outside['steal_pct']} % of the machine's CPU (load average at start "
        f"{_load(info['loadavg_at_start'])})",
        f"- git: {git['sha']}{' (uncommitted changes)' if git['dirty'] else ''}",
        f"- load generator: {load.note}",
        "- targets: " + "; ".join(f"{t.label} ({t.version})" for t in targets),
    ]
    header += [f"- not measured: {name}: {why}" for name, why in skipped_targets.items()]
    return {
        "date": date,
        "started": started.isoformat(),
        "seconds": round((finished - started).total_seconds(), 1),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "settings": settings.__dict__,
        "machine": info,
        "load_generator": {"name": load.name, "version": load.version, "note": load.note},
        "targets": {t.name: {"label": t.label, "version": t.version, "notes": t.notes} for t in targets},
        "targets_skipped": skipped_targets,
        "header": header,
        "scenarios": {
            o.name: {
                "title": o.title,
                "skipped": o.skipped,
                "figures": o.figures,
                "tables": [t.__dict__ for t in o.tables],
            }
            for o in outcomes
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "list":
        list_scenarios()
        return 0
    if args.command == "profile":
        from bench.profiler import profile

        return profile(args, settings_from(args))
    started = time.monotonic()
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"bench: interrupted after {time.monotonic() - started:.0f} s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
