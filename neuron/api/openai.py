"""OpenAI-compatible inference routes: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, and /tokenize.

Handlers parse (`api.schema`), hold an admission slot (`manager.serving`), turn the request
into the engine's terms (prompt from the model's chat template, sampler settings, grammar for
tools and `response_format`), and render what the engine yields (`api.render`). Streams are
relayed piece by piece; an error found before the first piece still gets its own status code,
one after the headers becomes an in-stream error event. A client that goes away cancels its
handler, which closes the engine stream and frees the sequence at the next decode step.
`/tokenize` counts on the engine of a ready model, or, for a model that is not loaded and a
body naming its `source`, on the GGUF's vocabulary alone (`engine.vocab`): it never loads one.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import struct
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from neuron.api.access import log_request
from neuron.api.auth import require_token
from neuron.api.render import ChatRenderer, CompletionRenderer
from neuron.api.schema import (
    GenerationRequest,
    chat_request,
    completion_request,
    embedding_request,
    model_name,
    require_object,
)
from neuron.api.sse import DONE, SSE_HEADERS, sse_data
from neuron.chat_template import render_chat
from neuron.config import NeuronConfig
from neuron.engine import (
    Engine,
    EngineInfo,
    Finished,
    GenerateRequest,
    Grammar,
    Piece,
    Tokenizer,
)
from neuron.engine.grammar import schema_grammar
from neuron.errors import (
    ContextLengthExceeded,
    EngineFailure,
    InvalidRequest,
    ModelUnavailable,
    NeuronError,
    SourceNotFound,
)
from neuron.manager import ModelManager, ModelState, Resident
from neuron.sources import resolve_source
from neuron.toolcall import ToolSyntax, detect_syntax, history_for_template, plan_tools
from synapse.contract import TokenCount, to_json

if TYPE_CHECKING:  # the cache's module imports llama_cpp; the app builds the cache at start
    from neuron.engine.vocab import VocabularyCache

bp = Blueprint("openai", url_prefix="/v1")


def _manager(request: Request) -> ModelManager:
    return request.app.ctx.manager


@bp.get("/models")
async def list_models(request: Request) -> HTTPResponse:
    data = [
        {
            "id": resident.spec.model,
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
    tools_active = bool(req.tools) and req.tool_choice != "none"
    grammar = _check_schemas(req, tools_active)
    async with _manager(request).serving(
        req.model, "tools" if tools_active else "chat"
    ) as resident:
        engine = _engine(resident)
        info = engine.info
        assert info is not None  # `_engine` refuses a model without one
        _refuse_oversized(_chat_chars(req), info, "messages")
        syntax = detect_syntax(info.chat_template)
        prompt, tool_grammar = _chat_prompt(info, req, tools_active, syntax)
        generation = _generation(req, prompt, tool_grammar or grammar, param="messages", info=info)
        renderer = ChatRenderer(
            req.model,
            tools=tools_active,
            logprobs=req.logprobs is not None,
            syntax=syntax if syntax.native else None,
        )
        return await _respond(request, resident, req, generation, renderer)


@bp.post("/completions")
async def completions(request: Request) -> HTTPResponse | None:
    req = completion_request(request.json)
    request.ctx.model = req.model
    grammar = _check_schemas(req, False)
    async with _manager(request).serving(req.model, "completion") as resident:
        _refuse_oversized(len(req.prompt), _engine(resident).info, "prompt")
        generation = _generation(req, req.prompt, grammar, param="prompt", info=None)
        renderer = CompletionRenderer(
            req.model, logprobs=req.logprobs is not None, echo=req.prompt if req.echo else ""
        )
        return await _respond(request, resident, req, generation, renderer)


@bp.post("/embeddings")
async def embeddings(request: Request) -> HTTPResponse:
    req = embedding_request(request.json)
    request.ctx.model = req.model
    async with _manager(request).serving(req.model, "embedding") as resident:
        vectors, tokens = await _engine(resident).embed(req.inputs)
    data = []
    for index, vector in enumerate(vectors):
        value: Any = vector
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json({"object": "list", "data": data, "model": req.model, "usage": usage})


tokenize_bp = Blueprint("tokenize")


@tokenize_bp.post("/tokenize")
async def tokenize(request: Request) -> HTTPResponse:
    """Count tokens with the model's own tokenizer: `prompt` as is, or `messages` (and `tools`)
    as the model's chat template lays them out.

    A ready model counts on its engine, between decode steps. Otherwise a body with `source`
    (a model source as `/models/load` takes it) counts on that GGUF's vocabulary alone, opened
    vocab-only and kept in the app's `VocabularyCache`: nothing is loaded or unloaded, and the
    count is the one the loaded model would give (same tokenizer, same template). Without
    `source`, a model that is not resident is 404 `model_not_found`. A body naming a `source`
    needs the neuron's token, like `/models/plan`."""
    body = require_object(request.json)
    model = model_name(body)
    manager = _manager(request)
    resident = manager.models.get(model)
    source = body.get("source")
    if source is None or (resident is not None and resident.state is ModelState.READY):
        engine = _engine(manager.ready(model))
        return json(to_json(TokenCount(model, await _count(engine, *_counted(body, model)))))
    # Naming a source opens (and may fetch) any model the neuron can resolve, as /models/plan
    # does: the same token guards it, whatever the inference setting.
    require_token(request)
    if not isinstance(source, str) or not source.strip():
        raise InvalidRequest("'source' must be a non-empty string", param="source")
    counted = _counted(body, model)  # a bad body is refused before any file is opened
    vocabularies: VocabularyCache = request.app.ctx.vocabularies
    resolve = functools.partial(_source_path, manager.config)
    async with vocabularies.using(source, resolve) as vocabulary:
        count = await _count(vocabulary, *counted)
    return json(to_json(TokenCount(model, count)))


