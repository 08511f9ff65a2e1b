"""What a paid stream cut before its final receipt may cost beyond its last receipt.

A node records each running receipt in its ledger *before* it sends it (recording
it after the send would open the opposite window: a replica killed just after
sending would lose the step). So a node that dies, or a connection that drops,
between the two leaves the node holding a receipt for tokens that arrived while
the receipt did not; the node charges it when it releases the request (or
restarts) and can claim it on chain. The payer believes it *owes* only what its
receipts say, so it cannot adopt that charge; it counts it as *spent* instead
(:meth:`agoranet.payments.pay.payer.Payer.cut`), so that its recorded spend covers
every claim. :func:`unreceipted_cost` is that amount: what the node can charge,
at the prices of its offer, for the tokens that arrived beyond the payer's last
receipt of the request:

- the answer's usage, when the stream got that far (the answer ended, its final
  receipt did not arrive), its completion within the request's ``max_tokens``;
- else the tokens counted as they arrived (as running receipts are checked), with
  the prompt the last running receipt counts;
- with no running receipt the prompt's size is the node's to know: the payer
  counts the largest prompt that both the voucher (with the request's
  ``max_tokens``) and the model's context leave room for.

Never more than the request's maximum (its voucher's amount beyond the charged
total) less the receipt held, and nothing when no token arrived beyond that
receipt: a buyer counts only tokens it got.
"""

from __future__ import annotations

from agoranet.market import PER_MILLION, TokenPrices, cost
from agoranet.payments.receipts import Receipt

__all__ = ["unreceipted_cost"]


def unreceipted_cost(prices: TokenPrices, max_amount: int, running: Receipt | None,
                     arrived: int, *, usage: tuple[int, int] | None = None,
                     max_tokens: int | None = None, context_length: int | None = None) -> int:
    """What the node can charge beyond ``running`` (the last running receipt held, if any)
    for a stream of a request allowed to cost ``max_amount`` that broke off after
    ``arrived`` tokens (``usage``: its (prompt, completion) tokens, if they arrived);
    base units, at ``prices``."""
    held = running.amount if running is not None else 0
    room = max(0, max_amount - held)
    prompt: int | None
    if usage is not None:
        prompt, tokens = usage
        if max_tokens is not None:
            tokens = min(tokens, max_tokens)
    elif arrived <= (running.tokens_out if running is not None else 0):
        return 0
    else:
        prompt, tokens = None, arrived
    if running is not None:
        prompt = running.tokens_in  # signed by the node: no guess needed
    if prompt is None:
        prompt = _largest_prompt(prices, max_amount, tokens, max_tokens, context_length)
        if prompt is None:
            return room
    return min(room, max(0, cost(prices, max(0, prompt), max(0, tokens)) - held))


def _largest_prompt(prices: TokenPrices, max_amount: int, arrived: int,
                    max_tokens: int | None, context_length: int | None) -> int | None:
    """The most prompt tokens a request could have had: the node took a voucher of
    ``max_amount`` for its worst case (the prompt plus ``max_tokens``), and the prompt
    and the ``arrived`` tokens fit in the model's context. None if neither is known."""
    if prices.input_per_million == 0:
        return 0  # the prompt costs nothing, whatever its size
    bounds = []
    if context_length is not None:
        bounds.append(context_length - arrived)
    if max_tokens is not None:
        bounds.append((max_amount * PER_MILLION - max_tokens * prices.output_per_million)
                      // prices.input_per_million)
    return max(0, min(bounds)) if bounds else None
