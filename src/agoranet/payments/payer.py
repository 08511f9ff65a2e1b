"""The payer: pays one node over one ``batch-settlement`` channel, checking its receipts.

Given a node URL and a wallet key (or a budgeted sub-key), a :class:`Payer`
reads the node's signed offer, opens a channel with a deposit the caller sizes,
and for each request signs the next cumulative voucher: what the node has
charged so far plus this request's maximum. After each answer it verifies the
node's signed receipt (signer, channel, request id, price of the tokens, never
above the maximum, cumulative in step) before it believes it -- for a stream
that breaks, its last running receipt, which never counts more tokens than
arrived -- keeps its state
and every receipt on disk (:mod:`agoranet.payments.payer_store`), tops up when the deposit runs short, and withdraws
what is left at the end. :mod:`agoranet.payments.httpx_auth` plugs it into any
httpx client.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherFields
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.schemas import PaymentPayload, PaymentRequirements

from agoranet.chain.addresses import ChainAddresses
from agoranet.errors import PaymentError, ReceiptError
from agoranet.payments import x402wire
from agoranet.payments.channels import new_config, open_channel, read_channel
from agoranet.payments.ecdsa import DigestSigner
from agoranet.payments.payer_store import PayerStore
from agoranet.payments.pricing import TokenPrices, cost, with_commitments
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.subkeys import RevokeOutcome, SubKey, revoke
from agoranet.payments.verifier import voucher_digest
from agoranet.registry.offer import Offer
from agoranet.registry.signing import offer_signer

__all__ = ["ChannelState", "Payer", "PendingPayment"]


@dataclass
class ChannelState:
    """What the payer knows of its channel; amounts in base units."""

    channel_id: str
    config: dict[str, Any]
    deposited: int = 0
    charged: int = 0
    voucher: int = 0
    receipts: int = 0
    spent: int = 0


@dataclass(frozen=True)
class PendingPayment:
    request_id: str
    max_amount: int
    voucher: int
    charged_before: int
    header: str


class Payer:
    """Pays one node from one channel. Thread-safe; one request at a time per channel."""

    def __init__(self, node_url: str, w3: Web3, addresses: ChainAddresses, *,
                 account: LocalAccount | None = None, subkey: SubKey | None = None,
                 state_dir: Path, max_per_request: int | None = None,
                 top_up: int = 0, http: httpx.Client | None = None) -> None:
        if (account is None) == (subkey is None):
            raise PaymentError("a payer needs exactly one of a wallet account or a sub-key")
        self.root = node_url.rstrip("/").removesuffix("/v1")
        self.w3, self.addresses = w3, addresses
        self.account, self.subkey = account, subkey
        self.state_dir = state_dir
        self.max_per_request = max_per_request
        self.top_up_amount = top_up
        self._http = http or httpx.Client(timeout=30.0)
        self.lock = threading.Lock()
        self.offer = self._read_offer()
        terms = self.offer.payment
        assert terms is not None
        self.node = Web3.to_checksum_address(terms.pay_to)
        self.network = terms.network
        self.chain_id = int(terms.network.split(":")[1])
        self._voucher_key: DigestSigner | None = None
        self._store = PayerStore(state_dir)
        self.state: ChannelState | None = self._load()
        if subkey is not None and self.state is None:
            self.state = ChannelState(subkey.channel_id.lower(), subkey.config.to_dict(),
                                      deposited=subkey.deposit)
            self._save()

    # ------------------------------------------------------------ setup

    def _read_offer(self) -> Offer:
        try:
            offer = Offer.model_validate_json(self._http.get(
                f"{self.root}/.well-known/agoranet").raise_for_status().content)
        except (httpx.HTTPError, ValueError) as exc:
            raise PaymentError(f"cannot read the node's offer at {self.root}: {exc}") from exc
        if offer.payment is None:
            raise PaymentError(f"the node at {self.root} does not sell for payment")
        try:
            signer = offer_signer(offer)
        except ValueError as exc:
            raise PaymentError(f"the node's offer signature is invalid: {exc}") from None
        if signer != Web3.to_checksum_address(offer.payment.pay_to):
            raise PaymentError(f"the offer is signed by {signer}, not its payee")
        if offer.payment.asset.lower() != self.addresses.require_stablecoin().lower():
            raise PaymentError(f"the node wants token {offer.payment.asset}, not ours")
        return offer

    def prices(self, model: str, *, commitments: bool = False) -> TokenPrices:
        """The offer's prices for ``model`` (an adapter's surcharge included), and with the
        commitments surcharge for a request that asks for them."""
        for m in self.offer.models:
            if m.id == model.partition("@")[0]:
                surcharge = m.adapters.surcharge if "@" in model else None
                prices = TokenPrices(
                    m.price.input_per_million + (surcharge.input_per_million if surcharge else 0),
                    m.price.output_per_million + (surcharge.output_per_million if surcharge else 0))
                if commitments:
                    prices = with_commitments(prices, m.commitments.price_per_million)
                return prices
        raise PaymentError(f"the node does not offer model {model!r}")

    def _load(self) -> ChannelState | None:
        data = self._store.load()
        return ChannelState(**data) if data is not None else None

    def _save(self, receipt: Receipt | None = None) -> None:
        assert self.state is not None
        self._store.save(self.state, receipt)

    def open(self, deposit: int) -> str:
        """Open (or top up) the channel to this node with ``deposit``; the channel id."""
        if self.account is None:
            raise PaymentError("a sub-key's channel is funded by its owner's wallet")
        if self.state is None:
            terms = self.offer.payment
            assert terms is not None
            config = new_config(self.addresses, payer=self.account.address, receiver=self.node,
                                receiver_authorizer=terms.receiver_authorizer,
                                payer_authorizer=self.account.address,
                                withdraw_delay=terms.withdraw_delay)
            self.state = ChannelState(compute_channel_id(config, self.chain_id).lower(),
                                      config.to_dict())
        open_channel(self.w3, self.addresses, self.account, self.config, deposit)
        self.state.deposited += deposit
        self._save()
        return self.state.channel_id

    @property
    def config(self) -> ChannelConfig:
        assert self.state is not None
        return ChannelConfig.from_dict(self.state.config)

    # ------------------------------------------------------------ paying

    def _sign_voucher(self, amount: int) -> VoucherFields:
        """The voucher for ``amount``, signed through libsecp256k1 (the SDK's ``sign_voucher``
        gives the same bytes -- RFC 6979 nonces, tested -- at a quarter of the speed)."""
        assert self.state is not None
        if self._voucher_key is None:
            key = self.subkey.account() if self.subkey is not None else self.account
            assert key is not None
            self._voucher_key = DigestSigner(bytes(key.key))
        signature = self._voucher_key.sign(
            voucher_digest(self.state.channel_id, amount, self.chain_id))
        return VoucherFields(channel_id=self.state.channel_id, max_claimable_amount=str(amount),
                             signature="0x" + signature.hex())

    def pay(self, max_amount: int, request_id: str | None = None) -> PendingPayment:
        """The ``PAYMENT-SIGNATURE`` for a request allowed to cost up to ``max_amount``."""
        if self.state is None:
            raise PaymentError("no channel: call open(deposit) first")
        voucher = self.state.charged + max_amount
        if voucher > self.state.deposited:
            if self.top_up_amount <= 0 or self.account is None:
                raise PaymentError(f"the channel's deposit ({self.state.deposited}) does not "
                                   f"cover the next voucher ({voucher}): top it up")
            self.open(max(self.top_up_amount, voucher - self.state.deposited))
        fields = self._sign_voucher(voucher)
        terms = self.offer.payment
        assert terms is not None
        accepted = PaymentRequirements(
            scheme=SCHEME_BATCH_SETTLEMENT, network=self.network, asset=terms.asset,
            amount=str(max_amount), pay_to=terms.pay_to, max_timeout_seconds=3600,
            extra={"receiverAuthorizer": terms.receiver_authorizer,
                   "withdrawDelay": terms.withdraw_delay, "name": terms.token_name,
                   "version": terms.token_version})
        payload = PaymentPayload(payload={"type": "voucher", "channelConfig": self.state.config,
                                          "voucher": fields.to_dict()}, accepted=accepted)
        return PendingPayment(request_id or uuid.uuid4().hex, max_amount, voucher,
                              self.state.charged, x402wire.encode_model(payload))

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str,
               *, max_tokens: int | None = None, min_tokens_out: int = 0,
               commitments: bool = False) -> Receipt:
        """Check the node's payment response for ``pending``; the verified receipt."""
        receipt = self.check(pending, response, model, max_tokens=max_tokens,
                             min_tokens_out=min_tokens_out, commitments=commitments)
        self.adopt(pending, receipt)
        return receipt

    def check(self, pending: PendingPayment, response: dict[str, Any], model: str, *,
              max_tokens: int | None = None, min_tokens_out: int = 0,
              max_tokens_out: int | None = None, commitments: bool = False) -> Receipt:
        """The verified receipt in the node's payment response for ``pending``, not yet
        adopted. A running receipt (mid-stream) is checked with ``max_tokens_out``: it
        may not count more tokens than have arrived."""
        assert self.state is not None
        try:
            receipt = Receipt.from_json(response["extra"]["receipt"])
            charged = int(response["extra"]["chargedAmount"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReceiptError(f"the node's payment response has no receipt: {exc}") from None
        verify_receipt(receipt, self.node)
        expected = cost(self.prices(model, commitments=commitments), receipt.tokens_in,
                        receipt.tokens_out)
        problems = [
            (receipt.request_id != pending.request_id, "is for another request"),
            (receipt.channel_id != self.state.channel_id, "is for another channel"),
            (receipt.chain_id != self.chain_id, "is for another chain"),
            (receipt.amount != charged, "disagrees with chargedAmount"),
            (receipt.amount > pending.max_amount, "charges more than the voucher allowed"),
            (receipt.amount != expected, f"charges {receipt.amount}, the tokens cost {expected}"),
            (receipt.cumulative != pending.charged_before + receipt.amount,
             "has a cumulative out of step"),
            (max_tokens is not None and receipt.tokens_out > max_tokens,
             "counts more tokens than max_tokens"),
            (receipt.tokens_out < min_tokens_out, "counts fewer tokens than were received"),
            (max_tokens_out is not None and receipt.tokens_out > max_tokens_out,
             "counts more tokens than have arrived"),
        ]
        for bad, why in problems:
            if bad:
                raise ReceiptError(f"receipt {receipt.request_id} {why}")
        return receipt

    def adopt(self, pending: PendingPayment, receipt: Receipt) -> None:
        """Believe ``receipt`` (checked by :meth:`check`): the request's final charge."""
        assert self.state is not None
        self.state.charged = receipt.cumulative
        self.state.voucher = max(self.state.voucher, pending.voucher)
        self.state.receipts += 1
        self.state.spent += receipt.amount
        self._save(receipt)

    def resync(self, corrective: dict[str, Any]) -> bool:
        """Adopt the node's charged total from a corrective 402 if our own signature backs it."""
        assert self.state is not None
        state, proof = corrective.get("channelState"), corrective.get("voucherState")
        if not isinstance(state, dict) or str(state.get("channelId", "")).lower() != \
                self.state.channel_id:
            return False
        charged = int(state.get("chargedCumulativeAmount", -1))
        if isinstance(proof, dict):
            signed = int(proof.get("signedMaxClaimable", 0))
            mine = self._sign_voucher(signed)
            if mine.signature.lower() != str(proof.get("signature", "")).lower():
                return False
        else:
            signed = int(state.get("totalClaimed", 0))
        if not 0 <= charged <= signed:
            return False
        self.state.charged = charged
        self.state.voucher = max(self.state.voucher, signed)
        self._save()
        return True

    def receipts(self) -> list[Receipt]:
        return self._store.receipts()

    # ------------------------------------------------------------ ending

    def withdraw(self, *, advance_time: bool = False) -> RevokeOutcome:
        """Take back what the node has not claimed (timed withdrawal of the escrow)."""
        if self.account is None:
            raise PaymentError("only the wallet that funded the channel can withdraw")
        return revoke(self.w3, self.addresses, self.account, self.config,
                      advance_time=advance_time)

    def onchain(self) -> tuple[int, int]:
        """(balance, total claimed) of the channel on chain."""
        info = read_channel(self.w3, self.addresses, self.config)
        return info.balance, info.total_claimed

    def close(self) -> None:
        self._http.close()
        self._store.close()
