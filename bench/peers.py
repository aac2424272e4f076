"""Peer gateways measured side by side: the LiteLLM proxy, in its own venv under bench/.peers/.

Run as peers.md describes: no database (so no spend tracking), one worker, a generated master key,
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it does not fetch its price map at boot, routed to the same
fake upstream as everything else.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

from bench.process import Server, free_port
from bench.target import UPSTREAM_KEY, Target

PEERS = Path(__file__).resolve().parent / ".peers"
LITELLM_PIN = "1.106.2"
LITELLM_VENV = PEERS / "litellm-venv"
MARKER = LITELLM_VENV / ".bench-installed"

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
