"""The Responses dialect through a real cortex and a real neuron, driven by the openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import CortexProcess
from tests.unit.test_responses_stream import assert_grammar

pytestmark = pytest.mark.slow  # real neurons, real models

SMOL = "smollm2-135m-instruct"
MODELS = f"""
[[models]]
id = "smol"
source = "{SMOL}"
n_ctx = 2048

[[models]]
id = "smol-cold"
source = "{SMOL}"
n_ctx = 1024
"""
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def cortex(start_module_neuron, tmp_path_factory: pytest.TempPathFactory):
    neuron = start_module_neuron("[admission]\nmax_queue_depth = 16\n")
    gateway = CortexProcess(
        tmp_path_factory.mktemp("cortex"),
        {"n1": neuron},
        MODELS,
        gateway_toml='api_keys = ["sk-test"]\n',
    )
    gateway.wait_ready()
    yield gateway
    gateway.stop()


@pytest.fixture
def client(cortex) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=cortex.url + "/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def parse_events(raw: str) -> tuple[list[tuple[str, dict]], int]:
    """(event type, data) pairs of an SSE body, and how many keep-alive comments it had."""
    events, comments = [], 0
    for block in raw.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        if all(line.startswith(":") for line in lines):
            comments += 1
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events, comments


def test_create_text(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="smol",
        instructions="You are terse.",
        input="Say hello.",
        max_output_tokens=24,
        store=False,
        prompt_cache_key="conversation-1",
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete") and response.model == "smol"
    assert response.output_text and response.output[0].type == "message"
    assert response.usage.input_tokens > 5 and 0 < response.usage.output_tokens <= 24
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_stream_text_deltas_and_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="smol", input="Name a colour.", max_output_tokens=200, temperature=0
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas and final.output_text == "".join(deltas)
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    question = {"role": "user", "content": "What's the weather in Paris?"}
    first = client.responses.create(
        model="smol",
        input=[question],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    output = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}
    second = client.responses.create(
        model="smol",
        input=[question, calls[0].model_dump(exclude_none=True), output],
        tools=[WEATHER],
        max_output_tokens=32,
    )
    assert second.status in ("completed", "incomplete") and second.output


def test_streamed_function_call(cortex) -> None:
    body = {
        "model": "smol",
        "stream": True,
        "input": "Weather in Rome?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_output_tokens": 64,
        # Greedy: a sampled call could run past 64 tokens and end incomplete, with no call.
        "temperature": 0,
    }
    response = httpx.post(
        cortex.url + "/v1/responses", json=body, headers={"x-api-key": "sk-test"}, timeout=60
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_events(response.text)
    final = assert_grammar(events)
    call = next(item for item in final["output"] if item["type"] == "function_call")
    assert "city" in json.loads(call["arguments"])
    done = next(data for name, data in events if name == "response.function_call_arguments.done")
    assert done["arguments"] == call["arguments"]


def test_json_schema_output_parses(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="smol",
        input="Give a colour and a number as JSON.",
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}},
        max_output_tokens=64,
        temperature=0,  # a sampled answer may run past 64 tokens inside a string
    )
    assert response.status == "completed", response.output_text
    value = json.loads(response.output_text)
    assert isinstance(value["colour"], str) and isinstance(value["count"], int)


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI, cortex) -> None:
    # Greedy: a sampled answer may end (EOS) within three tokens, and then it is complete.
    response = client.responses.create(
        model="smol", input="Count to fifty.", max_output_tokens=3, temperature=0
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    body = {
        "model": "smol",
        "input": "Count to fifty.",
        "max_output_tokens": 3,
        "temperature": 0,
        "stream": True,
    }
    raw = httpx.post(
        cortex.url + "/v1/responses", json=body, headers={"x-api-key": "sk-test"}, timeout=60
    ).text
    events, _ = parse_events(raw)
    assert assert_grammar(events)["status"] == "incomplete"
    assert events[-1][0] == "response.incomplete"


def test_stream_starts_before_a_cold_load_ends(cortex) -> None:
    body = {"model": "smol-cold", "input": "Hi", "max_output_tokens": 4, "stream": True}
    with httpx.stream(
        "POST",
        cortex.url + "/v1/responses",
        json=body,
        headers={"x-api-key": "sk-test"},
        timeout=120,
    ) as response:
        raw = response.read().decode()
    events, comments = parse_events(raw)
    assert raw.startswith("event: response.created\n")
    assert comments >= 1  # keep-alives while the model loaded (interval 0.2 s in the fixture)
    assert_grammar(events)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        ({"input": []}, "input"),
    ],
)
def test_refusals_are_openai_errors(client: openai.OpenAI, fields: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="smol", **{"input": "Hi", **fields})
    error = caught.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_model_is_a_404_before_any_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi", stream=True)


def access_lines(cortex: CortexProcess, marker: str, since: int = 0) -> list[str]:
    log = cortex.log_path.read_text(errors="replace")[since:]
    return [line for line in log.splitlines() if "cortex.access:" in line and marker in line]


def test_one_access_line_per_request_without_prompts_or_keys(
    client: openai.OpenAI, cortex: CortexProcess
) -> None:
    secret = "zebra-quartz-4417"  # in the prompt, the instructions and the cache key
    since = len(cortex.log_path.read_text(errors="replace"))
    answered = client.responses.create(
        model="smol",
        instructions=f"Mention {secret}.",
        input=f"Say {secret}.",
        max_output_tokens=4,
        prompt_cache_key=secret,
        user=secret,
    )
    httpx.get(cortex.url + "/v1/models/smol", headers={"x-api-key": "sk-test"})
    with httpx.stream(  # a client that goes away mid-stream
        "POST",
        cortex.url + "/v1/responses",
        json={"model": "smol", "input": f"Count {secret}.", "stream": True},
        headers={"x-api-key": "sk-test"},
        timeout=60,
    ) as response:
        next(response.iter_bytes())
    deadline = time.monotonic() + 10
    while not access_lines(cortex, "client_gone=yes", since) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = cortex.log_path.read_text(errors="replace")
    assert secret not in log and "sk-test" not in log
    first, gone = access_lines(cortex, "POST /v1/responses", since)
    assert "model=smol node=n1 status=200 duration_ms=" in first
    # what the response said it used (sampled: the model may end before max_output_tokens)
    assert answered.usage is not None and answered.usage.output_tokens > 0
    assert f"tokens_out={answered.usage.output_tokens} client_gone=no" in first
    assert f"tokens_in={answered.usage.input_tokens} " in first
    assert "POST /v1/responses model=smol node=" in gone and gone.endswith("client_gone=yes")
    [listed] = access_lines(cortex, "GET /v1/models/<model_id:path>", since)
    assert "model=- node=- status=200" in listed
