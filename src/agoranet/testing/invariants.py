"""The money invariants, checked against the chain after a payment scenario (tests only).

After any payment scenario -- honest or not, crashed or not -- and after the
node's earnings were claimed (:func:`agoranet.testing.settle.force_settlement`),
four things must hold for every channel the scenario used:

1. **claimed within receipts**: what the escrow says was claimed on the channel
   is at most what the buyer's signed receipts add up to, plus one request's
   headroom (the most a single voucher signs beyond the charged total: the only
   overclaim a node can attempt);
2. **spend covers claims**: the buyer's recorded spend is at least what was
   claimed (no money leaves the buyer's deposit without the buyer knowing);
3. **no money made or lost**: the stablecoin's total supply is unchanged, and so
   is the sum of the balances of the accounts involved and the escrow's;
4. **accepted vouchers are claimable**: every voucher the node's ledger accepted
   passes the escrow's own ``claim`` (an ``eth_call`` from the receiver, with
   the channel's claimed total set to zero by a state override so the
   signature is checked even for vouchers at or below it), and the node's
   charged total is what the chain shows claimed (its claim went through).

:func:`check_money_invariants` reads the chain, the buyer's books
(:class:`BuyerBook`, from a payer's store: the gateway keeps one per node too) and the
node's SQLite ledger, and returns an :class:`InvariantReport` with every number;
:func:`assert_money_invariants` raises :class:`AssertionError` with that report
when anything is broken.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from eth_utils.crypto import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.compiled import load_artifact
from agoranet.errors import ReceiptError
from agoranet.payments.accept.ledger_url import is_postgres_url
from agoranet.payments.channels import config_tuple, escrow_contract
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import stablecoin_contract

__all__ = [
    "BuyerBook",
    "ChainSnapshot",
    "ChannelFacts",
    "InvariantReport",
    "assert_money_invariants",
    "chain_snapshot",
    "check_money_invariants",
    "voucher_claim_error",
]

CLAIMED_WITHIN_RECEIPTS: Final = "claimed <= receipts + headroom"
SPEND_COVERS_CLAIMS: Final = "recorded spend >= claimed"
MONEY_CONSERVED: Final = "supply and balances conserved"
VOUCHERS_CLAIMABLE: Final = "accepted vouchers claimable"


@dataclass(frozen=True)
class BuyerBook:
    """What the buyer holds for one channel: its signed receipts and its recorded spend.

    ``headroom`` is one request's maximum: what a voucher signs beyond the charged total.
    """

    channel_id: str
    receipts: tuple[Receipt, ...]
    spent: int
    headroom: int

    @property
    def receipted(self) -> int:
        return sum(r.amount for r in self.receipts)

    @classmethod
    def from_payer_store(cls, folder: Path, *, headroom: int) -> BuyerBook:
        """The book of the payer whose state lives in ``folder`` (a ``payer.sqlite``)."""
        store = PayerStore(folder)
        try:
            state = store.load()
            receipts = store.receipts()
        finally:
            store.close()
        if state is None:
            raise AssertionError(f"the payer's store in {folder} has no channel")
        channel = str(state["channel_id"]).lower()
        return cls(channel, tuple(r for r in receipts if r.channel_id == channel),
                   int(state.get("spent", 0)), headroom)


@dataclass(frozen=True)
class ChainSnapshot:
    """The stablecoin's supply and the balances of the accounts involved (and the escrow)."""

    supply: int
    balances: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.balances.values())


def chain_snapshot(w3: Web3, addresses: ChainAddresses, accounts: Iterable[str]) -> ChainSnapshot:
    """Read the supply and the balances of ``accounts`` plus the escrow's, now."""
    token = stablecoin_contract(w3, addresses)
    holders = sorted({Web3.to_checksum_address(a) for a in accounts}
                     | {Web3.to_checksum_address(addresses.escrow)})
    return ChainSnapshot(int(token.functions.totalSupply().call()),
                         {a: int(token.functions.balanceOf(a).call()) for a in holders})


@dataclass(frozen=True)
class ChannelFacts:
    """Every number the invariants compare for one channel."""

    channel_id: str
    balance: int  # deposited in the escrow (on chain)
    claimed: int  # claimed so far (on chain)
    receipted: int  # the buyer's receipts, summed
    receipts: int
    spent: int  # the buyer's recorded spend
    headroom: int
    charged: int  # the node's ledger
    vouchers: int  # accepted vouchers checked against the escrow
    unclaimable: tuple[str, ...] = ()  # one line per voucher the escrow refuses
    forged: tuple[str, ...] = ()  # receipts the buyer holds that the node did not sign

    def line(self) -> str:
        return (f"channel {self.channel_id[:12]}…: on chain claimed {self.claimed} of "
                f"{self.balance} deposited; buyer holds {self.receipts} receipt(s) for "
                f"{self.receipted}, recorded spend {self.spent}, headroom {self.headroom}; "
                f"node charged {self.charged}; {self.vouchers} accepted voucher(s), "
                f"{len(self.unclaimable)} unclaimable")


