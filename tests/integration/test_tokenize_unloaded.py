"""Counting tokens of a model that is not loaded: a vocabulary-only GGUF, never a load.

In process: `Vocabulary` counts exactly as `LlamaEngine` does, and `VocabularyCache` keeps at
most `size` open, frees each once, and never frees one a request still holds. Through a real
neuron: `/tokenize` with `source` and no loaded model counts what the loaded model counts
(`prompt` and `messages`, with and without tools) and loads nothing. Through a real cortex:
Anthropic `count_tokens` of a catalogue model that is not loaded answers the loaded model's
count and leaves the fleet empty, and a resident replica is counted on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anthropic
import httpx
import pytest

from neuron.engine.llama import LlamaEngine, LlamaSettings
from neuron.engine.vocab import Vocabulary, VocabularyCache
from neuron.errors import InvalidModelFile
from tests.conftest import CortexProcess

pytestmark = pytest.mark.slow  # real llama.cpp, real neurons

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What's the weather in Paris? Answer in one word."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
# A template that drops the roles: a replica loaded with it counts fewer tokens than the GGUF's.
BARE_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


# -- in process --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [SMOL, GEMMA])
async def test_a_vocabulary_tokenizes_as_the_loaded_model(
    name: str, smollm_path: Path, gemma_path: Path
) -> None:
    path = smollm_path if name == SMOL else gemma_path
    engine = LlamaEngine(name, LlamaSettings(str(path), n_ctx=256, parallel=1))
    await engine.start()
    vocabulary = await Vocabulary.open(path)
    try:
        assert vocabulary.info is not None and engine.info is not None
        for field in ("chat_template", "bos_token", "eos_token", "n_vocab"):
            assert getattr(vocabulary.info, field) == getattr(engine.info, field), field
        for text in ("Hello, world!", "<|im_start|>user\nHi<|im_end|>", "ü 日本 🙂", ""):
            for add_special in (True, False):
                assert await vocabulary.tokenize(
                    text, add_special=add_special
                ) == await engine.tokenize(text, add_special=add_special)
    finally:
        await vocabulary.close()
        await engine.close()


async def test_many_tasks_share_one_vocabulary(smollm_path: Path) -> None:
    vocabulary = await Vocabulary.open(smollm_path)
    texts = [f"count me {i} " * (i + 1) for i in range(32)]
    counts = await asyncio.gather(*(vocabulary.tokenize(text) for text in texts))
    assert counts == [await vocabulary.tokenize(text) for text in texts]
    await vocabulary.close()
    await vocabulary.close()  # once only
    with pytest.raises(Exception, match="closed"):
        await vocabulary.tokenize("x")


async def test_what_is_not_a_gguf_is_an_invalid_model_file(
    tmp_path: Path, smollm_path: Path
) -> None:
    (tmp_path / "notes.gguf").write_text("this is not a model\n")
    (tmp_path / "half.gguf").write_bytes(smollm_path.read_bytes()[:100_000])
    for name in ("notes.gguf", "half.gguf"):
        with pytest.raises(InvalidModelFile):
            await Vocabulary.open(tmp_path / name)


async def test_the_cache_keeps_the_most_recent_and_frees_each_once(
    smollm_path: Path, gemma_path: Path
) -> None:
    cache = VocabularyCache(size=1)
    resolved: list[str] = []

    def resolve(source: str) -> Path:
        resolved.append(source)
        return smollm_path if source == "smol" else gemma_path

    async with cache.using("smol", resolve) as first:
        pass
    async with cache.using("smol", resolve) as again:
        assert again is first and resolved == ["smol"]  # neither resolved nor opened twice
    # Opening gemma evicts smol, which is held: it stays usable until its holder lets go.
    async with cache.using("smol", resolve) as held, cache.using("gemma", resolve) as gemma:
        assert len(cache) == 1 and held.retired and not gemma.retired
        assert await held.tokenize("still usable") != []
    with pytest.raises(Exception, match="closed"):
        await held.tokenize("freed by its last holder")
    assert await gemma.tokenize("cached") != [] and not gemma.retired
    concurrent = await asyncio.gather(*(_count_in(cache, "smol", resolve) for _ in range(8)))
    assert len({id(vocabulary) for vocabulary in concurrent}) == 1  # one open for eight
    assert len(cache) == 1 and not concurrent[0].retired and gemma.retired
    await cache.close()
    with pytest.raises(Exception, match="stopping"):
        async with cache.using("smol", resolve):
            pass


async def _count_in(cache: VocabularyCache, source: str, resolve) -> Vocabulary:
    async with cache.using(source, resolve) as vocabulary:
        assert await vocabulary.tokenize("the same words") != []
        return vocabulary


# -- a real neuron -----------------------------------------------------------------------------


TOKEN = "neuron-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _count(url: str, body: dict) -> int:
    response = httpx.post(url + "/tokenize", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["count"]


def test_a_neuron_counts_from_a_source_without_loading_it(start_neuron, tmp_path: Path) -> None:
    (tmp_path / "notes.gguf").write_text("this is not a model\n")
    # Inference needs no token on this neuron; counting from a source (which opens any file
    # the neuron can resolve, as /models/plan does) still does.
    node = start_neuron(
        f'model_dirs = ["{tmp_path}"]\n[auth]\ntoken = "{TOKEN}"\ninference = false\n'
    )
    bodies = {
        "prompt": {"prompt": "The quick brown fox jumps over the lazy dog."},
        "messages": {"messages": MESSAGES},
        "tools": {"messages": MESSAGES, "tools": TOOLS},
    }
    cold = {
        (model, form): _count(node.url, {"model": model, "source": source, **body})
        for model, source in (("smol", SMOL), ("gemma", GEMMA))
        for form, body in bodies.items()
    }
    assert httpx.get(node.url + "/models").json() == []  # nothing loaded, nothing loading
    anonymous = httpx.post(
        node.url + "/tokenize", json={"model": "smol", "source": SMOL, "prompt": "x"}
    )
    assert anonymous.status_code == 401
    assert cold["smol", "prompt"] > 5 and cold["smol", "messages"] < cold["smol", "tools"]

    # Without a source, a model that is not resident is still the 404 it was.
    missing = httpx.post(node.url + "/tokenize", json={"model": "smol", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    for source, status, code in (
        ("no-such-model", 404, "source_not_found"),
        ("notes", 422, "invalid_model_file"),
        (7, 400, "invalid_request"),
    ):
        body = {"model": "x", "source": source, "prompt": "hi"}
        refused = httpx.post(node.url + "/tokenize", json=body, headers=AUTH, timeout=30)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
    bad = {"model": "smol", "source": SMOL, "messages": [{"role": "robot", "content": "x"}]}
    assert httpx.post(node.url + "/tokenize", json=bad, headers=AUTH).status_code == 400

    for model, source in (("smol", SMOL), ("gemma", GEMMA)):
        load = {"model": model, "source": source, "n_ctx": 512}
        assert httpx.post(
            node.url + "/models/load", json=load, headers=AUTH, timeout=120
        ).is_success
    for (model, form), count in cold.items():
        assert _count(node.url, {"model": model, **bodies[form]}) == count, (model, form)
        # A ready model counts on its engine even when a source is sent.
        assert _count(node.url, {"model": model, "source": SMOL, **bodies[form]}) == count
    assert node.proc.poll() is None and "Traceback" not in node.log()


# -- a real cortex -----------------------------------------------------------------------------

MODELS = f"""
[[models]]
id = "smol"
source = "{SMOL}"
n_ctx = 1024

