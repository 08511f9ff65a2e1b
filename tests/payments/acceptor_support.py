"""A PaymentAcceptor on a fake chain (a channel state and settlers the test sets), with a
real SQLite ledger and real receipt signatures, and hand-made x402 payments for it."""

from __future__ import annotations

import time
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

from agoranet.chain.executor import ChainExecutor
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentAcceptor, PaymentTerms
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import OnchainState, StateCache
from agoranet.payments.receipts import ReceiptSigner

CHAIN = 31337
NETWORK = f"eip155:{CHAIN}"
NODE: LocalAccount = Account.create()
PAYER: LocalAccount = Account.create()
TOKEN = Account.create().address
OTHER = Account.create().address
DEPOSIT = 1_000_000
WORST = 13_000
MAX = 20_000
BATCH = "batch-settlement"
TERMS = PaymentTerms(chain_id=CHAIN, asset=TOKEN, pay_to=NODE.address,
                     receiver_authorizer=NODE.address, token_name="USD Coin", token_version="2")
CONFIG = ChannelConfig.from_dict({
    "payer": PAYER.address, "payerAuthorizer": PAYER.address, "receiver": NODE.address,
    "receiverAuthorizer": NODE.address, "token": TOKEN, "withdrawDelay": 900,
    "salt": "0x" + "00" * 32})
CID = compute_channel_id(CONFIG, CHAIN).lower()


class Chain:
    """The channel's on-chain state as the node reads it, and the settlers' answers."""

    def __init__(self) -> None:
        self.balance = DEPOSIT
        self.claimed = 0
        self.reads = 0
        self.verify: Any = VerifyResponse(is_valid=True, payer=PAYER.address)
        self.settle: Any = SettleResponse(success=True, transaction="0xtx", network=NETWORK,
                                          payer=PAYER.address)
        self.settled: list[PaymentRequirements] = []
        self.delay = 0.0  # seconds each verify call takes
        self.settle_delay = 0.0  # ... and each settle call

    def read(self, channel_id: str) -> OnchainState:
        self.reads += 1
        return OnchainState(self.balance, self.claimed, 0, 0, time.monotonic())

    def verifier(self, payment: PaymentPayload, requirements: PaymentRequirements) -> Any:
        time.sleep(self.delay)
        if isinstance(self.verify, BaseException):
            raise self.verify
        return self.verify

    def settler(self, payment: PaymentPayload, requirements: PaymentRequirements) -> Any:
        time.sleep(self.settle_delay)
        self.settled.append(requirements)
        if isinstance(self.settle, BaseException):
            raise self.settle
        return self.settle


def acceptor(chain: Chain, ledger: SqliteLedger, executor: ChainExecutor, *,
             exact: bool = True, deposits: bool = True,
             terms: PaymentTerms = TERMS) -> PaymentAcceptor:
    cache = StateCache(chain.read, ttl=60.0, executor=executor)
    return PaymentAcceptor(
        terms, ledger, cache, ReceiptSigner(bytes(NODE.key)),
        deposits=chain.settler if deposits else None,
        deposit_verify=chain.verifier if deposits else None,
        exact=chain.settler if exact else None, exact_verify=chain.verifier if exact else None)


def accepted(scheme: str = BATCH, amount: int | str = MAX, **change: Any) -> dict[str, Any]:
    return {"scheme": scheme, "network": NETWORK, "asset": TOKEN, "amount": str(amount),
            "payTo": NODE.address, "maxTimeoutSeconds": 3600,
            "extra": {"receiverAuthorizer": NODE.address, "withdrawDelay": 900}, **change}


def voucher_payload(amount: int, kind: str = "voucher") -> dict[str, Any]:
    fields = sign_voucher(EthAccountSigner(PAYER), CID, amount, NETWORK)
    out: dict[str, Any] = {"type": kind, "channelConfig": CONFIG.to_dict(),
                           "voucher": fields.to_dict()}
    if kind == "deposit":
        out["deposit"] = {"amount": str(DEPOSIT)}
    return out


def pay(voucher: int, max_amount: int | str = MAX, kind: str = "voucher",
        **change: Any) -> str:
    return x402wire.encode_json({"x402Version": 2, "payload": voucher_payload(voucher, kind),
                                 "accepted": accepted(amount=max_amount, **change)})


NONCE = "0x" + "AB" * 32


def exact_pay(amount: int = MAX, **auth: Any) -> str:
    authorization = {"from": PAYER.address, "to": NODE.address, "value": str(amount),
                     "validAfter": "0", "validBefore": "99999999999", "nonce": NONCE, **auth}
    return x402wire.encode_json({
        "x402Version": 2, "accepted": accepted("exact", amount, extra={"name": "USD Coin"}),
        "payload": {"authorization": authorization, "signature": "0x" + "44" * 65}})