def _counted(body: dict[str, Any], model: str) -> tuple[str | None, GenerationRequest | None]:
    """What /tokenize counts: a `prompt` string, or else a chat request (validated here)."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"], None
    return None, chat_request({**body, "model": model})


def _source_path(config: NeuronConfig, spec: str) -> Path:
    """The GGUF a model source names, resolved as a load resolves it (blocking: a thread's)."""
    try:
        resolved = resolve_source(
            spec, model_dirs=config.model_dirs, hf_cache=config.resolved_hf_cache()
        )
    except OSError as exc:
        raise SourceNotFound(f"cannot read model source {spec!r}: {exc}") from exc
    return resolved.primary


async def _count(counter: Tokenizer, prompt: str | None, req: GenerationRequest | None) -> int:
    """Tokens of `prompt`, or of the chat `req` as the model's template renders it."""
    if prompt is not None:
        return len(await counter.tokenize(prompt))
    assert req is not None
    tools_active = bool(req.tools) and req.tool_choice != "none"
    info = counter.info
    if info is not None and info.chat_template:
        syntax = detect_syntax(info.chat_template)
        text, _ = _chat_prompt(info, req, tools_active, syntax)
        return len(await counter.tokenize(text, add_special=_add_special(info, text)))
    text = "\n".join(str(message.get("content") or "") for message in req.messages)
    return len(await counter.tokenize(text))


# -- building the engine's request ---------------------------------------------------------------


def _engine(resident: Resident) -> Engine:
    if resident.engine is None or resident.engine.info is None:
        raise ModelUnavailable(f"model {resident.spec.model!r} is not ready", retry_after=5)
    return resident.engine


# No tokenizer packs more than this many characters into one token on real text, so a prompt
# longer than n_ctx × this cannot fit and is refused before it is templated and tokenized.
_MAX_CHARS_PER_TOKEN = 32


def _chat_chars(req: GenerationRequest) -> int:
    size = sum(len(message.get("content") or "") for message in req.messages)
    return size + sum(len(str(tool)) for tool in req.tools or [])


def _refuse_oversized(chars: int, info: EngineInfo | None, param: str) -> None:
    if info is not None and chars > info.n_ctx * _MAX_CHARS_PER_TOKEN:
        raise ContextLengthExceeded(
            f"the prompt is {chars} characters; this model's context of {info.n_ctx} tokens "
            "cannot hold it",
            param=param,
        )


def _check_schemas(req: GenerationRequest, tools_active: bool) -> Grammar | None:
    """Refuse (400) every JSON schema that would make a grammar llama.cpp cannot use, and
    return the `response_format` grammar when there is one."""
    if tools_active:
        for index, tool in enumerate(req.tools or []):
            schema_grammar(
                tool["function"].get("parameters") or {},
                param=f"tools[{index}].function.parameters",
            )
        return None
    if req.response_schema is None:
        return None
    gbnf = schema_grammar(req.response_schema, param="response_format")
    return Grammar(gbnf, param="response_format")


def _chat_prompt(
    info: EngineInfo, req: GenerationRequest, tools_active: bool, syntax: ToolSyntax
) -> tuple[str, Grammar | None]:
    """The prompt, and the grammar that shapes tool calls when tools are in play."""
    tools = grammar = None
    if tools_active:
        plan = plan_tools(req.messages, req.tools or [], req.tool_choice, syntax)
        messages, tools, grammar = plan.messages, plan.tools_for_template, plan.grammar
    else:
        messages = history_for_template(req.messages, syntax)
    prompt = render_chat(
        info.chat_template or "",
        messages,
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        tools=tools,
    )
    return prompt, grammar


def _add_special(info: EngineInfo, prompt: str) -> bool:
    """Let the tokenizer add BOS unless the template already wrote it."""
    return not (info.bos_token and prompt.startswith(info.bos_token))


def _generation(
    req: GenerationRequest,
    prompt: str,
    grammar: Grammar | None,
    *,
    param: str,
    info: EngineInfo | None,
) -> GenerateRequest:
    sampling = req.sampling
    if grammar is not None:
        sampling = replace(sampling, grammar=grammar)
    return GenerateRequest(
        prompt=prompt,
        sampling=sampling,
        add_special=True if info is None else _add_special(info, prompt),
        max_tokens=req.max_tokens,
        stop=req.stop,
        logprobs=req.logprobs,
        reuse_prefix=sampling.seed is None,
        param=param,
    )


# -- answering -----------------------------------------------------------------------------------


async def _respond(
    request: Request,
    resident: Resident,
    req: GenerationRequest,
    generation: GenerateRequest,
    renderer: ChatRenderer | CompletionRenderer,
) -> HTTPResponse | None:
    stream = _engine(resident).generate(generation)
    try:
        if not req.stream:
            pieces: list[Piece] = []
            async for item in stream:
                if isinstance(item, Finished):
                    _record(request, resident, item)
                    return json(renderer.whole(pieces, item))
                pieces.append(item)
            raise EngineFailure("the engine ended the generation without finishing it")
        # The first item comes after the prompt is read: errors until then keep their status.
        first = await anext(stream)
        finished: Finished | None = None
        response = await request.respond(content_type="text/event-stream", headers=SSE_HEADERS)
        assert response is not None
        opening = renderer.opening()
        if opening is not None:
            await response.send(sse_data(opening))
        item = first
        try:
            while True:
                if isinstance(item, Finished):
                    break
                event = renderer.piece(item)
                if event is not None:
                    await response.send(event)
                item = await anext(stream)
            finished = item
            for chunk in renderer.closing(item):
                await response.send(sse_data(chunk))
            _record(request, resident, item)
            if req.include_usage:
                await response.send(sse_data(renderer.usage_chunk(item)))
        except NeuronError as exc:
            await response.send(sse_data(exc.body()))
        await response.send(DONE)
        await response.eof()
        log_request(request, 200, usage=finished.usage if finished else None)
        return None
    except asyncio.CancelledError:  # the client went away; 499 as nginx logs it
        log_request(request, 499, client_gone=True)
        raise
    finally:
        await stream.aclose()


def _record(request: Request, resident: Resident, finished: Finished) -> None:
    metrics = request.app.ctx.metrics
    usage = finished.usage
    request.ctx.usage = usage
    model = resident.spec.model
    metrics.prompt_tokens.labels(model).inc(usage.prompt_tokens)
    metrics.completion_tokens.labels(model).inc(usage.completion_tokens)
    metrics.cached_tokens.labels(model).inc(usage.cached_tokens)
    rate = usage.decode_tok_s
    if rate is not None:
        previous = resident.tok_s_decode
        resident.tok_s_decode = rate if previous is None else 0.7 * previous + 0.3 * rate
