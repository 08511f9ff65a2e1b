"""What an engine that embeds offers the node: prepare (tokenise, count, check), embed.

An engine serves ``/v1/embeddings`` for a model when that model's
:class:`~agoranet.engines.base.ModelInfo` lists the ``embeddings`` capability and the
engine is an :class:`Embedder`. Like generation, a request is prepared once (its
tokens counted: what the node meters and prices), then run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Embedder", "EmbeddingJob", "EmbeddingsResult", "PreparedEmbeddings"]


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """Texts or token-id lists to embed with ``model`` (at ``dimensions``, if given)."""

    model: str
    inputs: Sequence[str] | Sequence[Sequence[int]]
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class PreparedEmbeddings:
    """A job checked against its model and tokenised: ``prompt_tokens`` is what it costs;
    ``payload`` is engine-private."""

    job: EmbeddingJob
    prompt_tokens: int
    payload: object = None


@dataclass(frozen=True, slots=True)
class EmbeddingsResult:
    """One vector per input, in input order, and the input tokens they took."""

    vectors: list[list[float]]
    prompt_tokens: int


@runtime_checkable
class Embedder(Protocol):
    """An engine that embeds (for the models whose capabilities say so)."""

    async def prepare_embeddings(self, job: EmbeddingJob) -> PreparedEmbeddings:
        """Check the model, the inputs and ``dimensions`` (400s), and count the tokens."""
        ...

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsResult:
        """The vectors of a prepared job."""
        ...
