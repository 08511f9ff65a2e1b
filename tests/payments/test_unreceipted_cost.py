"""What a stream cut before its final receipt may cost beyond its last receipt (the rule of
:mod:`agoranet.payments.pay.unreceipted`, without a node or a chain): the tokens that arrived
after the receipt at the listed prices, the answer's usage when it came, the largest
prompt the voucher and the context allow when no receipt says it, never beyond the
voucher and never for tokens that did not arrive."""

from __future__ import annotations

from eth_account import Account

from agoranet.market import TokenPrices
from agoranet.payments.pay.unreceipted import unreceipted_cost
from agoranet.payments.receipts import Receipt, ReceiptSigner

PRICES = TokenPrices(1_000_000_000, 2_000_000_000)  # 1,000 a prompt token, 2,000 an answer's
NODE = ReceiptSigner(bytes(Account.create().key))
MAX = 30_000


def running(tokens_in: int, tokens_out: int) -> Receipt:
    amount = tokens_in * 1000 + tokens_out * 2000
    return NODE.sign(Receipt("r1", "0x" + "cd" * 32, tokens_in, tokens_out, amount,
                             5_000 + amount, 31337))


def test_tokens_after_the_running_receipt_cost_the_listed_price_with_its_prompt() -> None:
    held = running(3, 4)
    assert unreceipted_cost(PRICES, MAX, held, 10) == 6 * 2000
    assert unreceipted_cost(PRICES, MAX, held, 10, max_tokens=12) == 6 * 2000


def test_nothing_beyond_the_receipt_arrived_nothing_is_counted() -> None:
    assert unreceipted_cost(PRICES, MAX, running(3, 8), 8) == 0
    assert unreceipted_cost(PRICES, MAX, running(3, 8), 7) == 0  # never below the receipt
    assert unreceipted_cost(PRICES, MAX, None, 0, max_tokens=12, context_length=64) == 0


def test_never_beyond_the_voucher() -> None:
    held = running(3, 4)
    assert unreceipted_cost(PRICES, 20_000, held, 10) == 20_000 - held.amount
    # a usage that claims more than was asked is held to max_tokens, then to the voucher
    assert unreceipted_cost(PRICES, MAX, held, 10, usage=(3, 500), max_tokens=12) == \
        3 * 1000 + 12 * 2000 - held.amount
    assert unreceipted_cost(PRICES, MAX, held, 10, usage=(3, 500)) == MAX - held.amount


def test_the_answers_usage_counts_when_it_arrived() -> None:
    # the answer ended (11 tokens, one without text) but its final receipt never came
    held = running(3, 8)
    assert unreceipted_cost(PRICES, MAX, held, 10, usage=(3, 11), max_tokens=12) == 3 * 2000
    assert unreceipted_cost(PRICES, MAX, None, 10, usage=(3, 11)) == 3 * 1000 + 11 * 2000


def test_without_a_receipt_the_largest_prompt_the_voucher_and_context_allow() -> None:
    # worst case of prompt P plus 12 tokens fits 30,000: P <= 6
    assert unreceipted_cost(PRICES, MAX, None, 5, max_tokens=12) == 6 * 1000 + 5 * 2000
    # the context (P + 5 arrived <= 9) is tighter
    assert unreceipted_cost(PRICES, MAX, None, 5, max_tokens=12, context_length=9) == \
        4 * 1000 + 5 * 2000
    # neither known: all the voucher allows
    assert unreceipted_cost(PRICES, MAX, None, 5) == MAX
    # a free prompt: only the tokens that arrived
    assert unreceipted_cost(TokenPrices(0, 2_000_000_000), MAX, None, 5) == 5 * 2000
