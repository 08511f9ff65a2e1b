"""The node's paid inference: parse and prepare once, authorize, meter, charge.

:class:`PaidInference` is the one service behind every paid route (chat and text
completions, embeddings). It knows nothing of ASGI:

1. :meth:`PaidInference.price` parses the body and prepares the request once
   (tokenised, context checked: a 4xx before any payment) and prices its worst case;
   the parsed request and the prepared one travel on to generation
   (:class:`~agoranet.node.metering.MeteredRequest`), never parsed again.
2. :meth:`PaidInference.authorize` accepts the payment for that worst case through
   the node's :class:`~agoranet.payments.accept.acceptor.PaymentAcceptor` (a voucher is
   durable in the ledger before it returns; a scheme that settles per payment,
   ``exact``, settles now unless told to after the answer), or raises
   :class:`~agoranet.errors.PaymentRequiredError`, whose 402
   (:meth:`PaidInference.payment_required`) names the worst case.
3. :class:`PaidCall` is one accepted request: its explicit
   :class:`~agoranet.node.metering.Metering` (generation records the usage there and
   asks it for running and final receipt frames), its charge when the answer's status
   goes out (:meth:`PaidCall.answered`: a plain answer is charged its usage and gets the
   ``PAYMENT-RESPONSE``; a failed one is released before its status goes out), the
   final receipt of a stream charged only once its frame has been sent
   (:meth:`PaidCall.final_sent`), and :meth:`PaidCall.close`: a request that failed or
   was abandoned is charged its last running receipt, or nothing
   (:meth:`PaidCall.settle_after` settles an ``exact`` payment told to wait for the
   answer).

The ledger's writes go through its :class:`~agoranet.payments.accept.ledger_writer.LedgerWriter`
(off the event loop where they wait for a disk or a database). The ASGI layer
(:mod:`agoranet.node.payment_middleware`) only reads the body, maps errors to OpenAI's
JSON, and puts the payment headers on the answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from x402.schemas import PaymentRequired

from agoranet.api.embeddings import EmbeddingRequest
from agoranet.api.handlers import parse_json_object
from agoranet.api.sse import sse_json
from agoranet.api.types import ChatCompletionRequest, CompletionRequest
from agoranet.engines.base import Finish, Prepared
from agoranet.errors import PaymentRequiredError
from agoranet.market import TokenPrices, cost, with_commitments, worst_case
from agoranet.node.embeddings import EmbeddingService
from agoranet.node.metering import MeteredRequest, Metering
from agoranet.node.metrics import note_payment_response
from agoranet.node.service import InferenceService
from agoranet.payments.accept.acceptor import Authorization, PaymentAcceptor
from agoranet.payments.receipts import Receipt

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "DEFAULT_PAID_PATHS",
    "EMBEDDINGS_PATH",
    "RECEIPT_OBJECT",
    "RUNNING_RECEIPT_OBJECT",
    "PaidCall",
    "PaidInference",
    "PriceBook",
    "Priced",
]

# The node's payment log lines keep the name operators filter them by.
logger = logging.getLogger("agoranet.node.payment_middleware")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
DEFAULT_PAID_PATHS = (CHAT_PATH, COMPLETIONS_PATH)
RECEIPT_OBJECT = "agoranet.receipt"  # the final receipt of a stream
RUNNING_RECEIPT_OBJECT = "agoranet.receipt.running"  # for the part already sent
PriceBook = Callable[[str], TokenPrices]


@dataclass(frozen=True)
class Priced:
    """A request parsed and prepared once, and what it may cost at most."""

    request: BaseModel  # the parsed wire request
    prepared: Prepared
    model: str
    stream: bool
    prices: TokenPrices
    worst: int  # base units

    @property
    def free(self) -> bool:
        return self.prices.is_free


class PaidInference:
    """Paid requests over ``service`` (and ``embeddings``, if the node sells them)."""

    def __init__(self, acceptor: PaymentAcceptor, service: InferenceService, prices: PriceBook,
                 *, embeddings: EmbeddingService | None = None, settle_exact_before: bool = True,
                 receipt_every: int = 16, commitment_price: int = 0) -> None:
        self.acceptor = acceptor
        self.service = service
        self.embeddings = embeddings
        self.prices = prices
        self.settle_exact_before = settle_exact_before
        self.receipt_every = receipt_every
        self.commitment_price = commitment_price

    # ------------------------------------------------------------ parse, prepare, price

    async def price(self, path: str, body: bytes) -> Priced:
        """Parse and prepare the request once, and price its worst case (a bad body, an
        unknown model or a context too long raise here, before any payment)."""
        data = parse_json_object(body)
        request: BaseModel
        if path == EMBEDDINGS_PATH and self.embeddings is not None:
            embedding = EmbeddingRequest.model_validate(data)
            request, prepared = embedding, await self.embeddings.prepare(embedding)
        elif path.endswith("/chat/completions"):
            chat = ChatCompletionRequest.model_validate(data)
            request, prepared = chat, await self.service.prepare_chat(chat)
        else:
            completion = CompletionRequest.model_validate(data)
            request, prepared = completion, await self.service.prepare_completion(completion)
        model = str(getattr(request, "model", ""))
        prices = self.prices(model)
        if prepared.request.commitments:  # the offer's surcharge on every token
            prices = with_commitments(prices, self.commitment_price)
        worst = worst_case(prices, prepared.prompt_tokens, prepared.request.max_tokens)
        # only completions stream: an embeddings body's "stream" is an unknown extra field
        stream = isinstance(request, ChatCompletionRequest | CompletionRequest) and request.stream
        return Priced(request, prepared, model, stream, prices, worst)

    # ------------------------------------------------------------ authorize

    async def authorize(self, priced: Priced, header: str | None,
                        request_id: str) -> PaidCall:
        """Accept the payment in ``header`` for ``priced`` (durable before this returns);
        PaymentRequiredError if it is refused."""
        auth = await self.acceptor.authorize(header, priced.worst, request_id)
        if self.settle_exact_before:  # a scheme that settles per payment (exact) does now
            await self.acceptor.settle(auth)
        return PaidCall(self, priced, auth)

    def payment_required(self, priced: Priced, exc: PaymentRequiredError,
                         resource: str) -> PaymentRequired:
        """The 402's x402 requirements for ``priced`` after the refusal ``exc``."""
        return self.acceptor.payment_required(priced.worst, priced.prices, error=exc.reason,
                                              corrective=exc.corrective, resource=resource)


