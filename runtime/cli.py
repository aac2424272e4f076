"""The `tollgate` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from runtime.config import Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description="An OpenAI-compatible LLM gateway with a ledger.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $TOLLGATE_CONFIG or config.toml)")
    serve.add_argument("--host", help="override [server].host")
    serve.add_argument("--port", type=int, help="override [server].port (0 = any free port)")
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", help="config file (default: $TOLLGATE_CONFIG or config.toml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "check-config":
        config = load_config_or_exit(args.config)
        print(
            f"{config.source}: OK ({len(config.providers)} providers, "
            f"{len(config.models)} model aliases, {len(config.tenants)} tenants)"
        )
        return 0
    if args.command == "serve":
        from runtime.server import run

        config = load_config_or_exit(args.config)
        trio.run(lambda: run(config, host=args.host, port=args.port))
        return 0
    return 2


def load_config_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        print("tollgate: the configuration has problems:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
