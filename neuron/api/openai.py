"""OpenAI-compatible inference routes: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models.

Handlers parse (api.schema), hold an admission slot (manager.serving), run the generation on the
model's engine thread, and render. Streams are relayed chunk by chunk as llama.cpp produces them;
a client that goes away cancels its handler, which cancels the engine job at the next token.
"""

from __future__ import annotations

import asyncio
import base64
import json as json_module
import struct
import time
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from neuron.api.schema import (
    GenerationRequest,
    chat_request,
    completion_request,
    embedding_request,
    model_name,
    require_object,
)
from neuron.api.sse import DONE, SSE_HEADERS, sse_data
from neuron.engine import Usage
from neuron.engine.grammar import schema_grammar
from neuron.errors import ContextLengthExceeded, InvalidRequest, ModelUnavailable, NeuronError
from neuron.manager import ModelManager, ModelState, Resident
from neuron.tools import chat_prompt, choose_tool, plain_messages

bp = Blueprint("openai", url_prefix="/v1")


def _manager(request: Request) -> ModelManager:
    return request.app.ctx.manager


@bp.get("/models")
async def list_models(request: Request) -> HTTPResponse:
    data = [
        {
            "id": resident.spec.id,
            "object": "model",
            "created": int(resident.loaded_at or 0),
            "owned_by": "neuron",
            "state": resident.state.value,
            "capabilities": list(resident.capabilities),
        }
        for resident in _manager(request).models.values()
        if resident.state is ModelState.READY
    ]
    return json({"object": "list", "data": data})


@bp.post("/chat/completions")
async def chat_completions(request: Request) -> HTTPResponse | None:
    req = chat_request(request.json)
    request.ctx.model = req.model
    _check_schemas(req)
    capability = "tools" if req.tools and req.tool_choice != "none" else "chat"
    async with _manager(request).serving(req.model, capability) as resident:
        return await _generate(request, resident, req, _chat_work(req))


@bp.post("/completions")
async def completions(request: Request) -> HTTPResponse | None:
    req = completion_request(request.json)
    request.ctx.model = req.model
    async with _manager(request).serving(req.model, "completion") as resident:
        return await _generate(request, resident, req, _completion_work(req))


@bp.post("/embeddings")
async def embeddings(request: Request) -> HTTPResponse:
    req = embedding_request(request.json)
    request.ctx.model = req.model
    async with _manager(request).serving(req.model, "embedding") as resident:
        assert resident.engine is not None

        def work(llama: Any, _job: Any) -> dict[str, Any]:
            n_ctx = llama.n_ctx()
            for index, text in enumerate(req.inputs):
                if len(llama.tokenize(text.encode(), add_bos=True, special=True)) > n_ctx:
                    raise ContextLengthExceeded(
                        f"input[{index}] is longer than the model's context of {n_ctx} tokens",
                        param="input",
                    )
            return llama.create_embedding(input=req.inputs, model=req.model)

        result = await resident.engine.call(work)
    if req.encoding_format == "base64":
        for item in result["data"]:
            vector = item["embedding"]
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return json(result)


tokenize_bp = Blueprint("tokenize")


@tokenize_bp.post("/tokenize")
async def tokenize(request: Request) -> HTTPResponse:
    """Count tokens with the model's own tokenizer: `prompt` as is, or `messages` (and `tools`)
    as the model's chat template lays them out. Runs beside generation: only the read-only
    vocabulary is used, on a worker thread."""
    body = require_object(request.json)
    model = model_name(body)
    resident = _manager(request).ready(model)
    llama = resident.engine.llama if resident.engine else None
    if llama is None:
        raise ModelUnavailable(f"model {model!r} is not ready", retry_after=5)
    if isinstance(body.get("prompt"), str):
        prompt = body["prompt"]
        count = await asyncio.to_thread(
            lambda: len(llama.tokenize(prompt.encode(), add_bos=True, special=True))
        )
        return json({"model": model, "count": count})
    req = chat_request({**body, "model": model})
    tools = req.tools or []
    count = await asyncio.to_thread(_chat_prompt_tokens, llama, plain_messages(req.messages), tools)
    return json({"model": model, "count": count})


def _check_schemas(req: GenerationRequest) -> None:
    """Refuse (400) every JSON schema that would make a grammar llama.cpp cannot use."""
    if req.tools and req.tool_choice != "none":
        for index, tool in enumerate(req.tools):
            schema_grammar(
                tool["function"].get("parameters") or {},
                param=f"tools[{index}].function.parameters",
            )
    response_format = req.sampling.get("response_format") or {}
    if "schema" in response_format:
        schema_grammar(response_format["schema"], param="response_format")


# -- work run on the engine thread ---------------------------------------------------------------


def _check_context(llama: Any, prompt_tokens: int) -> None:
    if prompt_tokens >= llama.n_ctx():
        raise ContextLengthExceeded(
            f"the prompt is {prompt_tokens} tokens; this model's context is {llama.n_ctx()}",
            param="messages",
        )


