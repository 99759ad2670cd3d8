"""Tool calling with `tool_choice: "auto"` for ChatML models.

llama-cpp-python's `chatml-function-calling` handler forces a call well when told which
function to call, but in "auto" mode, when the model decides to answer in words, it constrains
the answer with a grammar that only admits a function name or the end token, so the reply comes
out empty (and ignores `max_tokens`). This module makes the decision itself — one short
grammar-constrained completion choosing `message` or one of the functions — and then either
forces that function through the handler or lets the model answer with its own chat template.
Runs on the engine thread, like every llama.cpp call.
"""

from __future__ import annotations

import json
from typing import Any

_DECISION_TOKENS = 48


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages any chat template can render: text content only, tool calls written out.

    Templates concatenate `content`, so a `None` content (an assistant turn that only called
    tools) breaks them; calls are written the way the ChatML tool prompt writes them.
    """
    plain = []
    for message in messages:
        text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            text += f"\nfunctions.{function.get('name')}:\n{function.get('arguments') or '{}'}"
        plain.append({"role": message["role"], "content": text.strip()})
    return plain


def _decision_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list:
    lines = [
        "You can answer the user with a message, or call one of these functions:",
    ]
    for tool in tools:
        function = tool["function"]
        lines.append(
            f"functions.{function['name']}: {function.get('description', '')}\n"
            f"  parameters: {json.dumps(function.get('parameters') or {})}"
        )
    lines.append(
        "To answer with a message, begin with 'message:'. "
        "To call a function, begin with 'functions.<function_name>:'."
    )
    guide = "\n".join(lines)
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{guide}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": guide}, *messages]


def chat_prompt(llama: Any, messages: list[dict[str, Any]]) -> str:
    """The prompt the model's own chat template (GGUF `tokenizer.chat_template`) makes."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=llama._model.token_get_text(llama.token_eos()),
        bos_token=llama._model.token_get_text(llama.token_bos()),
    )
    return formatter(messages=messages).prompt


def choose_tool(
    llama: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> str | None:
    """The function the model wants to call now, or None when it wants to answer in words."""
    from llama_cpp.llama_grammar import LlamaGrammar

    names = [tool["function"]["name"] for tool in tools]
    alternatives = " | ".join(json.dumps(f"functions.{name}:") for name in names)
    grammar = LlamaGrammar.from_string(
        f'root ::= "message:" | functions\nfunctions ::= {alternatives}\n', verbose=False
    )
    prompt = chat_prompt(llama, _decision_messages(plain_messages(messages), tools))
    decision = llama.create_completion(
        prompt=prompt, grammar=grammar, temperature=0, max_tokens=_DECISION_TOKENS
    )
    text = decision["choices"][0]["text"].strip()
    if text.startswith("functions."):
        name = text[len("functions.") :].rstrip(":")
        if name in names:
            return name
    return None
