"""The payer: pays one node over one ``batch-settlement`` channel, checking its receipts.

Given a node URL and a wallet key (or a budgeted sub-key), a :class:`Payer`
reads the node's signed offer, opens a channel with a deposit the caller sizes,
and for each request signs the next cumulative voucher: what the node has
charged so far plus this request's maximum. After each answer it verifies the
node's signed receipt (signer, channel, request id, price of the tokens, never
above the maximum, cumulative in step) before it believes it -- for a stream
that breaks, its last running receipt, which never counts more tokens than
arrived -- keeps its state
and every receipt on disk (:mod:`agoranet.payments.pay.payer_store`), tops up when the deposit runs short, and withdraws
what is left at the end. :mod:`agoranet.payments.pay.httpx_auth` plugs it into any
httpx client.

What the payer owes, and a node's corrective 402
------------------------------------------------

A node can claim on chain at most the highest voucher the payer ever signed on
the channel, so that figure (``ChannelState.voucher``) is saved, with the
request it pays for, *before* the voucher leaves (:meth:`Payer.pay`). What the
payer believes it owes (``charged``) is raised only by a receipt it holds.
When a node answers a voucher with a corrective 402 (its charged total differs
from the payer's), :meth:`Payer.resync` applies one rule:

- the node's total is at most the payer's: believed (a node that lost charges
  loses them; believing less never raises what the payer owes);
- it is higher, and the 402 carries the node's signed receipt for a request the
  payer signed a voucher for, has no final receipt of and never refused a
  receipt of (its answer or its receipt was lost, e.g. the payer crashed or the
  stream broke before the final receipt), and that receipt is in step (charged before that request plus
  its amount equals the node's total; its amount within the request's maximum
  and not below a running receipt already held): the receipt is kept and the
  difference counted as spend (``on_resync`` is told) -- a receipt backs it --
  less what a cut stream of that request counted already (below);
- otherwise it is a dispute: nothing the payer holds backs the node's figure,
  and the node can still claim up to the highest voucher the payer signed. So
  ``voucher - charged`` (every unit the node can claim beyond the receipts,
  which bounds whatever it says it charged), less what cut streams counted
  already, is counted as spend and as
  ``disputed``, the ``on_dispute`` callback is told, :class:`~agoranet.errors.
  ChargeDisputeError` is raised, and the payer never signs another voucher on
  that channel (so nothing more can be claimed). The node's own figure is not
  used even when lower: a node that states less and claims more would
  otherwise break "recorded spend >= claimed".

A stream cut before its final receipt (:meth:`Payer.cut`) is charged by the node
its last *recorded* running receipt, which may be one the payer never got: a node
records each before it sends it. So the payer believes the last running receipt it
holds, and counts as spent -- not owed -- what the node can charge beyond it for
the tokens that arrived after it (:mod:`agoranet.payments.pay.unreceipted`), remembered
by request (``ChannelState.unreceipted``) until a receipt for it turns up.

So a node can claim at most the payer's receipts plus one request's headroom,
and the payer's spend counts every unit a node can claim.

A channel the chain no longer backs
-----------------------------------

The store can disagree with the chain: a dev chain restarted without its state,
a channel refunded or being withdrawn, a deposit that never went through.
:meth:`Payer.reconcile` (run when a gateway loads a saved channel, and when a node
refuses a voucher for the channel's on-chain state) reads the channel: one with
no deposit or a withdrawal under way is *retired* -- its state and receipts stay
in the store (:meth:`PayerStore.replace`), nothing it recorded as spent is
forgotten -- and a fresh channel is opened in its place; a deposit that differs
from the store's is adopted. Either way it returns (and logs, and tells
``on_reconcile``) what it did.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
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
from agoranet.errors import (
    CannotPayError,
    ChainError,
    ChargeDisputeError,
    PaymentError,
    ReceiptError,
)
from agoranet.market import ModelName, TokenPrices, cost
from agoranet.payments import x402wire
from agoranet.payments.channels import new_config, open_channel, read_channel
from agoranet.payments.ecdsa import DigestSigner
from agoranet.payments.pay.payer_store import ChannelState, PayerStore
from agoranet.payments.pay.subkeys import RevokeOutcome, SubKey, revoke
from agoranet.payments.pay.unreceipted import unreceipted_cost
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.vouchers import voucher_digest
from agoranet.registry.offer import Offer
from agoranet.registry.signing import offer_signer

__all__ = ["ChannelState", "Dispute", "Payer", "PendingPayment"]

logger = logging.getLogger(__name__)

_KEPT_PAYMENTS = 8  # vouchers remembered until their receipt arrives (one request at a time)


@dataclass(frozen=True)
class Dispute:
    """A node's charged total that no receipt backs; amounts in base units."""

    url: str
    node: str  # its payee address
    channel_id: str
    claimed: int  # the node's charged total, from its corrective 402
    receipted: int  # what the payer's receipts back
    # counted as spend: the highest voucher signed minus ``receipted`` (less what streams
    # cut before their receipts counted as spent already, see Payer.cut)
    exposure: int

    def describe(self) -> str:
        return (f"the node claims {self.claimed} charged on channel {self.channel_id[:10]}… but "
                f"the receipts held back {self.receipted}: {self.exposure} counted as disputed "
                f"spend, and this channel pays it no more")


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
        # Told of a dispute (the gateway counts it as spend and bans the node).
        self.on_dispute: Callable[[Dispute], None] | None = None
        # Told of a receipt adopted from a corrective 402, with the amount it added to
        # what the payer owes (the gateway counts that as spend).
        self.on_resync: Callable[[Receipt, int], None] | None = None
        # Told what :meth:`reconcile` did when the chain disagreed with the store.
        self.on_reconcile: Callable[[str], None] | None = None
        self._jobs: dict[str, PendingPayment] = {}  # fine-tuning jobs' held payments
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
            if m.id == ModelName.base_of(model):
                return m.price_book().prices(model, commitments=commitments)
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

    def credit(self, deposit: int) -> None:
        """Count ``deposit``, already paid into the channel on chain (``open_channel``: a
        top-up run off this thread, see ``agoranet.gateway.node_payer``), in its state."""
        if self.state is None:
            raise PaymentError("no channel: call open(deposit) first")
        self.state.deposited += deposit
        self._save()

    def reconcile(self, *, unreadable_ok: bool = False) -> str | None:
        """Compare the channel on chain with the store and repair a disagreement: a channel
        without a deposit (gone with a chain reset, refunded, never funded) or with a
        withdrawal under way is retired and a new one opened; a different deposit is
        adopted. What it did, in words (also logged and told to ``on_reconcile``); None
        if chain and store agree (or, with ``unreadable_ok``, the chain cannot be read
        now: the saved channel is used as it is). CannotPayError if it cannot read the
        chain or repair the channel."""
        if self.state is None:
            return None
        old = self.state
        try:
            info = read_channel(self.w3, self.addresses, self.config)
        except ChainError as exc:
            if unreadable_ok:
                logger.warning("payer for %s: cannot check its channel on chain (%s); the "
                               "saved channel is used as it is", self.root, exc)
                return None
            raise CannotPayError(f"cannot check channel {old.channel_id[:10]}… on chain: "
                                 f"{exc}") from exc
        # Claims never lower the balance; a withdrawal or refund does. A voucher must stay
        # within the balance, so one at or below the charged total leaves nothing to pay.
        if info.balance == 0:
            done = self._reopen(old, "holds no deposit on chain (the chain was reset, or "
                                "the channel was never funded)")
        elif info.withdraw_initiated_at != 0:
            done = self._reopen(old, "has a withdrawal under way: it takes no new vouchers")
        elif info.balance <= old.charged:
            done = self._reopen(old, f"was refunded: {info.balance} on chain, nothing "
                                f"left above the {old.charged} already charged")
        elif info.balance != old.deposited:
            done = (f"channel {old.channel_id[:10]}… holds {info.balance} on chain, not the "
                    f"{old.deposited} on record: the deposit on chain is used")
            self.state.deposited = info.balance  # ``old`` is this state: said first
            self._save()
        else:
            return None
        logger.warning("payer for %s: %s", self.root, done)
        if self.on_reconcile is not None:
            self.on_reconcile(done)
        return done

    def _reopen(self, old: ChannelState, why: str) -> str:
        """Retire ``old`` (kept in the store with its receipts) and open a new channel."""
        if self.account is None or self.subkey is not None:
            raise CannotPayError(f"channel {old.channel_id[:10]}… {why}; a sub-key's channel "
                                 "is funded by its owner: ask for a new sub-key")
        deposit = self.top_up_amount or old.deposited
        if deposit <= 0:
            raise CannotPayError(f"channel {old.channel_id[:10]}… {why}; no deposit is set "
                                 "to open a new one")
        terms = self.offer.payment
        assert terms is not None
        config = new_config(self.addresses, payer=self.account.address, receiver=self.node,
                            receiver_authorizer=terms.receiver_authorizer,
                            payer_authorizer=self.account.address,
                            withdraw_delay=terms.withdraw_delay)
        new = ChannelState(compute_channel_id(config, self.chain_id).lower(), config.to_dict(),
                           deposited=deposit)
        try:
            open_channel(self.w3, self.addresses, self.account, config, deposit)
        except ChainError as exc:
            raise CannotPayError(f"channel {old.channel_id[:10]}… {why}; a new one could not "
                                 f"be opened: {exc}") from exc
        reason = f"retired: {why}"
        self._store.replace(old, reason, new)
        self.state = new
        return (f"channel {old.channel_id[:10]}… {why}: retired (its {old.receipts} receipts "
                f"and {old.spent} spent stay on record) and channel {new.channel_id[:10]}… "
                f"opened with {deposit}")

    def retired(self) -> list[tuple[ChannelState, str]]:
        """Channels this payer replaced (see :meth:`reconcile`), each with why."""
        return self._store.retired()

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
        if self.state.dispute:
            raise ChargeDisputeError(f"this payer pays {self.root} no more: {self.state.dispute}")
        voucher = self.state.charged + max_amount
        if voucher > self.state.deposited:
            if self.top_up_amount <= 0 or self.account is None:
                raise CannotPayError(f"the channel's deposit ({self.state.deposited}) does "
                                     f"not cover the next voucher ({voucher}): top it up")
            try:
                self.open(max(self.top_up_amount, voucher - self.state.deposited))
            except ChainError as exc:
                raise CannotPayError(f"the channel could not be topped up: {exc}") from exc
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
        request_id = request_id or uuid.uuid4().hex
        # Saved before the voucher leaves: the node can claim it from now on.
        self.state.voucher = max(self.state.voucher, voucher)
        payments = self.state.payments
        payments.pop(request_id, None)
        payments[request_id] = [max_amount, self.state.charged, 0, 0]
        for old in list(payments)[:-_KEPT_PAYMENTS]:
            del payments[old]
            self.state.unreceipted.pop(old, None)
        self._save()
        return PendingPayment(request_id, max_amount, voucher, self.state.charged,
                              x402wire.encode_model(payload))

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
              max_tokens_out: int | None = None, commitments: bool = False,
              prices: TokenPrices | None = None) -> Receipt:
        """The verified receipt in the node's payment response for ``pending``, not yet
        adopted. A running receipt (mid-stream) is checked with ``max_tokens_out``: it
        may not count more tokens than have arrived. ``prices`` replaces the model's
        (a fine-tuning job's receipt is priced at :meth:`training_prices`)."""
        assert self.state is not None
        try:
            receipt = Receipt.from_json(response["extra"]["receipt"])
            charged = int(response["extra"]["chargedAmount"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReceiptError(f"the node's payment response has no receipt: {exc}") from None
        try:
            verify_receipt(receipt, self.node)
        except ReceiptError:
            self._refuse(pending.request_id)
            raise
        if prices is None:
            prices = self.prices(model, commitments=commitments)
        expected = cost(prices,
                        receipt.tokens_in, receipt.tokens_out)
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
                self._refuse(pending.request_id)
                raise ReceiptError(f"receipt {receipt.request_id} {why}")
        return receipt

    def _refuse(self, request_id: str) -> None:
        """A receipt for ``request_id`` was refused: none for it is believed later."""
        assert self.state is not None
        paid = self.state.payments.get(request_id)
        if paid is not None:
            paid[3:] = [1]
            self._save()

    def adopt(self, pending: PendingPayment, receipt: Receipt, *, final: bool = True) -> None:
        """Believe ``receipt`` (checked by :meth:`check`): the request's charge -- its final
        one, or (``final=False``) the last running receipt of a stream that broke off."""
        self._believe(pending, receipt, final=final)
        self._save(receipt)

    def _believe(self, pending: PendingPayment, receipt: Receipt, *, final: bool) -> None:
        """What :meth:`adopt` changes in the state, not saved yet."""
        assert self.state is not None
        self.state.charged = receipt.cumulative
        self.state.voucher = max(self.state.voucher, pending.voucher)
        self.state.receipts += 1
        self.state.spent += receipt.amount
        if final:
            self.state.payments.pop(pending.request_id, None)
        elif pending.request_id in self.state.payments:
            self.state.payments[pending.request_id][2] = receipt.amount

    def cut(self, pending: PendingPayment, running: Receipt | None, model: str, *,
            arrived: int, usage: tuple[int, int] | None = None, max_tokens: int | None = None,
            commitments: bool = False) -> int:
        """A stream for ``pending`` broke off before its final receipt, after ``arrived``
        tokens (``usage``: the answer's (prompt, completion) tokens, if they came): its last
        running receipt, if any, is believed (as :meth:`adopt` with ``final=False``), and
        what the node can charge beyond it for the tokens that arrived
        (:func:`~agoranet.payments.pay.unreceipted.unreceipted_cost`, at the offer's prices,
        within the voucher) is counted as spent, never as owed: the node may hold a
        receipt for them that never arrived. It is remembered for the request, so a receipt
        for it shown later (a corrective 402) counts only the rest. The amount counted
        beyond the receipt."""
        assert self.state is not None
        try:
            prices = self.prices(model, commitments=commitments)
        except PaymentError:  # no price to count at: all the voucher allows beyond the receipt
            beyond = max(0, pending.max_amount - (running.amount if running else 0))
        else:
            context = next((m.context_length for m in self.offer.models
                            if m.id == ModelName.base_of(model)), None)
            beyond = unreceipted_cost(prices, pending.max_amount, running, arrived, usage=usage,
                                      max_tokens=max_tokens, context_length=context)
        if running is not None:
            self._believe(pending, running, final=False)
        if beyond > 0:
            self.state.spent += beyond
            self.state.unreceipted[pending.request_id] = beyond
        if running is not None or beyond > 0:
            self._save(running)
        return beyond

    def resync(self, corrective: dict[str, Any]) -> bool:
        """Follow a node's corrective 402 (the rule is in the module's docstring): True if
        the payer's charged total now matches the node's; False if the 402 is not about
        this channel. A higher total that no receipt backs raises ChargeDisputeError."""
        assert self.state is not None
        state = corrective.get("channelState")
        if not isinstance(state, dict) or str(state.get("channelId", "")).lower() != \
                self.state.channel_id:
            return False
        try:
            charged = int(state["chargedCumulativeAmount"])
        except (KeyError, TypeError, ValueError):
            return False
        if charged < 0:
            return False
        if charged <= self.state.charged:  # the node is behind: believing less costs nothing
            self.state.charged = charged
            self._save()
            return True
        receipt = self._backing(corrective.get("receipt"), charged)
        if receipt is not None:
            counted = charged - self.state.charged
            # what a cut stream of that request counted as spent already is not counted again
            counted -= min(counted, self.state.unreceipted.pop(receipt.request_id, 0))
            self.state.spent += counted
            self.state.charged = charged
            self.state.receipts += 1
            self.state.payments.pop(receipt.request_id, None)
            self._save(receipt)
            if self.on_resync is not None:
                self.on_resync(receipt, counted)
            return True
        counted = sum(self.state.unreceipted.values())  # by cut streams, already spent
        dispute = Dispute(self.root, self.node, self.state.channel_id, charged,
                          self.state.charged,
                          max(0, self.state.voucher - self.state.charged - counted))
        self.state.unreceipted.clear()
        self.state.disputed += dispute.exposure
        self.state.spent += dispute.exposure
        self.state.dispute = dispute.describe()
        self._save()
        if self.on_dispute is not None:
            self.on_dispute(dispute)
        raise ChargeDisputeError(f"{self.root} claims a charged total no receipt backs: "
                                 f"{dispute.describe()}")

    def _backing(self, data: object, charged: int) -> Receipt | None:
        """The node's receipt in a corrective 402, if it backs ``charged``: signed by the
        node, for this channel and chain, for a request the payer signed a voucher for,
        holds no final receipt of and refused no receipt of, within its maximum, in step
        with what the payer had counted before it. (Its price is not checked: the answer was never seen.)"""
        assert self.state is not None
        if not isinstance(data, dict):
            return None
        try:
            receipt = Receipt.from_json(data)
            verify_receipt(receipt, self.node)
        except ReceiptError:
            return None
        paid = self.state.payments.get(receipt.request_id)
        if paid is None or receipt.channel_id != self.state.channel_id or \
                receipt.chain_id != self.chain_id:
            return None
        max_amount, before, receipted, *refused = paid
        fits = (not any(refused) and receipt.cumulative == charged == before + receipt.amount
                and receipted <= receipt.amount <= max_amount
                and self.state.charged == before + receipted)
        return receipt if fits else None

    # ------------------------------------------------------------ fine-tuning jobs

    def training_prices(self) -> TokenPrices:
        """The offer's training price: a job's receipt counts trained tokens as input."""
        return TokenPrices(self.offer.fine_tuning.price_per_million_training_tokens, 0)

    def hold(self, pending: PendingPayment, response: dict[str, Any]) -> None:
        """The node holds ``pending``'s voucher for a fine-tuning job (``response`` is its
        ``PAYMENT-RESPONSE``, ``extra.held``): charged when the job ends, then checked and
        adopted by :meth:`settle_job` (see :mod:`agoranet.node.job_payments`)."""
        extra = response.get("extra") or {}
        if str(extra.get("requestId")) != pending.request_id or \
                str(extra.get("maxAmount")) != str(pending.max_amount):
            raise PaymentError("the node's hold is for another payment")
        self._jobs[pending.request_id] = pending

    def rehold(self, request_id: str) -> bool:
        """Hold again, after a restart, a job payment this payer signed (kept in its saved
        payments); False if it has none such (settled, or never signed)."""
        assert self.state is not None
        paid = self.state.payments.get(request_id)
        if paid is None or any(paid[3:]):
            return False
        max_amount, before = int(paid[0]), int(paid[1])
        self._jobs[request_id] = PendingPayment(request_id, max_amount, before + max_amount,
                                                before, "")
        return True

    def held_jobs(self) -> list[str]:
        """Request ids of the job payments held and not settled yet."""
        return list(self._jobs)

    def settle_job(self, payment: dict[str, Any]) -> Receipt | None:
        """Check and adopt the final receipt of an ended job from its ``payment`` record
        (the job object's ``agoranet.payment``); None if it was released uncharged."""
        request_id = str(payment.get("request_id", ""))
        pending = self._jobs.get(request_id)
        if pending is None:
            raise PaymentError(f"no fine-tuning job payment {request_id!r} is held")
        status = payment.get("status")
        if status == "held":
            raise PaymentError(f"job payment {request_id} is still held: the job has not ended")
        if status == "released":  # nothing charged: the voucher no longer counts
            del self._jobs[request_id]
            assert self.state is not None
            self.state.payments.pop(request_id, None)
            self._save()
            return None
        if status != "charged":
            raise PaymentError(f"job payment {request_id} has status {status!r}")
        receipt = self.check(pending, payment.get("response") or {}, "",
                             prices=self.training_prices())
        self.adopt(pending, receipt)
        del self._jobs[request_id]
        return receipt

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
