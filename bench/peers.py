"""Peer gateways measured side by side, each installed once under bench/.peers/ (gitignored).

LiteLLM proxy, in its own venv: no database (so no spend tracking), one worker, a generated master key,
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it does not fetch its price map at boot.

Portkey gateway (npm ``@portkey-ai/gateway``), with the machine's node and npm into bench/.peers/portkey/:
pinned with npm ``overrides`` taken from Portkey's own lockfile (a plain install pulls a newer
``@hono/node-server`` that breaks every streaming request with ``TypeError: immutable``). It has no
config file: it routes each request by its headers (``x-portkey-provider``, ``x-portkey-custom-host``)
and passes the ``Authorization`` header on to the upstream.

Both are routed to the same fake upstream as everything else.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from bench.process import Server, free_port
from bench.target import UPSTREAM_KEY, Target

PEERS = Path(__file__).resolve().parent / ".peers"
LITELLM_PIN = "1.106.2"
LITELLM_VENV = PEERS / "litellm-venv"
MARKER = LITELLM_VENV / ".bench-installed"

PORTKEY_PACKAGE = "@portkey-ai/gateway"
PORTKEY_PIN = "1.15.2"
PORTKEY_OVERRIDES = {  # from Portkey's own package-lock.json at 1.15.2
    "@hono/node-server": "1.13.5",
    "hono": "4.9.7",
    "@hono/node-ws": "1.2.0",
    "ws": "8.18.3",
    "zod": "3.25.76",
    "jose": "6.0.11",
    "ioredis": "5.8.0",
}
PORTKEY_DIR = PEERS / "portkey"
PORTKEY_MARKER = PORTKEY_DIR / ".bench-installed"
PORTKEY_ENTRY = Path("node_modules") / PORTKEY_PACKAGE / "build" / "start-server.js"

LITELLM_CONFIG = """\
model_list:
  - model_name: bench-model
    litellm_params: {{model: openai/bench-model, api_base: "{upstream_base}", api_key: {upstream_key}}}
general_settings: {{master_key: os.environ/LITELLM_MASTER_KEY}}
"""


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LITELLM_VENV / "bin" / "pip"), *args], capture_output=True, text=True, check=False)


def _choose_version() -> tuple[str, str]:
    """The pinned version if the index has it, else the newest; and a note when it is not the pin."""
    out = _pip("index", "versions", "litellm")
    match = re.search(r"Available versions: (.*)", out.stdout)
    available = [v.strip() for v in match.group(1).split(",")] if match else []
    if LITELLM_PIN in available or not available:
        return LITELLM_PIN, ""
    return available[0], f"litellm {LITELLM_PIN} unavailable from the index; used the newest, {available[0]}"


def install_litellm() -> str:
    """Create bench/.peers/litellm-venv with litellm[proxy] once; return the installed version."""
    if MARKER.exists():
        return MARKER.read_text().strip()
    print(f"bench: installing litellm[proxy] into {LITELLM_VENV} (large download, once) ...", flush=True)
    PEERS.mkdir(exist_ok=True)
    if not (LITELLM_VENV / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    version, note = _choose_version()
    if note:
        print(f"bench: {note}", flush=True)
    out = _pip("install", "-q", f"litellm[proxy]=={version}")
    if out.returncode != 0:
        raise RuntimeError(f"pip install litellm[proxy]=={version} failed:\n{out.stderr[-3000:]}")
    MARKER.write_text(version + "\n")
    return version


def start_litellm(workdir: Path, upstream: Target) -> Target:
    """Start the LiteLLM proxy (one worker, no DB) and wait until it answers its liveliness probe."""
    version = install_litellm()
    config = workdir / "litellm.yaml"
    config.write_text(
        LITELLM_CONFIG.format(upstream_base=upstream.url.removesuffix("/chat/completions"), upstream_key=UPSTREAM_KEY)
    )
    port = free_port()
    master_key = "sk-bench-" + secrets.token_hex(16)
    server = Server(
        "litellm",
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir / "litellm.log",
        cwd=workdir,
        env={"LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
    )
    server.drain_stdout()
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/health/liveliness", 180)
    server.url = base
    return Target(
        "litellm",
        f"LiteLLM {version}, 1 worker, no DB",
        f"{base}/v1/chat/completions",
        master_key,
        server,
        overhead_header="x-litellm-overhead-duration-ms",
        notes=["LiteLLM runs without a database: no spend tracking (its DB mode cannot start offline)"],
        version=f"litellm {version}",
    )


def portkey_package_json() -> str:
    """The package.json bench/.peers/portkey/ is installed from: the pinned gateway and its overrides."""
    doc = {
        "name": "tollgate-bench-portkey",
        "private": True,
        "description": "Written by bench/peers.py: the Portkey gateway the bench measures, pinned.",
        "dependencies": {PORTKEY_PACKAGE: PORTKEY_PIN},
        "overrides": PORTKEY_OVERRIDES,
    }
    return json.dumps(doc, indent=2) + "\n"


def portkey_routing_headers(upstream_base: str) -> dict[str, str]:
    """The headers that route a Portkey request to the fake upstream (base URL ending in /v1)."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream_base}