@dataclass
class InvariantReport:
    """The numbers of every channel checked, the chain before and after, what broke."""

    channels: list[ChannelFacts] = field(default_factory=list)
    before: ChainSnapshot | None = None
    after: ChainSnapshot | None = None
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def text(self) -> str:
        lines = [f"money invariants over {len(self.channels)} channel(s):"]
        lines += ["  " + c.line() for c in self.channels]
        if self.before is not None and self.after is not None:
            lines.append(f"  stablecoin supply {self.before.supply} -> {self.after.supply}; "
                         f"involved balances (escrow included) {self.before.total} -> "
                         f"{self.after.total}")
        if self.violations:
            lines.append("VIOLATED:")
            lines += ["  - " + v for v in self.violations]
        else:
            lines.append("all four hold")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text


def check_money_invariants(w3: Web3, addresses: ChainAddresses, *, before: ChainSnapshot,
                           books: Sequence[BuyerBook], ledger: Path | str,
                           settled: bool = True) -> InvariantReport:
    """Check the four invariants for the channels of ``books`` against the chain now.

    ``before`` is :func:`chain_snapshot` taken before the scenario moved any money
    (after funding and deposits); ``ledger`` the node's SQLite ledger file (or its
    PostgreSQL ledger's URL). With
    ``settled`` (the node's claims were forced before this call) the node's charged
    total must also be what the chain shows claimed.
    """
    report = InvariantReport(before=before)
    escrow = escrow_contract(w3, addresses)
    for book in books:
        facts = _channel_facts(w3, escrow, book, ledger)
        report.channels.append(facts)
        cid = facts.channel_id[:12] + "…"
        if facts.claimed > facts.receipted + facts.headroom:
            report.violations.append(
                f"[{CLAIMED_WITHIN_RECEIPTS}] channel {cid}: claimed {facts.claimed} > "
                f"receipts {facts.receipted} + headroom {facts.headroom} "
                f"(by {facts.claimed - facts.receipted - facts.headroom})")
        if facts.spent < facts.claimed:
            report.violations.append(
                f"[{SPEND_COVERS_CLAIMS}] channel {cid}: the buyer recorded {facts.spent} "
                f"but {facts.claimed} was claimed (by {facts.claimed - facts.spent})")
        for problem in facts.forged:
            report.violations.append(f"[{CLAIMED_WITHIN_RECEIPTS}] channel {cid}: {problem} "
                                     "(left out of the receipts)")
        for problem in facts.unclaimable:
            report.violations.append(f"[{VOUCHERS_CLAIMABLE}] channel {cid}: {problem}")
        if settled and facts.claimed != facts.charged:
            report.violations.append(
                f"[{VOUCHERS_CLAIMABLE}] channel {cid}: the node charged {facts.charged} "
                f"but the chain shows {facts.claimed} claimed after its claim was forced")
    after = chain_snapshot(w3, addresses, before.balances)
    report.after = after
    if after.supply != before.supply:
        report.violations.append(f"[{MONEY_CONSERVED}] stablecoin supply moved from "
                                 f"{before.supply} to {after.supply}")
    if after.total != before.total:
        moved = {a: after.balances[a] - before.balances[a] for a in before.balances
                 if after.balances[a] != before.balances[a]}
        report.violations.append(f"[{MONEY_CONSERVED}] involved balances sum moved from "
                                 f"{before.total} to {after.total} (changes: {moved})")
    return report


def assert_money_invariants(w3: Web3, addresses: ChainAddresses, *, before: ChainSnapshot,
                            books: Sequence[BuyerBook], ledger: Path | str,
                            settled: bool = True) -> InvariantReport:
    """:func:`check_money_invariants`, raising :class:`AssertionError` (the full report)
    if any invariant is broken."""
    report = check_money_invariants(w3, addresses, before=before, books=books, ledger=ledger,
                                    settled=settled)
    if not report.ok:
        raise AssertionError(report.text)
    return report


# ---------------------------------------------------------------- one channel


@dataclass(frozen=True)
class _Accepted:
    what: str  # e.g. "request 1f2e… (charged)"
    amount: int
    signature: str


def _channel_facts(w3: Web3, escrow: Any, book: BuyerBook, ledger: Path | str) -> ChannelFacts:
    cid = book.channel_id.lower()
    balance, claimed = (int(x) for x in escrow.functions.channels(_b32(cid)).call())
    record, accepted = _ledger_channel(ledger, cid)
    unclaimable: list[str] = []
    forged: list[str] = []
    receipts = list(book.receipts)
    charged = 0
    if record is not None:
        config_json, charged, voucher_amount, voucher_signature = record
        config = ChannelConfig.from_dict(json.loads(config_json))
        for receipt in book.receipts:
            try:
                verify_receipt(receipt, config.receiver)
            except ReceiptError as exc:
                forged.append(str(exc))
                receipts.remove(receipt)
        if voucher_signature != "0x":
            accepted.append(_Accepted("the channel's current voucher", voucher_amount,
                                      voucher_signature))
        seen: set[tuple[int, str]] = set()
        for voucher in accepted:
            key = (voucher.amount, voucher.signature.lower())
            if key in seen:
                continue
            seen.add(key)
            error = voucher_claim_error(w3, escrow, config, voucher.amount, voucher.signature)
            if error is not None:
                unclaimable.append(f"{voucher.what} for {voucher.amount} is refused by the "
                                   f"escrow: {error}")
        checked = len(seen)
    else:
        checked = 0
    return ChannelFacts(cid, balance, claimed, sum(r.amount for r in receipts), len(receipts),
                        book.spent, book.headroom, charged, checked, tuple(unclaimable),
                        tuple(forged))