[[models]]
id = "bare"
source = "{SMOL}"
n_ctx = 512
"""


def _no_model_anywhere(cortex: CortexProcess, neuron) -> None:
    fleet = cortex.fleet()
    assert [slot for node in fleet["nodes"] for slot in node["models"]] == []
    assert fleet["loading"] == []
    assert not [e for e in fleet["events"] if e["kind"] == "load_started"], fleet["events"]
    assert httpx.get(neuron.url + "/models").json() == []


def test_count_tokens_loads_nothing_and_a_resident_replica_is_counted_on(
    start_neuron, tmp_path: Path
) -> None:
    neuron = start_neuron()
    cortex = CortexProcess(
        tmp_path, {"n1": neuron}, MODELS, gateway_toml='api_keys = ["sk-test"]\n'
    )
    try:
        cortex.wait_ready()
        client = anthropic.Anthropic(base_url=cortex.url, api_key="sk-test", max_retries=0)
        asked = {"messages": [{"role": "user", "content": "Hi there, how are you?"}]}
        cold = client.messages.count_tokens(model="smol", system="You are terse.", **asked)
        bare_cold = client.messages.count_tokens(model="bare", **asked)
        time.sleep(1.5)  # three poll intervals: a load, had one started, would be listed
        _no_model_anywhere(cortex, neuron)
        assert cold.input_tokens > 5 and bare_cold.input_tokens > 5

        # The vocabulary's count is the loaded model's.
        created = client.messages.create(
            model="smol", system="You are terse.", max_tokens=1, **asked
        )
        usage = created.usage
        assert cold.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
        assert (
            client.messages.count_tokens(
                model="smol", system="You are terse.", **asked
            ).input_tokens
            == cold.input_tokens
        )

        # A replica loaded on the neuron with its own template is what cortex counts on.
        load = {"model": "bare", "source": SMOL, "n_ctx": 512, "chat_template": BARE_TEMPLATE}
        assert httpx.post(neuron.url + "/models/load", json=load, timeout=120).is_success
        deadline = time.monotonic() + 10
        while not any(
            slot["model_id"] == "bare" and slot["state"] == "ready"
            for node in cortex.fleet()["nodes"]
            for slot in node["models"]
        ):
            assert time.monotonic() < deadline, "cortex never saw the replica"
            time.sleep(0.1)
        warm = client.messages.count_tokens(model="bare", **asked)
        assert warm.input_tokens < bare_cold.input_tokens
        assert warm.input_tokens == _count(neuron.url, {"model": "bare", **asked})
    finally:
        cortex.stop()


def test_count_tokens_without_a_neuron_up_is_503(start_neuron, tmp_path: Path) -> None:
    neuron = start_neuron()
    cortex = CortexProcess(tmp_path, {"n1": neuron}, MODELS)
    try:
        cortex.wait_ready()
        neuron.stop()
        deadline = time.monotonic() + 10
        while httpx.get(cortex.url + "/health").json()["nodes_up"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}]}
        response = httpx.post(cortex.url + "/v1/messages/count_tokens", json=body, timeout=30)
        assert response.status_code == 503, response.text
        assert response.headers.get("retry-after") and response.json()["type"] == "error"
        unknown = httpx.post(
            cortex.url + "/v1/messages/count_tokens", json={**body, "model": "nope"}, timeout=30
        )
        assert unknown.status_code == 404
    finally:
        cortex.stop()
