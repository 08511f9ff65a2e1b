"""The tiny model's chat template: plain turns, and Hermes-style tools and tool calls.

Given ``tools``, the system turn lists each function's definition as one JSON line
between ``<tools>`` and ``</tools>``; an assistant's calls are written
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call, and a
``tool`` message comes back as a user turn holding ``<tool_response>...</tool_response>``,
as Qwen's and Hermes' templates do (they put newlines around a call's JSON and between
calls; here there are none, so a call forced by a grammar, which never lets a raw
newline through, is written exactly as the model learned it). The
corpus (:mod:`agoranet.tinymodel.toolcorpus`) is rendered with this same template, so
what the model reads when serving is what it was trained on. The format is the one
:mod:`agoranet.engines.toolparsers` calls ``hermes``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHAT_TEMPLATE", "TOOL_CALL_PARSER", "TOOL_TOKENS", "render"]

TOOL_CALL_PARSER = "hermes"
# Whole tokens (added to the vocabulary, not special: they decode as text): one step for
# the model to start a call, and a marker a parser sees in one piece.
TOOL_TOKENS = ["<tools>", "</tools>", "<tool_call>", "</tool_call>", "<tool_response>",
               "</tool_response>"]

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|system|>\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\\n' }}"
    "{%- endif %}"
    "{{- 'Tools:\\n<tools>\\n' }}"
    "{%- for tool in tools %}"
    "{{- (tool['function'] if tool['function'] is defined else tool) | tojson + '\\n' }}"
    "{%- endfor %}"
    "{{- '</tools><|end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|user|>\\n<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response><|end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined"
    " and message['tool_calls'] %}"
    "{{- '<|assistant|>\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set function = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>{\"name\": ' + function['name'] | tojson + ', \"arguments\": '"
    " + function['arguments'] | tojson + '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|end|>\\n' }}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\\n' + (message['content'] or '') + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """``messages`` (and ``tools``) through :data:`CHAT_TEMPLATE`, as a tokenizer would."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], tools=tools,
                                        chat_template=CHAT_TEMPLATE)
    return str(rendered[0])