def _ledger_channel(ledger: Path | str, channel_id: str
                    ) -> tuple[tuple[str, int, int, str] | None, list[_Accepted]]:
    """(config, charged, voucher amount, voucher signature) of the channel, and every
    voucher the node accepted on it, read from the node's ledger (read-only): a SQLite
    file, or a PostgreSQL ledger's URL."""
    channel_sql = ("SELECT config, charged, voucher_amount, voucher_signature FROM channels "
                   "WHERE channel_id = ?")
    vouchers_sql = ("SELECT request_id, voucher_amount, signature, status FROM vouchers "
                    "WHERE channel_id = ? ORDER BY accepted_at")
    if is_postgres_url(str(ledger)):
        import psycopg  # the `postgres` extra: a PostgreSQL ledger is there only with it

        with psycopg.connect(str(ledger), autocommit=True) as conn:
            row = conn.execute(channel_sql.replace("?", "%s").encode(),
                               (channel_id,)).fetchone()
            vouchers = conn.execute(vouchers_sql.replace("?", "%s").encode(),
                                    (channel_id,)).fetchall()
    else:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=30.0)
        try:
            row = db.execute(channel_sql, (channel_id,)).fetchone()
            vouchers = db.execute(vouchers_sql, (channel_id,)).fetchall()
        finally:
            db.close()
    record = (str(row[0]), int(row[1]), int(row[2]), str(row[3])) if row else None
    return record, [_Accepted(f"request {r[0]} ({r[3]})", int(r[1]), str(r[2]))
                    for r in vouchers]


def voucher_claim_error(w3: Web3, escrow: Any, config: ChannelConfig, amount: int,
                        signature: str) -> str | None:
    """Why the escrow's ``claim`` refuses the voucher (``amount``, ``signature``) on the
    channel of ``config``, or None if it takes it.

    An ``eth_call`` of ``claim`` from the channel's receiver for the voucher's whole
    amount (at most the deposit), with the channel's claimed total overridden to
    zero, so the escrow checks the signature even when the chain has already
    claimed past this voucher. Nothing is sent.
    """
    cid = _b32(str(escrow.functions.getChannelId(config_tuple(config)).call().hex()))
    balance, claimed = (int(x) for x in escrow.functions.channels(cid).call())
    total = min(amount, balance)
    if total <= 0:
        return f"the channel holds no deposit to claim from (balance {balance})"
    try:
        raw_signature = bytes.fromhex(signature.removeprefix("0x"))
    except ValueError:
        return f"the signature {signature[:20]}… is not hex"
    slot = _claimed_slot(w3, escrow.address, cid, balance, claimed)
    claim = ((config_tuple(config), amount), raw_signature, total)
    override: Any = {escrow.address: {"stateDiff": {"0x" + slot.to_bytes(32, "big").hex():
                                                    "0x" + (0).to_bytes(32, "big").hex()}}}
    try:
        escrow.functions.claim([claim]).call({"from": config.receiver}, "latest", override)
    except ContractLogicError as exc:
        return str(exc.message or exc)
    except (ValueError, Web3Exception) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _claimed_slot(w3: Web3, escrow: str, cid: bytes, balance: int, claimed: int) -> int:
    """The storage slot of ``channels[cid].totalClaimed`` in the escrow (Vyper lays a
    ``HashMap`` value out at ``keccak(slot . key)``, a struct's members in consecutive
    slots), checked against what ``channels()`` returns before it is used."""
    base = int.from_bytes(keccak(
        load_artifact("BatchSettlement").slot("channels").to_bytes(32, "big") + cid), "big")
    seen = [int.from_bytes(w3.eth.get_storage_at(Web3.to_checksum_address(escrow), base + i),
                           "big") for i in (0, 1)]
    if seen != [balance, claimed]:
        raise AssertionError(f"the escrow's storage layout is not as expected: slots "
                             f"{base:#x}+0/1 hold {seen}, channels() says {[balance, claimed]}")
    return base + 1


def _b32(hex_value: str) -> bytes:
    raw = bytes.fromhex(hex_value.removeprefix("0x"))
    if len(raw) != 32:
        raise AssertionError(f"{hex_value!r} is not a 32-byte channel id")
    return raw
