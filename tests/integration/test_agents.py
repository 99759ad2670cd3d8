"""The real coding agents against a real gateway: Claude Code, Codex CLI and opencode.

The agents are the npm packages pinned in tests/agents (the test command installs them with
`npm install --prefix tests/agents`). Each runs one non-interactive prompt (`claude -p`, `codex
exec`, `opencode run`) against a gateway and one neuron serving SmolLM2, through
`RecordingProxy`, and must exit 0 with an answer. Every request it sent is then checked: a 2xx
(a stream ending with its dialect's last event), or an error in its dialect's envelope; and the
gateway's access log has a line for each.

The agents run as a user would configure them for a CPU box: each with a short system prompt and
few tools (their stock prompts are 7-12k tokens, minutes of prompt reading on two cores; the
stock Claude Code traffic is replayed in test_claude_code.py), and the catalogue entry sets
`temperature = 0` and `max_output_tokens`, so that a 135M model's answer is short and the same
on every run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, CortexProcess
from tests.integration.recording_proxy import Recorded, RecordingProxy

pytestmark = pytest.mark.slow

AGENTS = ROOT / "tests" / "agents" / "node_modules" / ".bin"
API_KEY = "sk-agents"
# Greedy SmolLM2 answers these in a few tokens (a prompt it loops on instead ends at
# max_output_tokens, which Claude Code retries and Codex reports as an error).
PROMPT = "Reply with one word: hello"
SYSTEM = "You are a terse assistant. Answer in one short sentence."
CODEX_PROMPT, CODEX_SYSTEM = "Say hello.", "You are a terse assistant."
MODELS = """
[[models]]
id = "smol"
source = "smollm2-135m-instruct"
n_ctx = 8192
max_output_tokens = 256
temperature = 0

[aliases]
"claude-*" = "smol"
"""
AGENT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def gateway(
    start_module_neuron, tmp_path_factory
) -> Iterator[tuple[CortexProcess, RecordingProxy]]:
    neuron = start_module_neuron("[engine]\nparallel = 2\n")
    cortex = CortexProcess(
        tmp_path_factory.mktemp("agents"),
        {"n1": neuron},
        MODELS,
        gateway_toml=f'api_keys = ["{API_KEY}"]\n',
    )
    proxy = RecordingProxy(cortex.url)
    try:
        cortex.wait_ready()
        yield cortex, proxy
    finally:
        proxy.close()
        cortex.stop()


def agent(name: str) -> Path:
    path = AGENTS / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed: run `npm install --prefix tests/agents` "
            "(the README's test command does)"
        )
    return path


def run_agent(
    command: list[str], home: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an agent with a fresh HOME (no user settings, sessions or credentials leak in)."""
    home.mkdir(parents=True, exist_ok=True)
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "TERM": "dumb", "NO_COLOR": "1"}
    return subprocess.run(
        command,
        env={**base, **env},
        cwd=cwd or home,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def new_records(proxy: RecordingProxy, since: int) -> list[Recorded]:
    return proxy.records[since:]


_ENDINGS = {
    "/v1/messages": ("event: message_stop",),
    "/v1/responses": ("event: response.completed", "event: response.incomplete"),
    "/v1/chat/completions": ("data: [DONE]",),
}


def assert_well_answered(records: list[Recorded], route: str, cortex: CortexProcess) -> None:
    """Every request got a 2xx or an error in its dialect's envelope; streams that the client
    read to the end ended with their dialect's last event; the access log saw each one."""
    inference = [r for r in records if r.method == "POST" and r.path.split("?")[0] == route]
    assert inference, [(r.method, r.path) for r in records]
    for record in records:
        if 200 <= record.status < 300:
            if "event-stream" in record.content_type and record.stream_tail != "(client went away)":
                path = record.path.split("?")[0]
                ended = any(end in record.stream_tail for end in _ENDINGS[path])
                assert ended, (record.path, record.stream_tail)
            continue
        body = record.error_body
        assert 400 <= record.status < 600 and isinstance(body, dict), (record.status, body)
        if route == "/v1/messages":
            assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"]
        else:
            assert body["error"]["message"] and body["error"]["type"]
    logged = re.findall(rf"cortex\.access: POST {re.escape(route)} ", cortex.log_path.read_text())
    assert len(logged) >= len(inference)


def test_claude_code_answers_a_one_shot_prompt(gateway, tmp_path: Path) -> None:
    cortex, proxy = gateway
    since = len(proxy.records)
    done = run_agent(
        [
            str(agent("claude")),
            *("-p", PROMPT, "--bare", "--output-format", "json"),
            *("--tools", "Bash", "--system-prompt", SYSTEM, "--model", "claude-sonnet-4-5"),
        ],
        tmp_path / "home",
        {
            "ANTHROPIC_BASE_URL": proxy.url,
            "ANTHROPIC_API_KEY": API_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
        },
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-2000:])
    result = json.loads(done.stdout)
    assert result["is_error"] is False and result["result"].strip(), result
    records = new_records(proxy, since)
    assert_well_answered(records, "/v1/messages", cortex)
    first = next(r for r in records if r.path.startswith("/v1/messages"))
    assert first.headers.get("x-api-key") == API_KEY and first.model == "claude-sonnet-4-5"
    assert first.body["stream"] is True and first.body["tools"][0]["name"] == "Bash"


