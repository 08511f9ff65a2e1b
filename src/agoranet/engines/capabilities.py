"""What a served model can do beyond plain text, as named in a node's offer.

Each model in an offer lists its capabilities; a gateway sends a request that needs
one only to nodes that offer it. A model whose offer predates the list (no
``capabilities`` field) is taken as text only.

- ``tools``: function calling with ``tool_choice`` ``required`` or a named function
  (the call valid against the function's schema), and ``none``;
- ``tool_choice_auto``: also ``tool_choice`` ``auto`` (the default when tools are
  given): the model decides between text and calls, which needs a parser for its
  tool-call format;
- ``structured_output``: ``response_format`` ``json_object`` and ``json_schema``;
- ``logprobs``: token log-probabilities;
- ``embeddings``: ``/v1/embeddings`` (its input tokens charged at the model's input
  price).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EMBEDDINGS",
    "KNOWN",
    "LOGPROBS",
    "STRUCTURED_OUTPUT",
    "TOOLS",
    "TOOL_CHOICE_AUTO",
]

TOOLS: Final = "tools"
TOOL_CHOICE_AUTO: Final = "tool_choice_auto"
STRUCTURED_OUTPUT: Final = "structured_output"
LOGPROBS: Final = "logprobs"
EMBEDDINGS: Final = "embeddings"
KNOWN: Final = frozenset({TOOLS, TOOL_CHOICE_AUTO, STRUCTURED_OUTPUT, LOGPROBS, EMBEDDINGS})
