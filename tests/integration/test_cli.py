"""The `cortex` client commands as a user runs them: a subprocess against a real gateway.

One real neuron (a fake 8 GiB GPU, no headroom) behind one real cortex is shared by the module;
each test starts from an empty, uncordoned fleet. The catalogue serves the SmolLM2 GGUF under two
ids, one of them with `/` and `:` as hub-style ids have, and carries operator comments that pin
and unpin must leave as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, CortexProcess, NeuronProcess, free_port

pytestmark = pytest.mark.slow  # real neurons, real models

SMOL = "smollm2-135m-instruct"
SLASHED = "org/smol-b:Q4"
MODELS_TOML = f"""\
# Operator notes: SmolLM2 under two ids.
# Keep this header; pins are added and removed by `cortex pin`.

[[models]]
id = "smol-a"   # the chat default
source = "{SMOL}"
n_ctx = 1024

# A hub-style id with a slash and a colon.
[[models]]
id = "{SLASHED}"
source = "{SMOL}"
n_ctx = 1024
"""
NEURON_TOML = "vram_headroom_mb = 0\n"
ADMIN_KEY = "s3cret-admin-key"


@pytest.fixture(scope="module")
def neuron(start_module_neuron) -> NeuronProcess:
    return start_module_neuron(NEURON_TOML, env={"NEURON_FAKE_GPUS": "0:8GiB"})


@pytest.fixture(scope="module")
def gateway(neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CortexProcess]:
    cortex = CortexProcess(tmp_path_factory.mktemp("cortex"), {"gpu1": neuron}, MODELS_TOML)
    cortex.wait_ready()
    yield cortex
    cortex.stop()


@pytest.fixture
def fleet(gateway: CortexProcess) -> CortexProcess:
    """Each test starts with nothing loaded, gpu1 uncordoned and no pins."""
    httpx.post(f"{gateway.url}/admin/nodes/gpu1/uncordon", timeout=10)
    for model in ("smol-a", SLASHED):
        httpx.post(f"{gateway.url}/admin/models/{model}/unpin", timeout=10)
    for node in gateway.fleet()["nodes"]:
        for slot in node["models"]:
            httpx.post(
                f"{gateway.url}/admin/models/{slot['model_id']}/unload",
                json={"node": node["name"]},
                timeout=30,
            )
    return gateway


def cortex(*args: str, url: str | None = None, env: dict[str, str] | None = None):
    """Run `cortex ARGS` as a user would; the environment carries no CORTEX_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    # a wide terminal, so that assertions about table rows do not depend on wrapping
    base["COLUMNS"] = "200"
    argv = [sys.executable, "-m", "cortex.cli", *(["--url", url] if url else []), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, env={**base, **(env or {})}, cwd=ROOT, timeout=120
    )