def test_codex_exec_answers_a_one_shot_prompt(gateway, tmp_path: Path) -> None:
    cortex, proxy = gateway
    since = len(proxy.records)
    home = tmp_path / "home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    instructions = home / "instructions.md"
    instructions.write_text(CODEX_SYSTEM + "\n")
    (codex_home / "config.toml").write_text(
        f"""model = "smol"
model_provider = "cortex"
model_instructions_file = "{instructions}"

[features]
multi_agent = false

[model_providers.cortex]
name = "cortex"
base_url = "{proxy.url}/v1"
env_key = "CORTEX_API_KEY"
wire_api = "responses"
"""
    )
    done = run_agent(
        [str(agent("codex")), "exec", "--skip-git-repo-check", CODEX_PROMPT],
        home,
        {"CODEX_HOME": str(codex_home), "CORTEX_API_KEY": API_KEY},
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-2000:])
    assert done.stdout.strip()
    records = new_records(proxy, since)
    assert_well_answered(records, "/v1/responses", cortex)
    first = next(r for r in records if r.path == "/v1/responses")
    assert first.headers.get("authorization") == f"Bearer {API_KEY}"
    assert first.body["stream"] is True and first.body["prompt_cache_key"]
    kinds = {tool["type"] for tool in first.body["tools"]}
    assert "function" in kinds and "web_search" in kinds  # a hosted tool: not offered, not refused


def test_opencode_run_answers_a_one_shot_prompt(gateway, tmp_path: Path) -> None:
    cortex, proxy = gateway
    since = len(proxy.records)
    work = tmp_path / "work"
    work.mkdir()
    config: dict[str, Any] = {
        "provider": {
            "cortex": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "cortex",
                "options": {"baseURL": proxy.url + "/v1", "apiKey": API_KEY},
                "models": {"smol": {"name": "smol"}},
            }
        },
        "model": "cortex/smol",
        "agent": {
            "brief": {"mode": "primary", "prompt": SYSTEM, "tools": {"*": False, "bash": True}}
        },
    }
    (work / "opencode.json").write_text(json.dumps(config))
    done = run_agent(
        [str(agent("opencode")), "run", "--agent", "brief", PROMPT], tmp_path / "home", {}, work
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-2000:])
    assert done.stdout.strip()
    records = new_records(proxy, since)
    assert_well_answered(records, "/v1/chat/completions", cortex)
    with_tools = [r for r in records if isinstance(r.body, dict) and r.body.get("tools")]
    assert with_tools and with_tools[0].body["tools"][0]["function"]["name"] == "bash"
