"""Payment schemes as plug-ins: the registry, and a toy third scheme added as one module.

The toy scheme ``iou`` (defined here, as a new scheme's module would be) is registered
by name; a node's acceptor built with its server half lists it in a 402, dispatches a
payment in it to that half (authorize, settle, charge, progress, release), and still
refuses a scheme it does not hold with the usual 402 listing what it takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import pytest
from eth_account import Account
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import PaymentRequiredError, UnknownSchemeError
from agoranet.market import TokenPrices
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentAcceptor
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import StateCache
from agoranet.payments.receipts import Receipt, ReceiptSigner, verify_receipt
from agoranet.payments.schemes import (
    SCHEME_BATCH_SETTLEMENT,
    SCHEME_EXACT,
    Authorization,
    BatchSettlementClient,
    BatchSettlementServer,
    ChainAccess,
    ClientPayment,
    ExactClient,
    ExactServer,
    Paid,
    PaymentTerms,
    Scheme,
    ServerContext,
    available_schemes,
    find,
    get_scheme,
    register_scheme,
    registry,
    scheme_client,
    scheme_server,
    unregister_scheme,
)

from .acceptor_support import (
    CHAIN,
    MAX,
    NETWORK,
    NODE,
    PAYER,
    TERMS,
    TOKEN,
    WORST,
    Chain,
    exact_pay,
    pay,
)

pytestmark = pytest.mark.timeout(30)

IOU: Final = "iou"


# ------------------------------------------------------------------ the toy scheme's module


class IouServer:
    """Takes a signed-by-nobody promise to pay: each request is charged its usage and the
    promises are kept in memory (a toy: it shows the plumbing, not a way to get paid)."""

    name: Final = IOU

    def __init__(self, chain: ChainAccess | None = None) -> None:
        self.chain = chain
        self.owed: dict[str, int] = {}  # by payer
        self.settled: list[str] = []
        self.running: list[int] = []
        self.worst: list[int] = []  # the worst cases it was asked to authorize

    @property
    def offered(self) -> bool:
        return True

    def requirement(self, ctx: ServerContext, amount: int, prices: TokenPrices | None,
                    corrective: dict[str, Any] | None) -> PaymentRequirements:
        return ctx.terms.requirement(IOU, amount, prices)

    def holds_ahead(self, payment: PaymentPayload) -> bool:
        return False  # it wants to be told each request's worst case

    async def authorize(self, ctx: ServerContext, payment: PaymentPayload, max_amount: int,
                        worst: int, request_id: str) -> Authorization:
        self.worst.append(worst)
        who = payment.payload.get("from")
        if not isinstance(who, str):
            raise PaymentRequiredError("an iou names who owes", reason="invalid_iou")
        return Authorization(IOU, request_id, who, max_amount,
                             ctx.terms.requirement(IOU, max_amount), signer=who)

    async def settle(self, ctx: ServerContext, auth: Authorization) -> SettleResponse | None:
        self.settled.append(auth.request_id)
        return None

    def charge(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
               amount: int, quoted: Receipt | None) -> tuple[Receipt, SettleResponse]:
        charged = min(amount, auth.max_amount)
        self.owed[auth.payer] = self.owed.get(auth.payer, 0) + charged
        receipt = ctx.signer.sign(Receipt(auth.request_id, "0x" + "11" * 32, tokens_in,
                                          tokens_out, charged, self.owed[auth.payer],
                                          ctx.terms.chain_id))
        return receipt, SettleResponse(success=True, transaction="", network=ctx.terms.network,
                                       payer=auth.payer, extra={"receipt": receipt.to_json()})

    def quote(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
              amount: int) -> tuple[Receipt, SettleResponse] | None:
        return None

    def progress(self, ctx: ServerContext, auth: Authorization, tokens_in: int,
                 tokens_out: int, amount: int) -> dict[str, Any] | None:
        self.running.append(amount)
        return {"success": True, "extra": {"running": True, "chargedAmount": str(amount)}}

    def release(self, ctx: ServerContext, auth: Authorization) -> Receipt | None:
        return None


class IouClient:
    name: Final = IOU

    def __init__(self, who: str) -> None:
        self.who = who

    def pay(self, requirement: PaymentRequirements, request_id: str | None = None
            ) -> ClientPayment:
        header = x402wire.encode_model(PaymentPayload(
            x402_version=2, accepted=requirement, payload={"from": self.who}))
        return ClientPayment(IOU, request_id or "r", int(requirement.amount), header)

    def check(self, payment: ClientPayment, response: dict[str, Any], *, model: str = "",
              max_tokens: int | None = None) -> Paid:
        return Paid(Receipt.from_json(response["extra"]["receipt"]).amount)

    def adopt(self, required: PaymentRequired) -> bool:
        return False


def iou_extra(terms: PaymentTerms, amount: int) -> dict[str, Any]:
    return {"iouLimit": str(10 * amount)}


def iou_scheme() -> Scheme:
    return Scheme(IOU, IouServer, IouClient, iou_extra)


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def registered() -> Iterator[Scheme]:
    scheme = register_scheme(iou_scheme())
    try:
        yield scheme
    finally:
        unregister_scheme(IOU)


@pytest.fixture
def executor() -> Iterator[ChainExecutor]:
    ex = ChainExecutor(workers=1, timeout=1.0)
    yield ex
    ex.close()


@pytest.fixture
def ledger() -> Iterator[SqliteLedger]:
    store = SqliteLedger(":memory:")
    yield store
    store.close()


def node_with_iou(chain: Chain, ledger: SqliteLedger, executor: ChainExecutor,
                  iou: IouServer) -> PaymentAcceptor:
    terms = PaymentTerms(chain_id=CHAIN, asset=TOKEN, pay_to=NODE.address,
                         receiver_authorizer=NODE.address, token_name="USD Coin",
                         token_version="2", schemes=(SCHEME_BATCH_SETTLEMENT, SCHEME_EXACT, IOU))
    return PaymentAcceptor(terms, ledger, StateCache(chain.read, ttl=60.0, executor=executor),
                           ReceiptSigner(bytes(NODE.key)), schemes=[
                               BatchSettlementServer(chain.settler, chain.verifier),
                               ExactServer(chain.settler, chain.verifier), iou])


def iou_header(acc: PaymentAcceptor, amount: int = MAX, **change: Any) -> str:
    client = scheme_client(IOU, who=PAYER.address)
    requirement = acc.terms.requirement(IOU, amount).model_copy(update=change)
    return client.pay(requirement).header


# ------------------------------------------------------------------ the registry


def test_the_built_in_schemes_are_registered_with_both_halves() -> None:
    assert {SCHEME_BATCH_SETTLEMENT, SCHEME_EXACT} <= set(available_schemes())
    assert available_schemes() == sorted(available_schemes())
    batch = scheme_server(SCHEME_BATCH_SETTLEMENT)
    assert isinstance(batch, BatchSettlementServer) and batch.offered
    assert batch.deposits is None and batch.deposit_verify is None  # no chain: no deposits
    exact = scheme_server(SCHEME_EXACT)
    assert isinstance(exact, ExactServer) and not exact.offered  # no chain: not offered
    client = scheme_client(SCHEME_EXACT, account=PAYER, max_amount=5)
    assert isinstance(client, ExactClient) and client.max_amount == 5
    assert get_scheme(SCHEME_BATCH_SETTLEMENT).client is BatchSettlementClient
    assert find("nope") is None


def test_an_unknown_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        scheme_server("upto")
    assert str(info.value) == ("unknown payment scheme 'upto'; known schemes: "
                               + ", ".join(available_schemes()))
    with pytest.raises(UnknownSchemeError, match="unknown payment scheme 'upto'"):
        scheme_client("upto", account=PAYER)


def test_with_nothing_registered_the_refusal_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_SCHEMES", {})
    assert available_schemes() == []
    with pytest.raises(UnknownSchemeError) as info:
        get_scheme(SCHEME_EXACT)
    assert str(info.value) == "unknown payment scheme 'exact'; known schemes: none"


def test_a_registered_scheme_is_found_and_forgotten(registered: Scheme) -> None:
    assert IOU in available_schemes() and get_scheme(IOU) is registered
    assert isinstance(scheme_server(IOU), IouServer) and scheme_server(IOU).chain is None
    access = ChainAccess(tx_signer=object(), key="0x" + "01" * 32)
    built = scheme_server(IOU, access)  # the node's chain access reaches the factory
    assert isinstance(built, IouServer) and built.chain is access
    assert isinstance(scheme_client(IOU, who="me"), IouClient)
    # its requirement extra goes into every requirement in its name
    assert TERMS.requirement(IOU, 7).extra == {"name": "USD Coin", "version": "2",
                                               "iouLimit": "70"}
    unregister_scheme(IOU)
    assert IOU not in available_schemes() and find(IOU) is None
    assert TERMS.requirement(IOU, 7).extra == {"name": "USD Coin", "version": "2"}
    unregister_scheme(IOU)  # forgetting twice is fine


def test_the_built_in_requirement_extras() -> None:
    batch = TERMS.requirement(SCHEME_BATCH_SETTLEMENT, 10)
    assert batch.extra == {"name": "USD Coin", "version": "2",
                           "receiverAuthorizer": NODE.address, "withdrawDelay": 900,
                           "assetTransferMethod": "eip3009"}
    assert TERMS.requirement(SCHEME_EXACT, 10).extra == {"name": "USD Coin", "version": "2"}


# ------------------------------------------------------------------ the acceptor dispatches


async def test_the_acceptor_dispatches_a_toy_scheme_to_its_server_half(
        registered: Scheme, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain, iou = Chain(), IouServer()
    acc = node_with_iou(chain, ledger, executor, iou)
    assert acc.scheme(IOU) is iou
    required = acc.payment_required(WORST, TokenPrices(1, 2), error="x",
                                    corrective={"channelState": {"c": 1}})
    assert [a.scheme for a in required.accepts] == [SCHEME_BATCH_SETTLEMENT, SCHEME_EXACT, IOU]
    entry = required.accepts[2]
    assert entry.amount == str(WORST) and entry.extra["iouLimit"] == str(10 * WORST)
    assert "channelState" not in entry.extra  # the corrective is batch-settlement's
    assert required.accepts[0].extra["channelState"] == {"c": 1}

    auth = await acc.authorize(iou_header(acc), WORST, "r1")
    assert (auth.scheme, auth.payer, auth.max_amount, auth.signer) == \
        (IOU, PAYER.address, MAX, PAYER.address)
    assert iou.worst == [WORST]  # the half is told the request's worst case
    assert await acc.settle(auth) is None and iou.settled == ["r1"]
    assert acc.progress(auth, 3, 2, 500) is not None and iou.running == [500]
    assert acc.quote(auth, 3, 4, 700) is None
    receipt, response = acc.charge(auth, 3, 4, 700)
    verify_receipt(receipt, NODE.address)
    assert (receipt.amount, receipt.cumulative, receipt.request_id) == (700, 700, "r1")
    assert response.extra == {"receipt": receipt.to_json()} and auth.done
    assert acc.release(auth) is None and iou.owed == {PAYER.address: 700}
    assert IouClient("me").check(ClientPayment(IOU, "r1", MAX, ""), response.model_dump()) == \
        Paid(700)
    # nothing of it touched the batch ledger or the chain
    assert chain.reads == 0 and chain.settled == [] and ledger.channel("0x" + "11" * 32) is None
    # the shared checks run before the half: a payment to someone else never reaches it
    problem = await _refusal(acc, iou_header(acc, pay_to=PAYER.address))
    assert problem.reason == "invalid_batch_settlement_evm_receiver_mismatch"
    problem = await _refusal(acc, iou_header(acc, WORST - 1))
    assert problem.reason == "insufficient_amount"
    # and the half's own refusal is the 402 it raises
    bad = x402wire.encode_model(PaymentPayload(
        x402_version=2, accepted=acc.terms.requirement(IOU, MAX), payload={"from": 5}))
    assert (await _refusal(acc, bad)).reason == "invalid_iou"


async def test_a_scheme_the_node_does_not_hold_is_a_402_listing_the_ones_it_takes(
        registered: Scheme, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain = Chain()
    node = PaymentAcceptor(TERMS, ledger, StateCache(chain.read, ttl=60.0, executor=executor),
                           ReceiptSigner(bytes(NODE.key)),
                           exact=chain.settler, exact_verify=chain.verifier)
    # registered, but not in this node's terms: refused, like an unknown name
    for name in (IOU, "upto"):
        problem = await _refusal(node, pay(MAX, scheme=name))
        assert (problem.reason, problem.message, problem.status_code) == \
            ("unsupported_scheme", f"scheme {name!r} is not accepted here", 402)
    assert node.scheme(IOU) is None
    # a half the acceptor holds but the terms do not list: not taken either
    iou = IouServer()
    unlisted = PaymentAcceptor(TERMS, ledger, node.cache, node.signer,
                               schemes=[BatchSettlementServer(), iou])
    problem = await _refusal(unlisted, iou_header(unlisted))
    assert (problem.reason, problem.message) == ("unsupported_scheme",
                                                 "scheme 'iou' is not accepted here")
    assert unlisted.scheme(IOU) is None and iou.worst == []
    assert [a.scheme for a in unlisted.payment_required(WORST, None).accepts] == \
        [SCHEME_BATCH_SETTLEMENT]
    assert [a.scheme for a in node.payment_required(WORST, None).accepts] == \
        [SCHEME_BATCH_SETTLEMENT, SCHEME_EXACT]
    # in the terms but with no half given to the acceptor: the same
    terms = PaymentTerms(chain_id=CHAIN, asset=TOKEN, pay_to=NODE.address,
                         receiver_authorizer=NODE.address, token_name="USD Coin",
                         token_version="2", schemes=(IOU, SCHEME_BATCH_SETTLEMENT))
    halfless = PaymentAcceptor(terms, ledger, node.cache, node.signer,
                               schemes=[BatchSettlementServer()])
    problem = await _refusal(halfless, iou_header(halfless))
    assert (problem.reason, problem.message) == ("unsupported_scheme",
                                                 "scheme 'iou' is not accepted here")
    assert [a.scheme for a in halfless.payment_required(WORST, None).accepts] == \
        [SCHEME_BATCH_SETTLEMENT]
    assert chain.reads == 0 and chain.settled == []


async def test_a_half_not_offered_is_left_out_and_refuses_by_its_name(
        ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain = Chain()
    acc = PaymentAcceptor(TERMS, ledger, StateCache(chain.read, ttl=60.0, executor=executor),
                          ReceiptSigner(bytes(NODE.key)),
                          schemes=[BatchSettlementServer(), ExactServer(chain.settler)])
    assert [a.scheme for a in acc.payment_required(WORST, None).accepts] == \
        [SCHEME_BATCH_SETTLEMENT]
    problem = await _refusal(acc, exact_pay())
    assert (problem.reason, problem.message) == ("unsupported_scheme",
                                                 "this node does not take exact payments")
    assert chain.settled == [] and acc.terms.network == NETWORK


async def _refusal(acc: PaymentAcceptor, header: str) -> PaymentRequiredError:
    with pytest.raises(PaymentRequiredError) as info:
        await acc.authorize(header, WORST, "r-refused")
    return info.value


def test_a_client_half_of_another_scheme_will_not_pay() -> None:
    requirement = TERMS.requirement(SCHEME_BATCH_SETTLEMENT, 10)
    with pytest.raises(Exception, match="cannot pay a batch-settlement requirement"):
        ExactClient(Account.create()).pay(requirement)