def _installed_versions(root: Path, packages: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for package in packages:
        try:
            found[package] = json.loads((root / "node_modules" / package / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            found[package] = "missing"
    return found


def install_portkey() -> str:
    """npm-install the pinned gateway into bench/.peers/portkey/ once; return its version."""
    wanted = portkey_package_json()
    package_json = PORTKEY_DIR / "package.json"
    if (
        PORTKEY_MARKER.exists()
        and (PORTKEY_DIR / PORTKEY_ENTRY).exists()
        and package_json.exists()
        and package_json.read_text() == wanted
    ):
        return PORTKEY_MARKER.read_text().strip()
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise RuntimeError("Portkey needs node (≥ 18) and npm on PATH (e.g. Debian's nodejs and npm packages)")
    major = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    if not re.fullmatch(r"v(\d+)\..*", major) or int(major[1:].split(".")[0]) < 18:
        raise RuntimeError(f"Portkey needs node ≥ 18; this machine has {major or 'an unknown version'}")
    print(f"bench: installing {PORTKEY_PACKAGE}@{PORTKEY_PIN} into {PORTKEY_DIR} with npm (once) ...", flush=True)
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    PORTKEY_MARKER.unlink(missing_ok=True)
    package_json.write_text(wanted)
    # --ignore-scripts: the package's only script is a postinstall `patch-package` with no patches shipped.
    out = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=PORTKEY_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"npm install {PORTKEY_PACKAGE}@{PORTKEY_PIN} failed:\n{out.stderr[-3000:]}")
    versions = _installed_versions(PORTKEY_DIR, [PORTKEY_PACKAGE, *PORTKEY_OVERRIDES])
    expected = {PORTKEY_PACKAGE: PORTKEY_PIN, **PORTKEY_OVERRIDES}
    if wrong := {p: v for p, v in versions.items() if v != expected[p]}:
        raise RuntimeError(f"npm installed other versions than pinned: {wrong} (wanted {expected})")
    PORTKEY_MARKER.write_text(PORTKEY_PIN + "\n")
    return PORTKEY_PIN


def start_portkey(workdir: Path, upstream: Target) -> Target:
    """Start the Portkey gateway (headless) and wait until its root route answers."""
    version = install_portkey()
    node = shutil.which("node") or "node"
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    port = free_port()
    server = Server(
        "portkey",
        [node, str(PORTKEY_ENTRY), f"--port={port}", "--headless"],
        workdir / "portkey.log",
        cwd=PORTKEY_DIR,
    )
    server.drain_stdout()
    base = f"http://127.0.0.1:{port}"
    server.wait_http(f"{base}/", 60)
    server.url = base
    return Target(
        "portkey",
        f"Portkey {version} (Node {node_version})",
        f"{base}/v1/chat/completions",
        UPSTREAM_KEY,  # Portkey passes Authorization on to the upstream
        server,
        notes=[
            "Portkey is routed per request by headers (x-portkey-provider: openai, x-portkey-custom-host: "
            "the fake upstream), no config, no cache, no logging backend; it sleeps 25 ms on purpose before "
            "forwarding a stream's first chunk (its src/handlers/streamHandler.ts)"
        ],
        version=f"{PORTKEY_PACKAGE} {version}, node {node_version}",
        headers=portkey_routing_headers(upstream.url.removesuffix("/chat/completions")),
    )
