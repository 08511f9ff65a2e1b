"""Stateful property test of the escrow against a small model.

Random sequences of deposits, voucher signing, claims (direct and
authorizer-signed), settlements, refunds (direct and signed), timed withdrawals
and time jumps. After every step, real balances are compared with the model:

* the escrow never pays out more than was deposited into it;
* a channel's receiver never gets more than the highest voucher its payer signed;
* the token's total supply equals what was minted and is fully accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import boa
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .helpers import (
    DELAY,
    Channel,
    Claim,
    System,
    account,
    deposit_data,
    revert_reason,
    sign_batch_sdk,
    sign_refund_sdk,
    voucher_claim,
)

PAYERS = [account("sm-payer-0"), account("sm-payer-1")]
RECEIVERS = [account("sm-receiver-0").address, account("sm-receiver-1").address]
AUTH = account("sm-auth")
# (payer index, receiver index) of each channel; two share payer and receiver
LAYOUT = [(0, 0), (1, 1)]
STEPS = 40


@dataclass
class Model:
    balance: int = 0
    claimed: int = 0
    highest_signed: int = 0
    vouchers: list[Claim] = field(default_factory=list)
    pending: int = 0
    pending_at: int = 0
    refund_nonce: int = 0


amounts = st.integers(min_value=1, max_value=1_000)
channel_ix = st.integers(min_value=0, max_value=len(LAYOUT) - 1)


class EscrowMachine(RuleBasedStateMachine):
    """Drives the deployed contracts; the model mirrors what should happen."""

    system: System  # set by the test function (deployed outside any example)

    def __init__(self) -> None:
        super().__init__()
        self.s = self.system
        self._anchor = boa.env.anchor()
        self._anchor.__enter__()
        token = str(self.s.token.address)
        self.channels = [
            Channel.make(
                PAYERS[p].address, RECEIVERS[r], AUTH.address, token, salt=bytes([i + 1]) * 32
            )
            for i, (p, r) in enumerate(LAYOUT)
        ]
        self.models = [Model() for _ in LAYOUT]
        self.minted = 0
        self.deposited = 0
        self.paid_out = 0
        self.settled = dict.fromkeys(RECEIVERS, 0)
        self.salt = 0

    def teardown(self) -> None:
        self._anchor.__exit__(None, None, None)

    # -- helpers -----------------------------------------------------------

    def _cid(self, i: int) -> bytes:
        return self.channels[i].channel_id(self.s.chain_id)

    def _payer(self, i: int) -> str:
        return PAYERS[LAYOUT[i][0]].address

    def _expect(self, reason: str | None, call: object, *args: object, **kw: object) -> None:
        """Run a call that must succeed (reason None) or revert with ``reason``."""
        try:
            call(*args, **kw)  # type: ignore[operator]
        except boa.BoaError as err:
            assert reason is not None, f"unexpected revert: {revert_reason(err)!r}"
            assert revert_reason(err) == reason
            return
        assert reason is None, f"expected revert {reason!r}"

    # -- rules -------------------------------------------------------------

    @initialize(
        deposits=st.lists(amounts, min_size=len(LAYOUT), max_size=len(LAYOUT)),
        vouchers=st.lists(amounts, min_size=len(LAYOUT), max_size=len(LAYOUT)),
    )
    def start(self, deposits: list[int], vouchers: list[int]) -> None:
        """Every channel starts funded, with one voucher signed."""
        assert self.s.token.totalSupply() == 0
        for i, (amount, voucher) in enumerate(zip(deposits, vouchers, strict=True)):
            self.deposit(i, amount)
            self.sign_voucher(i, voucher)

    @rule(i=channel_ix, amount=amounts)
    def deposit(self, i: int, amount: int) -> None:
        payer = PAYERS[LAYOUT[i][0]]
        self.s.token.mint(payer.address, amount, sender=self.s.minter)
        self.minted += amount
        self.salt += 1
        data = deposit_data(self.s, payer, self.channels[i], amount, salt=self.salt)
        self.s.escrow.deposit(self.channels[i].tuple, amount, self.s.collector.address, data)
        self.models[i].balance += amount
        self.deposited += amount

    @rule(i=channel_ix, increment=st.integers(min_value=0, max_value=1_000))
    def sign_voucher(self, i: int, increment: int) -> None:
        m = self.models[i]
        new_max = m.highest_signed + increment
        payer = PAYERS[LAYOUT[i][0]]
        m.vouchers.append(voucher_claim(payer, self.channels[i], new_max, new_max, self.s.chain_id))
        m.highest_signed = new_max

    @precondition(lambda self: any(m.vouchers for m in self.models))
    @rule(data=st.data(), signed=st.booleans())
    def claim(self, data: st.DataObject, signed: bool) -> None:
        """A batch of rows for random channels, each claiming some total under a voucher."""
        candidates = [i for i, m in enumerate(self.models) if m.vouchers]
        picks = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3))
        receiver = None if signed else RECEIVERS[LAYOUT[picks[0]][1]]
        rows: list[Claim] = []
        staged = {i: self.models[i].claimed for i in set(picks)}
        reason: str | None = None
        for i in picks:  # the contract checks rows in order; the first failure wins
            v = data.draw(st.sampled_from(self.models[i].vouchers))
            total = data.draw(st.integers(min_value=0, max_value=v.max_claimable + 2))
            rows.append(Claim(v.channel, v.max_claimable, v.signature, total))
            if reason is not None:
                continue
            if receiver is not None and RECEIVERS[LAYOUT[i][1]] != receiver:
                reason = "NotAuthorizedToClaim"
            elif total <= staged[i]:
                continue
            elif total > v.max_claimable:
                reason = "ClaimExceedsCeiling"
            elif total > self.models[i].balance:
                reason = "ClaimExceedsBalance"
            else:
                staged[i] = total
        if receiver is None:
            sig = sign_batch_sdk(AUTH, rows, self.s.chain_id)
            self._expect(reason, self.s.escrow.claimWithSignature, [r.tuple for r in rows], sig)
        else:
            self._expect(reason, self.s.escrow.claim, [r.tuple for r in rows], sender=receiver)
        if reason is None:
            for i, total in staged.items():
                self.models[i].claimed = total

    @precondition(lambda self: any(m.vouchers for m in self.models))
    @rule(data=st.data())
    def forged_claim(self, data: st.DataObject) -> None:
        """A receiver raising a voucher's amount is rejected."""
        i = data.draw(st.sampled_from([i for i, m in enumerate(self.models) if m.vouchers]))
        m = self.models[i]
        v = data.draw(st.sampled_from(m.vouchers))
        total = m.claimed + 1
        forged = Claim(v.channel, max(v.max_claimable, total), v.signature, total)
        if forged.max_claimable == v.max_claimable:
            return  # not forged after all
        reason = "ClaimExceedsBalance" if total > m.balance else "InvalidSignature"
        self._expect(reason, self.s.escrow.claim, [forged.tuple], sender=RECEIVERS[LAYOUT[i][1]])

    @precondition(lambda self: any(m.vouchers for m in self.models))
    @rule(data=st.data())
    def claim_latest(self, data: st.DataObject) -> None:
        """The receiver claims as much as its newest voucher and the balance allow."""
        i = data.draw(st.sampled_from([i for i, m in enumerate(self.models) if m.vouchers]))
        m = self.models[i]
        total = min(m.highest_signed, m.balance)
        row = Claim(m.vouchers[-1].channel, m.highest_signed, m.vouchers[-1].signature, total)
        self.s.escrow.claim([row.tuple], sender=RECEIVERS[LAYOUT[i][1]])
        m.claimed = max(m.claimed, total)

    @rule(r=st.sampled_from(RECEIVERS))
    def settle(self, r: str) -> None:
        claimed = sum(m.claimed for i, m in enumerate(self.models) if RECEIVERS[LAYOUT[i][1]] == r)
        self.s.escrow.settle(r, self.s.token.address)
        self.paid_out += claimed - self.settled[r]
        self.settled[r] = claimed

    @rule(i=channel_ix, data=st.data(), signed=st.booleans())
    def refund(self, i: int, data: st.DataObject, signed: bool) -> None:
        m = self.models[i]
        amount = data.draw(st.integers(min_value=0, max_value=m.balance - m.claimed + 1))
        reason = "ZeroRefund" if amount == 0 else None
        if signed:
            sig = sign_refund_sdk(AUTH, self.channels[i], amount, m.refund_nonce, self.s.chain_id)
            self._expect(
                reason,
                self.s.escrow.refundWithSignature,
                self.channels[i].tuple,
                amount,
                m.refund_nonce,
                sig,
            )
        else:
            receiver = RECEIVERS[LAYOUT[i][1]]
            self._expect(
                reason, self.s.escrow.refund, self.channels[i].tuple, amount, sender=receiver
            )
        if reason is not None:
            return
        m.refund_nonce += 1
        paid = min(amount, m.balance - m.claimed)
        m.balance -= paid
        self.paid_out += paid
        if paid and m.pending_at:
            m.pending = max(m.pending - paid, 0)
            if m.pending == 0:
                m.pending_at = 0

    @rule(i=channel_ix, data=st.data())
    def initiate_withdraw(self, i: int, data: st.DataObject) -> None:
        m = self.models[i]
        amount = data.draw(st.integers(min_value=0, max_value=m.balance - m.claimed + 1))
        if amount == 0:
            reason: str | None = "NothingToWithdraw"
        elif m.pending_at:
            reason = "WithdrawalAlreadyPending"
        elif amount > m.balance - m.claimed:
            reason = "WithdrawAmountExceedsAvailable"
        else:
            reason = None
        self._expect(
            reason,
            self.s.escrow.initiateWithdraw,
            self.channels[i].tuple,
            amount,
            sender=self._payer(i),
        )
        if reason is None:
            m.pending, m.pending_at = amount, boa.env.timestamp

    @rule(i=channel_ix, wait_out=st.booleans())
    def finalize_withdraw(self, i: int, wait_out: bool) -> None:
        m = self.models[i]
        if wait_out and m.pending_at and boa.env.timestamp < m.pending_at + DELAY:
            boa.env.time_travel(seconds=m.pending_at + DELAY - boa.env.timestamp)
        if not m.pending_at:
            reason: str | None = "WithdrawalNotPending"
        elif boa.env.timestamp < m.pending_at + DELAY:
            reason = "WithdrawDelayNotElapsed"
        else:
            reason = None
        self._expect(
            reason, self.s.escrow.finalizeWithdraw, self.channels[i].tuple, sender=self._payer(i)
        )
        if reason is None:
            paid = min(m.pending, m.balance - m.claimed)
            m.balance -= paid
            self.paid_out += paid
            m.pending = m.pending_at = 0

    @rule(seconds=st.sampled_from([1, DELAY]))
    def wait(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    # -- invariants --------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        for i, m in enumerate(self.models):
            cid = self._cid(i)
            assert tuple(self.s.escrow.channels(cid)) == (m.balance, m.claimed)
            assert tuple(self.s.escrow.pendingWithdrawals(cid)) == (m.pending, m.pending_at)
            assert self.s.escrow.refundNonce(cid) == m.refund_nonce

    @invariant()
    def escrow_never_pays_out_more_than_deposited(self) -> None:
        held = self.s.token.balanceOf(self.s.escrow.address)
        assert self.paid_out <= self.deposited
        assert held == self.deposited - self.paid_out
        assert held == sum(m.balance for m in self.models) - sum(self.settled.values())

    @invariant()
    def receivers_never_exceed_highest_voucher(self) -> None:
        for m in self.models:
            assert m.claimed <= m.highest_signed
        for r in RECEIVERS:
            ceiling = sum(
                m.highest_signed for i, m in enumerate(self.models) if RECEIVERS[LAYOUT[i][1]] == r
            )
            got = self.s.token.balanceOf(r)
            assert got == self.settled[r] <= ceiling
            rs = tuple(self.s.escrow.receivers(r, self.s.token.address))
            assert rs[1] == got and rs[0] <= ceiling

    @invariant()
    def supply_conserved(self) -> None:
        t = self.s.token
        assert t.totalSupply() == self.minted
        holders = (
            [p.address for p in PAYERS]
            + RECEIVERS
            + [self.s.escrow.address, self.s.collector.address]
        )
        assert sum(t.balanceOf(h) for h in holders) == self.minted
        assert t.balanceOf(self.s.collector.address) == 0


@pytest.mark.timeout(900)
def test_escrow_stateful(_module_system: System) -> None:
    EscrowMachine.system = _module_system
    run_state_machine_as_test(EscrowMachine, settings=settings(stateful_step_count=STEPS))
