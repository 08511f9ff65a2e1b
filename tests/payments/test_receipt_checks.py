"""#21: every receipt check of the payer is caught by a node that violates exactly it.

Each case serves an in-process paid node on the dev chain whose receipts tell one
lie (the signature stays valid: the node signs its lie), pays it through
:class:`~agoranet.payments.pay.httpx_auth.PayerAuth`, and expects the payer to refuse
the receipt for that reason and believe nothing of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.errors import ReceiptError
from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt, ReceiptSigner

from .conftest import Env
from .lying import Lie, LyingSigner, priced
from .money import receipted
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}  # the engine answers 3 tokens: 3*1000 + 3*2000 = 9,000


def _same(r: Receipt, n: int) -> Receipt:
    return r


@dataclasses.dataclass
class Case:
    lie: Lie
    why: str  # the payer's reason, in its ReceiptError
    stream: bool = False
    receipt_every: int = 0
    body: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(BODY))
    other_key: bool = False
    charged_amount_off: int = 0  # a lie in the payment response's chargedAmount instead
    no_receipt: bool = False  # the payment response carries no receipt at all
    max_per_request: int = 20_000


CASES = {
    "signer": Case(_same, "is signed by", other_key=True),
    "request": Case(lambda r, n: dataclasses.replace(r, request_id="not-" + r.request_id),
                    "is for another request"),
    "channel": Case(lambda r, n: dataclasses.replace(r, channel_id="0x" + "ab" * 32),
                    "is for another channel"),
    "chain": Case(lambda r, n: dataclasses.replace(r, chain_id=r.chain_id + 1),
                  "is for another chain"),
    "charged-amount": Case(_same, "disagrees with chargedAmount", charged_amount_off=1),
    "no-receipt": Case(_same, "^the node's payment response has no receipt: 'receipt'$",
                       no_receipt=True),
    # no max_tokens: the node's worst case is the request's maximum, and the lie beyond it
    # (in a stream: its ledger would refuse to charge above the voucher, but the final
    # receipt is signed and sent before it is charged)
    "over-the-voucher": Case(lambda r, n: priced(r, r.tokens_out + 100),
                             "charges more than the voucher allowed", stream=True,
                             body={k: v for k, v in BODY.items() if k != "max_tokens"},
                             max_per_request=1),
    "price": Case(lambda r, n: dataclasses.replace(r, tokens_out=r.tokens_out + 1),
                  "the tokens cost"),
    "cumulative": Case(lambda r, n: dataclasses.replace(r, cumulative=r.cumulative + 1),
                       "cumulative out of step"),
    "max-tokens": Case(lambda r, n: priced(r, 7), "counts more tokens than max_tokens"),
    "max-tokens-stream": Case(lambda r, n: priced(r, 7), "counts more tokens than max_tokens",
                              stream=True),
    "fewer-than-received": Case(lambda r, n: priced(r, r.tokens_out - 1),
                                "counts fewer tokens than were received", stream=True),
    "running-ahead-of-tokens": Case(
        lambda r, n: priced(r, r.tokens_out + 1) if n == 1 else r,
        "counts more tokens than have arrived", stream=True, receipt_every=1),
    "running-went-down": Case(lambda r, n: priced(r, 0) if n == 2 else r, "went down",
                              stream=True, receipt_every=1),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_the_payer_refuses_a_receipt_that_breaks_exactly_one_check(
        name: str, env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    case = CASES[name]
    account: LocalAccount = Account.from_key(env.dev.private_keys[7])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, receipt_every=case.receipt_every)
    acceptor = payments.acceptor
    acceptor.signer = LyingSigner(  # type: ignore[assignment]
        acceptor.signer, case.lie, ReceiptSigner(bytes(Account.create().key))
        if case.other_key else None)
    if case.charged_amount_off or case.no_receipt:
        batch: Any = acceptor.scheme("batch-settlement")  # its payment responses
        honest = batch.voucher_response

        def lying(network: str, auth: Any, receipt: Receipt) -> Any:
            response = honest(network, auth, receipt)
            extra = {**(response.extra or {}),
                     "chargedAmount": str(receipt.amount + case.charged_amount_off)}
            if case.no_receipt:
                del extra["receipt"]
            return response.model_copy(update={"extra": extra})

        batch.voucher_response = lying
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=case.receipt_every),
                     None, payments)
    body = {**case.body, "stream": case.stream}
    async with served(app) as url:
        def run() -> Payer:
            p = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "p",
                      max_per_request=case.max_per_request)
            p.open(1_000_000)
            with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30) as http, \
                    pytest.raises(ReceiptError, match=case.why):
                if case.stream:
                    with http.stream("POST", "/v1/chat/completions", json=body) as answer:
                        assert answer.status_code == 200
                        answer.read()
                else:
                    http.post("/v1/chat/completions", json=body)
            return p

        p = await asyncio.to_thread(run)
    assert p.state is not None
    # believed nothing of the lie (a running receipt that passed before it stays held);
    # tokens of a cut stream that came without a receipt it believes count as spent
    # against the node, never as owed (payments.unreceipted)
    assert p.state.charged == receipted(p)
    assert p.state.spent == receipted(p) + sum(p.state.unreceipted.values())
    assert bool(p.state.unreceipted) == (name in ("running-ahead-of-tokens",
                                                  "running-went-down"))
    assert all(r.tokens_out <= 3 for r in p.receipts())
    p.close()
