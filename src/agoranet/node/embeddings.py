"""``POST /v1/embeddings`` on the node: validate, prepare once, embed, shape the answer.

A model is embedded only where its engine says so (the ``embeddings`` capability in
:meth:`~agoranet.engines.base.Engine.models`, which the offer publishes); a request
for any other model is a 400. A paid node prices the request's input tokens at the
model's input price (:mod:`agoranet.node.paid_inference`): the middleware prepares it
once to price it and hands it to the route with the request's
:class:`~agoranet.node.metering.Metering` (as the ``payload`` of a
:class:`~agoranet.engines.base.Prepared` with no tokens to generate); the usage
recorded there is what is charged.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agoranet.api.embeddings import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    encode_vector,
)
from agoranet.api.handlers import openai_errors, respond
from agoranet.engines import capabilities
from agoranet.engines.base import Engine, Finish, GenerationRequest, Prepared
from agoranet.engines.embeddings import Embedder, EmbeddingJob, PreparedEmbeddings
from agoranet.errors import InvalidRequestError, ModelNotFoundError
from agoranet.market import ModelName
from agoranet.node.metering import Metering, route_request
from agoranet.node.metrics import note_finished, note_started

__all__ = ["EmbeddingService", "as_prepared", "embedding_routes"]


def as_prepared(prepared: PreparedEmbeddings, context_length: int) -> Prepared:
    """``prepared`` as the payment path meters a request: its input tokens, nothing to
    generate (``max_tokens`` 0), the embedding job in ``payload``."""
    request = GenerationRequest(model=prepared.job.model, prompt="", max_tokens=0)
    return Prepared(request, prepared.prompt_tokens, context_length, prepared)


class EmbeddingService:
    """Embeddings over one engine, for the models it offers them for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _embedder(self, model: str) -> tuple[Embedder, int]:
        """The engine, if it embeds ``model`` (a 404 for a model not served, a 400 for one
        served without embeddings), and the model's context length."""
        base = ModelName.base_of(model)
        info = next((i for i in self.engine.models() if i.name == base), None)
        if info is None:
            served = ", ".join(repr(i.name) for i in self.engine.models())
            raise ModelNotFoundError(f"The model '{model}' does not exist on this node (it "
                                     f"serves {served})", param="model")
        if capabilities.EMBEDDINGS not in info.capabilities or \
                not isinstance(self.engine, Embedder):
            raise InvalidRequestError(f"this node does not serve embeddings for '{model}'",
                                      param="model")
        if ModelName.names_adapter(model):
            raise InvalidRequestError("embeddings are served for base models only, not "
                                      "adapters", param="model")
        return self.engine, info.context_length

    async def prepare(self, request: EmbeddingRequest) -> Prepared:
        """Check and tokenise ``request`` once (400s before any work), as it is metered."""
        embedder, context = self._embedder(request.model)
        job = EmbeddingJob(request.model, request.inputs(), request.dimensions)
        return as_prepared(await embedder.prepare_embeddings(job), context)

    async def create(self, request: EmbeddingRequest, *, prepared: Prepared | None = None,
                     metering: Metering | None = None) -> EmbeddingList:
        """Embed ``request`` (``prepared``: as :meth:`prepare` made it, if it was already);
        the usage is recorded in ``metering``."""
        shared = prepared
        if shared is None or not isinstance(shared.payload, PreparedEmbeddings):
            shared = await self.prepare(request)
        job = shared.payload
        if not isinstance(job, PreparedEmbeddings):
            raise TypeError("the prepared request is not an embeddings request")
        note_started(shared)  # the request's model, in its metrics and log line
        embedder, _ = self._embedder(request.model)
        result = await embedder.embed(job)
        if len(result.vectors) != len(job.job.inputs):
            raise RuntimeError(f"the engine returned {len(result.vectors)} vectors for "
                               f"{len(job.job.inputs)} inputs")
        # Never more than was priced: the voucher covered the prepared count.
        tokens = min(result.prompt_tokens, job.prompt_tokens)
        usage = Finish("stop", tokens, 0)
        note_finished(usage)
        if metering is not None:
            metering.usage = usage
        data = [Embedding(index=i, embedding=encode_vector(v, request.encoding_format))
                for i, v in enumerate(result.vectors)]
        return EmbeddingList(data=data, model=request.model,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


def embedding_routes(service: EmbeddingService) -> list[Route]:
    @openai_errors
    async def embeddings(request: Request) -> Response:
        body, prepared, metering = await route_request(request, EmbeddingRequest, "embeddings")
        return respond(await service.create(body, prepared=prepared, metering=metering))

    return [Route("/v1/embeddings", embeddings, methods=["POST"])]
