"""``summarize``: a paid tool that buys its own inference on the market (agents all the way
down).

The tool's seller runs a gateway of its own, with its own wallet and deposit, and gives
the tool a key of that gateway; each call asks a model through it with the ``openai``
client, so the seller pays a node for the tokens while the buyer pays the seller for
the summary::

    export AGORANET_SUMMARIZE_GATEWAY=http://127.0.0.1:8403/v1 AGORANET_SUMMARIZE_KEY=agn-...
    agoranet tools serve agoranet.tools.examples.summarize:from_env --port 8500

The price is quoted before the call from its arguments and covers the most the
inference can cost, plus a margin. The tool caps the nodes it buys from with the
request's ``agoranet`` policy (``max_price_in``/``max_price_out`` per million tokens),
and bounds the prompt's tokens by its UTF-8 bytes (every token of a byte-level
tokenizer covers at least one byte) plus :data:`PROMPT_OVERHEAD_TOKENS` for the chat
template; the summary is at most :data:`SUMMARY_TOKENS` long. So a call never costs the
seller more than it charges. The answer says what the inference cost (the seller's
gateway's ``agoranet`` summary: request id, nodes, amount; and the token counts).

Settings (environment, read by :func:`from_env`): ``AGORANET_SUMMARIZE_GATEWAY`` (the
gateway's ``/v1`` URL), ``AGORANET_SUMMARIZE_KEY`` (else ``OPENAI_API_KEY``; or
``AGORANET_SUMMARIZE_KEY_FILE``, a file holding it, read at each call: a key written or
rotated after the server started is used),
``AGORANET_SUMMARIZE_MODEL`` (``tiny``), ``AGORANET_SUMMARIZE_MAX_PRICE_IN`` and
``..._MAX_PRICE_OUT`` (base units per million tokens), ``..._MARGIN_PERCENT`` (20) and
``..._FEE`` (base units per call, 100).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, Field

from agoranet.errors import ConfigError, ToolFailedError
from agoranet.market import TokenPrices, cost
from agoranet.tools.server import ToolServer

if TYPE_CHECKING:
    from collections.abc import Mapping

    from openai import AsyncOpenAI

__all__ = [
    "INSTRUCTION",
    "MAX_TEXT_CHARS",
    "PROMPT_OVERHEAD_TOKENS",
    "SUMMARY_TOKENS",
    "Inference",
    "SummarizeSettings",
    "Summary",
    "from_env",
    "summarize_tools",
]

logger = logging.getLogger(__name__)

INSTRUCTION: Final = "Summarize the user's text in one or two short sentences."
SUMMARY_TOKENS: Final = 48  # the most a summary may be, in tokens
PROMPT_OVERHEAD_TOKENS: Final = 64  # the chat template's tokens around the two messages
MAX_TEXT_CHARS: Final = 1_500  # a small model's context holds this with room to answer
_PREFIX: Final = "AGORANET_SUMMARIZE_"


@dataclass(frozen=True)
class SummarizeSettings:
    """Where the tool buys its inference, the dearest node it buys from, its margin."""

    gateway: str  # the seller's gateway, its /v1 URL
    api_key: str  # a key of that gateway: what the tool may spend ("" : read key_file)
    model: str = "tiny"
    max_price_in: int = 4_000_000  # base units per million prompt tokens
    max_price_out: int = 12_000_000  # ... per million generated tokens
    margin_percent: int = 20
    fee: int = 100  # base units per call, on top
    key_file: Path | None = None  # holds the key when api_key is empty, read at each call
    prices: TokenPrices = field(init=False)

    def __post_init__(self) -> None:
        for name in ("max_price_in", "max_price_out", "margin_percent", "fee"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"summarize: {name} must be a non-negative integer, "
                                  f"not {value!r}")
        object.__setattr__(self, "prices", TokenPrices(self.max_price_in, self.max_price_out))

    def key(self) -> str:
        """The gateway key to spend with: ``api_key``, else what ``key_file`` holds now."""
        if self.api_key or self.key_file is None:
            return self.api_key
        try:
            return self.key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ToolFailedError(f"summarize: cannot read its gateway key from "
                                  f"{self.key_file}: {exc.strerror}; nothing was charged"
                                  ) from None

    def inference_bound(self, text: str) -> int:
        """The most the inference for ``text`` may cost, in base units."""
        prompt = len(INSTRUCTION.encode()) + len(text.encode()) + PROMPT_OVERHEAD_TOKENS
        return cost(self.prices, prompt, SUMMARY_TOKENS)

    def price(self, arguments: Mapping[str, Any]) -> int:
        """The price of a call: the inference's bound, the margin on it (rounded up), the
        fee."""
        bound = self.inference_bound(str(arguments["text"]))
        return bound + -(-bound * self.margin_percent // 100) + self.fee

    @property
    def max_price(self) -> int:
        """The price of the longest text (each character at most four UTF-8 bytes)."""
        return self.price({"text": "\U0001F600" * MAX_TEXT_CHARS})


class Inference(BaseModel):
    """What the tool bought: the seller's gateway's request id, the nodes, the tokens and
    the amount it paid for them (base units, receipted by the nodes)."""

    request_id: str
    nodes: list[str]
    prompt_tokens: int
    completion_tokens: int
    paid: int


class Summary(BaseModel):
    summary: str
    inference: Inference


def summarize_tools(settings: SummarizeSettings) -> ToolServer:
    """A :class:`ToolServer` selling ``summarize``, buying its inference per ``settings``."""
    try:
        from openai import APIError, AsyncOpenAI
    except ImportError as exc:
        raise ConfigError("the summarize tool needs the openai client: pip install openai"
                          ) from exc
    clients: dict[str, AsyncOpenAI] = {}  # by key, made in the server's event loop
    server = ToolServer("summarize", instructions="Summaries written by a model bought on "
                        "the agoranet market, priced per input byte.")

    @server.tool(price=settings.price, max_price=settings.max_price)
    async def summarize(text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
                        ) -> Summary:
        """A short summary of the text, written by a model this tool's seller buys on the
        market; priced per input byte to cover the tokens, plus a margin."""
        key = settings.key()
        if key not in clients:
            for old in clients.values():
                await old.close()
            clients.clear()
            clients[key] = AsyncOpenAI(base_url=settings.gateway, api_key=key, max_retries=0,
                                       timeout=90.0)
        try:
            reply = await clients[key].chat.completions.create(
                model=settings.model, temperature=0, max_tokens=SUMMARY_TOKENS,
                messages=[{"role": "system", "content": INSTRUCTION},
                          {"role": "user", "content": text}],
                extra_body={"agoranet": {"max_price_in": settings.max_price_in,
                                         "max_price_out": settings.max_price_out}})
        except APIError as exc:
            raise ToolFailedError(f"summarize: the seller's gateway did not answer: "
                                  f"{str(exc)[:300]}; nothing was charged") from None
        return _summary(reply, settings.inference_bound(text))

    return server


def _summary(reply: Any, bound: int) -> Summary:
    fields = reply.model_extra or {}
    bought = fields.get("agoranet") or {}
    usage = reply.usage
    paid = int(bought.get("amount", 0))
    if paid > bound:  # a chat template longer than the overhead assumed: the seller's loss
        logger.warning("summarize: the inference cost %d, above the %d priced for it", paid,
                       bound)
    return Summary(summary=(reply.choices[0].message.content or "").strip(),
                   inference=Inference(
                       request_id=str(bought.get("request_id", "")),
                       nodes=[str(n) for n in bought.get("nodes", [])],
                       prompt_tokens=usage.prompt_tokens if usage else 0,
                       completion_tokens=usage.completion_tokens if usage else 0, paid=paid))


def _int(name: str, default: int) -> int:
    raw = os.environ.get(_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{_PREFIX}{name} must be an integer, not {raw[:40]!r}") from None


def from_env() -> ToolServer:
    """The tool with its settings from the environment (see the module's docstring)."""
    key = os.environ.get(_PREFIX + "KEY") or os.environ.get("OPENAI_API_KEY") or ""
    key_file = os.environ.get(_PREFIX + "KEY_FILE")
    if not key and not key_file:
        raise ConfigError(f"summarize buys its inference through a gateway key: set "
                          f"{_PREFIX}KEY (or OPENAI_API_KEY), or {_PREFIX}KEY_FILE")
    base = SummarizeSettings("", "")
    return summarize_tools(SummarizeSettings(
        os.environ.get(_PREFIX + "GATEWAY", "http://127.0.0.1:8402/v1"), key,
        os.environ.get(_PREFIX + "MODEL", base.model),
        _int("MAX_PRICE_IN", base.max_price_in), _int("MAX_PRICE_OUT", base.max_price_out),
        _int("MARGIN_PERCENT", base.margin_percent), _int("FEE", base.fee),
        Path(key_file) if key_file else None))