def _chat_prompt_tokens(
    llama: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> int:
    """Token count of the prompt the model's own chat template makes of `messages`.

    Tool definitions are counted as their JSON text, which is how templates present them.
    """
    if not llama.metadata.get("tokenizer.chat_template"):
        text = "\n".join(str(m.get("content") or "") for m in messages)
        return len(llama.tokenize(text.encode(), add_bos=True, special=True))
    prompt = chat_prompt(llama, messages)
    if tools:
        prompt += json_module.dumps(tools)
    return len(llama.tokenize(prompt.encode(), add_bos=False, special=True))


def _fresh_context_for_seed(llama: Any, req: GenerationRequest) -> None:
    """A seeded request must not depend on what ran before it.

    llama-cpp-python reuses the KV cache of a shared prompt prefix; evaluating a prompt in
    different batch shapes changes logits in the last bits, enough to change what a seeded
    sampler picks. Forgetting the cache makes the same seed give the same text.
    """
    if "seed" in req.sampling:
        llama.reset()


def _chat_work(req: GenerationRequest) -> Any:
    def work(llama: Any, _job: Any) -> Any:
        import jinja2

        messages = plain_messages(req.messages)
        _fresh_context_for_seed(llama, req)
        try:
            if req.tools is not None and req.tool_choice != "none":
                tool_call = _tool_call(llama, req)
                if tool_call is not None:
                    return tool_call
            _check_context(llama, _chat_prompt_tokens(llama, messages))
            return llama.create_chat_completion(
                messages=messages, stream=req.stream, model=req.model, **req.sampling
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template refused the messages: {exc}") from exc
        except ValueError as exc:
            # llama-cpp-python reports caller errors (context overflow, bad grammar) as ValueError
            raise InvalidRequest(str(exc)) from exc

    return work


def _tool_call(llama: Any, req: GenerationRequest) -> Any:
    """A forced tool call through llama-cpp-python's ChatML tool handler, or None when the
    model (asked with tool_choice "auto") prefers to answer in words."""
    from llama_cpp.llama_chat_format import chatml_function_calling

    choice = req.tool_choice
    if choice == "auto":
        name = choose_tool(llama, req.messages, req.tools or [])
        if name is None:
            return None
        choice = {"type": "function", "function": {"name": name}}
    return chatml_function_calling(
        llama=llama,
        messages=req.messages,
        tools=req.tools,
        tool_choice=choice,
        stream=req.stream,
        model=req.model,
        **req.sampling,
    )


def _completion_work(req: GenerationRequest) -> Any:
    def work(llama: Any, _job: Any) -> Any:
        tokens = llama.tokenize(req.prompt.encode(), add_bos=True, special=True)
        if len(tokens) >= llama.n_ctx():
            raise ContextLengthExceeded(
                f"the prompt is {len(tokens)} tokens; this model's context is {llama.n_ctx()}",
                param="prompt",
            )
        _fresh_context_for_seed(llama, req)
        try:
            return llama.create_completion(
                prompt=req.prompt, stream=req.stream, model=req.model, **req.sampling
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc

    return work


# -- rendering -----------------------------------------------------------------------------------


def _naming_stop_sequences(work: Any, stops: list[str] | None) -> Any:
    """Wrap `work` so that a choice that stopped on one of `stops` says which (`stop_reason`,
    as vLLM does): OpenAI's `finish_reason: "stop"` alone cannot tell a stop sequence from the
    model's end of turn, and Anthropic clients need `stop_sequence`. Runs on the engine thread.
    """
    if not stops:
        return work

    def name_it(payload: Any, llama: Any, usage: Usage) -> Any:
        for choice in payload.get("choices") or []:
            if choice.get("finish_reason") == "stop" and not usage.ended_on_eog:
                text = llama.detokenize(usage.generated).decode("utf-8", errors="ignore")
                found = [(text.find(stop), stop) for stop in stops if stop in text]
                if found:
                    choice["stop_reason"] = min(found)[1]
        return payload

    def named(llama: Any, job: Any) -> Any:
        result = work(llama, job)
        if isinstance(result, dict):
            return name_it(result, llama, job.usage)
        return (name_it(chunk, llama, job.usage) for chunk in result)

    return named


async def _generate(
    request: Request, resident: Resident, req: GenerationRequest, work: Any
) -> HTTPResponse | None:
    work = _naming_stop_sequences(work, req.sampling.get("stop"))
    engine = resident.engine
    assert engine is not None
    if not req.stream:
        result, usage = await engine.call_metered(work)
        _record(request, resident, usage)
        return json(result)

    stream = engine.stream(work)
    # Errors raised before the first chunk (bad input, context overflow) still get a proper
    # status code; only failures after the headers went out become in-stream error events.
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
    assert response is not None
    usage: Usage | None = None
    last_chunk: dict[str, Any] | None = None
    try:
        if first is not None:
            last_chunk, usage = first
            await response.send(sse_data(last_chunk))
        async for chunk, live_usage in stream:
            last_chunk, usage = chunk, live_usage
            await response.send(sse_data(chunk))
    except NeuronError as exc:
        await response.send(sse_data(exc.body()))
    except Exception as exc:
        await response.send(
            sse_data(
                {
                    "error": {
                        "message": str(exc),
                        "type": "server_error",
                        "code": "engine_failure",
                        "param": None,
                    }
                }
            )
        )
    finally:
        await stream.aclose()
    if usage is not None:
        _record(request, resident, usage)
        if req.include_usage and last_chunk is not None:
            await response.send(
                sse_data(
                    {
                        "id": last_chunk.get("id"),
                        "object": last_chunk.get("object"),
                        "created": last_chunk.get("created", int(time.time())),
                        "model": req.model,
                        "choices": [],
                        "usage": usage.as_openai(),
                    }
                )
            )
    await response.send(DONE)
    await response.eof()
    return None


def _record(request: Request, resident: Resident, usage: Usage) -> None:
    metrics = request.app.ctx.metrics
    metrics.prompt_tokens.labels(resident.spec.id).inc(usage.prompt_tokens)
    metrics.completion_tokens.labels(resident.spec.id).inc(usage.completion_tokens)
    rate = usage.decode_tok_s
    if rate is not None:
        previous = resident.tok_s_decode
        resident.tok_s_decode = rate if previous is None else 0.7 * previous + 0.3 * rate