def ok(*args: str, url: str) -> str:
    result = cortex(*args, url=url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def row(output: str, first_cell: str) -> str:
    """The table line whose first cell is `first_cell`."""
    lines = [line for line in output.splitlines() if line.strip("│┃ ").startswith(first_cell + " ")]
    assert len(lines) == 1, output
    return lines[0]


def test_status_shows_the_node(fleet: CortexProcess) -> None:
    out = ok("status", url=fleet.url)
    assert "1/1 nodes up" in out
    line = row(out, "gpu1")
    assert "up" in line and "cpu" in line and "Fake GPU 0" in line and "8,192" in line
    assert "Loading: nothing" in out
    assert "gpu1 is up" in out  # the event feed


def test_load_then_models_shows_it_on_the_node_with_vram(fleet: CortexProcess) -> None:
    assert ok("load", "smol-a", url=fleet.url).strip() == "loaded smol-a on gpu1"
    # the id with "/" and ":" travels in the URL path
    loaded = ok("load", SLASHED, "--node", "gpu1", url=fleet.url)
    assert loaded.strip() == f"loaded {SLASHED} on gpu1"
    out = ok("models", url=fleet.url)
    for model in ("smol-a", SLASHED):
        line = row(out, model)
        assert "gpu1 ready" in line
        vram = int(line.split("│")[4].strip().replace(",", ""))
        assert 100 < vram < 1000  # SmolLM2 at n_ctx 1024 plans about 213 MiB
    assert "1/1 nodes up, 2 models resident" in ok("status", url=fleet.url)


def test_the_fleet_carries_each_models_kv_pool_and_parked_ram(fleet: CortexProcess) -> None:
    """What `cortex top` shows in its KV and parked columns, from the neuron's /health."""
    ok("load", "smol-a", url=fleet.url)
    answer = httpx.post(
        f"{fleet.url}/v1/completions",
        json={"model": "smol-a", "prompt": "1, 2, 3,", "max_tokens": 4},
        timeout=60,
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 15  # the next poll of the node brings it
    while True:
        slots = [
            s for n in fleet.fleet()["nodes"] for s in n["models"] if s["model_id"] == "smol-a"
        ]
        if slots and slots[0]["kv_cells_used"]:
            break
        assert time.monotonic() < deadline, slots
        time.sleep(0.2)
    slot = slots[0]
    # n_ctx 1024 × the neuron's default 4 sequences; the finished request stays cached
    assert slot["kv_cells_total"] == 4096 and 0 < slot["kv_cells_used"] < 100
    assert slot["parked_mb"] == 0.0


def test_json_output_parses(fleet: CortexProcess) -> None:
    loaded = json.loads(ok("load", "smol-a", "--json", url=fleet.url))
    assert loaded == {"model": "smol-a", "node": "gpu1", "state": "ready"}
    status = json.loads(ok("--json", "status", url=fleet.url))  # option before the command
    assert [node["name"] for node in status["nodes"]] == ["gpu1"]
    assert [slot["model_id"] for slot in status["nodes"][0]["models"]] == ["smol-a"]
    rows = {row["id"]: row for row in json.loads(ok("models", "--json", url=fleet.url))}
    assert rows["smol-a"]["state"] == "ready" and rows["smol-a"]["vram_used_mb"] > 100
    assert rows["smol-a"]["where"][0]["node"] == "gpu1"
    assert rows["smol-a"]["idle_s"] is not None and rows["smol-a"]["idle_s"] < 60
    assert rows[SLASHED]["state"] == "not loaded" and rows[SLASHED]["where"] == []


def test_pin_and_unpin_keep_the_operators_models_toml(fleet: CortexProcess) -> None:
    original = fleet.models_path.read_text()
    ok("load", "smol-a", url=fleet.url)
    assert ok("pin", "smol-a", url=fleet.url).strip() == (
        "pinned smol-a on gpu1 (saved to models.toml)"
    )
    pinned = fleet.models_path.read_text()
    for line in original.splitlines():
        assert line in pinned.splitlines()  # comments, blank lines, the trailing comment
    block_a = pinned.split("[[models]]")[1]
    assert 'pinned_on = ["gpu1"]' in block_a
    assert "pinned_on" not in pinned.split("[[models]]")[2]
    assert "gpu1" in row(ok("models", url=fleet.url), "smol-a").split("│")[6]

    ok("pin", SLASHED, "--node", "gpu1", url=fleet.url)  # not loaded: named node
    assert 'pinned_on = ["gpu1"]' in fleet.models_path.read_text().split("[[models]]")[2]

    assert ok("unpin", "smol-a", url=fleet.url).strip() == "unpinned smol-a (saved to models.toml)"
    ok("unpin", SLASHED, url=fleet.url)
    assert fleet.models_path.read_text() == original
    assert row(ok("models", url=fleet.url), "smol-a").split("│")[6].strip() == ""


def test_pin_without_node_of_an_unloaded_model_says_why(fleet: CortexProcess) -> None:
    result = cortex("pin", SLASHED, url=fleet.url)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("cortex: name the node(s) to pin on")
    assert "(HTTP 400" in result.stderr


def test_cordon_and_uncordon_show_in_status(fleet: CortexProcess) -> None:
    assert ok("cordon", "gpu1", url=fleet.url).startswith("cordoned gpu1")
    assert "│ yes " in row(ok("status", url=fleet.url), "gpu1")
    assert ok("uncordon", "gpu1", url=fleet.url).startswith("uncordoned gpu1")
    assert "│ no " in row(ok("status", url=fleet.url), "gpu1")


def test_drain_and_undrain_are_kept_as_synonyms(fleet: CortexProcess) -> None:
    assert ok("drain", "gpu1", url=fleet.url).startswith("cordoned gpu1")
    assert "│ yes " in row(ok("status", url=fleet.url), "gpu1")
    assert ok("undrain", "gpu1", url=fleet.url).startswith("uncordoned gpu1")
    assert "│ no " in row(ok("status", url=fleet.url), "gpu1")


def test_unload(fleet: CortexProcess) -> None:
    ok("load", "smol-a", url=fleet.url)
    assert ok("unload", "smol-a", url=fleet.url).strip() == "unloaded smol-a from gpu1"
    line = row(ok("models", url=fleet.url), "smol-a")
    assert "not loaded" in line and "–" in line
    again = cortex("unload", "smol-a", "--node", "gpu1", url=fleet.url)
    assert again.returncode == 1
    assert again.stderr == "cortex: model 'smol-a' is not loaded on gpu1 (HTTP 404 Not Found)\n"


def test_gateway_error_is_one_line_with_the_status(fleet: CortexProcess) -> None:
    result = cortex("load", "no-such-model", url=fleet.url)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "no-such-model" in result.stderr and "(HTTP 404 Not Found)" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_gateway_is_one_line_without_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    for args in (["status"], ["models", "--json"], ["load", "smol-a"]):
        result = cortex(*args, url=url)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == f"cortex: cannot reach the gateway at {url} (connection refused)\n"
    # CORTEX_URL is honoured when --url is absent
    result = cortex("status", env={"CORTEX_URL": url})
    assert result.returncode == 1 and url in result.stderr


def test_admin_key_is_required_and_never_printed(neuron: NeuronProcess, tmp_path) -> None:
    gateway = CortexProcess(
        tmp_path, {"gpu1": neuron}, MODELS_TOML, gateway_toml=f'admin_keys = ["{ADMIN_KEY}"]\n'
    )
    try:
        gateway.wait_ready()
        refused = cortex("status", url=gateway.url)
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.startswith("cortex: a valid admin key is required (HTTP 401")
        wrong = cortex("models", "--key", "not-the-key", url=gateway.url)
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
        with_flag = cortex("status", "--key", ADMIN_KEY, url=gateway.url)
        assert with_flag.returncode == 0, with_flag.stderr
        assert "gpu1" in with_flag.stdout
        with_env = cortex("models", "--json", url=gateway.url, env={"CORTEX_ADMIN_KEY": ADMIN_KEY})
        assert with_env.returncode == 0, with_env.stderr
        assert {row["id"] for row in json.loads(with_env.stdout)} == {"smol-a", SLASHED}
        for result in (refused, wrong, with_flag, with_env):
            assert ADMIN_KEY not in result.stdout + result.stderr
    finally:
        gateway.stop()