def _dump(response: BaseModel) -> dict[str, Any]:
    return response.model_dump(by_alias=True, exclude_none=True, mode="json")


class PaidCall:
    """One accepted paid request, from its authorization to its charge or release."""

    def __init__(self, paid: PaidInference, priced: Priced, auth: Authorization) -> None:
        self.paid = paid
        self.priced = priced
        self.auth = auth
        self.metering = Metering(stream_finish=self._stream_finish)
        if paid.receipt_every > 0:
            self.metering.stream_progress = self._stream_progress
        self.final: tuple[Finish, Receipt, bytes] | None = None  # (usage, receipt, frame)
        self._receipted = 0  # content frames covered by the last running receipt

    @property
    def metered(self) -> MeteredRequest:
        """What generation runs with: the parsed and prepared request, this metering."""
        return MeteredRequest(self.priced.request, self.priced.prepared, self.metering)

    @property
    def signer(self) -> str:
        """The address whose signature the payment carries, checked."""
        return self.auth.signer

    def _write(self, fn: Callable[[], Any]) -> Awaitable[Any]:
        return self.paid.acceptor.writer.unsynced(fn)

    def _cost(self, tokens_in: int, tokens_out: int) -> int:
        return cost(self.priced.prices, tokens_in, tokens_out)

    async def charge(self, finish: Finish) -> dict[str, Any]:
        """Charge ``finish``'s usage; the payment response (with the signed receipt)."""
        acceptor, auth = self.paid.acceptor, self.auth
        amount = self._cost(finish.prompt_tokens, finish.completion_tokens)
        _, response = await self._write(lambda: acceptor.charge(
            auth, finish.prompt_tokens, finish.completion_tokens, amount))
        return _dump(response)

    def _receipt_event(self, kind: str, response: dict[str, Any]) -> bytes:
        return sse_json({"id": f"receipt-{self.auth.request_id}", "object": kind,
                         "created": int(time.time()), "model": self.priced.model,
                         "choices": [], "x402_payment_response": response,
                         "agoranet_receipt": response["extra"]["receipt"]})

    async def _stream_finish(self, finish: Finish) -> list[bytes]:
        amount = self._cost(finish.prompt_tokens, finish.completion_tokens)
        quoted = self.paid.acceptor.quote(self.auth, finish.prompt_tokens,
                                          finish.completion_tokens, amount)
        if quoted is None:  # exact: a fixed amount, already paid
            return [self._receipt_event(RECEIPT_OBJECT, await self.charge(finish))]
        receipt, response = quoted
        frame = self._receipt_event(RECEIPT_OBJECT, _dump(response))
        self.final = (finish, receipt, frame)
        return [frame]

    async def _stream_progress(self, sent: int) -> list[bytes]:
        if sent - self._receipted < self.paid.receipt_every:
            return []
        self._receipted = sent
        acceptor, auth = self.paid.acceptor, self.auth
        prompt = self.priced.prepared.prompt_tokens
        amount = self._cost(prompt, sent)
        response = await self._write(lambda: acceptor.progress(auth, prompt, sent, amount))
        return [] if response is None else [self._receipt_event(RUNNING_RECEIPT_OBJECT,
                                                                response)]

    async def answered(self, status: int) -> dict[str, Any] | None:
        """The answer's status is going out: a failure is released first (nothing charged,
        the channel free before the buyer hears); a plain answer is charged its usage and
        its payment response returned (for ``PAYMENT-RESPONSE``); a stream, None."""
        if status != 200:
            acceptor, auth = self.paid.acceptor, self.auth
            await self._write(lambda: acceptor.release(auth))
            return None
        if self.metering.usage is not None and not self.priced.stream:
            response = await self.charge(self.metering.usage)
            note_payment_response(response)  # the request's metrics, without decoding it
            return response
        return None

    def is_final(self, body: bytes | None) -> bool:
        """Whether ``body`` is the stream's final receipt frame, not charged yet."""
        return self.final is not None and not self.auth.done and body == self.final[2]

    async def final_sent(self) -> None:
        """The final receipt's frame has gone out: charge exactly that receipt."""
        assert self.final is not None
        usage, receipt, _ = self.final
        acceptor, auth = self.paid.acceptor, self.auth
        await self._write(lambda: acceptor.charge(
            auth, usage.prompt_tokens, usage.completion_tokens, receipt.amount,
            quoted=receipt))

    async def close(self) -> None:
        """The request is over: if it was neither charged nor released it failed or was
        abandoned, and is charged its last running receipt (or nothing)."""
        acceptor, auth = self.paid.acceptor, self.auth
        if not auth.done:
            kept = await self._write(lambda: acceptor.release(auth))
            if kept is not None:
                logger.info("%s ended early: charged %d for %d tokens by its running "
                            "receipt", auth.request_id, kept.amount, kept.tokens_out)

    async def settle_after(self) -> None:
        """After the answer: a payment the node settles per payment (``exact``) and was
        told to settle after the answer is settled now (a failure is logged)."""
        if self.paid.settle_exact_before:
            return
        try:
            await self.paid.acceptor.settle(self.auth)
        except PaymentRequiredError:
            logger.warning("%s payment for %s failed after the answer", self.auth.scheme,
                           self.auth.request_id)

