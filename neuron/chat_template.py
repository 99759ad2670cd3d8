"""Render a model's own chat template (the GGUF's `tokenizer.chat_template`) into a prompt.

Pure apart from jinja2: no llama_cpp. The environment matches what Hugging Face's transformers
gives templates (sandboxed, `trim_blocks`/`lstrip_blocks`, loop controls, `tojson` without ASCII
escaping, `raise_exception`, `strftime_now`, a pass-through `{% generation %}` tag), so templates
written for transformers render the same here. A template that refuses the messages (its own
`raise_exception`, or any rendering error) is an `InvalidRequest`: the caller sent a
conversation this model cannot take.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, ClassVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from neuron.errors import InvalidRequest


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}…{% endgeneration %}` marks training spans; render it."""

    # jinja2 annotates `tags` as an instance variable, but reads it from the class.
    tags: ClassVar[set[str]] = {"generation"}  # type: ignore[misc]

    def parse(self, parser: jinja2.parser.Parser) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused the messages: {message}")


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise
    environment.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return environment.from_string(template)


def template_supports_tools(template: str) -> bool:
    """Whether the template renders a `tools` list itself (else tools go into a system turn)."""
    return "tools" in template


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages` (and `tools`, when the template takes them)."""
    try:
        compiled = _compile(template)
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"the model's chat template does not compile: {exc}") from None
    try:
        return compiled.render(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except InvalidRequest:
        raise
    except Exception as exc:  # a template is user code: any failure means "cannot take these"
        raise InvalidRequest(f"the model's chat template refused the messages: {exc}") from None
