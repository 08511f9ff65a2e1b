"""OpenAI's ``/v1/embeddings`` wire types, shared by the node and the gateway.

``input`` is a string, a list of strings, a list of token ids, or a list of lists of
token ids (OpenAI's four forms); :meth:`EmbeddingRequest.inputs` gives it as one list
of texts or one list of token-id lists, checked against :data:`MAX_INPUTS`. The answer
is a list of ``embedding`` objects in input order; with ``encoding_format`` ``base64``
each vector is the base64 of its little-endian float32 bytes (what the ``openai``
client decodes), else a list of floats.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from agoranet.errors import InvalidRequestError

__all__ = [
    "MAX_INPUTS",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "EmbeddingUsage",
    "encode_vector",
]

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request

Inputs = list[str] | list[list[int]]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``; unknown fields are kept (and logged by the route)."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def inputs(self) -> Inputs:
        """The inputs as a list of texts or of token-id lists (400 if empty or too many)."""
        raw = self.input
        items: Inputs
        if isinstance(raw, str):
            items = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [[x for x in raw if isinstance(x, int)]]
        else:
            items = raw  # type: ignore[assignment]
        if not items:
            raise InvalidRequestError("input must not be empty", param="input")
        if len(items) > MAX_INPUTS:
            raise InvalidRequestError(f"input has {len(items)} items; at most {MAX_INPUTS} "
                                      "may be embedded in one request", param="input")
        for index, item in enumerate(items):
            if len(item) == 0:
                raise InvalidRequestError(f"input[{index}] is empty: nothing to embed",
                                          param="input")
        return items


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    """``vector`` as the wire carries it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return [float(x) for x in vector]
