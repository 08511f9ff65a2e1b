"""Sub-keys on a real dev chain: the deposit is a hard cap, enforced by the escrow itself.

What the escrow does with a sub-key channel (payerAuthorizer = the sub-key):
- a voucher may name any ceiling; the receiver's claim is checked against it
  (``ClaimExceedsCeiling``) and against the channel's balance, i.e. the deposit
  (``ClaimExceedsBalance``): a claim above the deposit REVERTS, it is not capped;
- only the sub-key's signature counts on that channel; the payer's own key is
  refused (``InvalidSignature``);
- withdrawals started by the sub-key pay the payer, never the sub-key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.errors import ContractError, WalletError
from agoranet.payments.channels import (
    finalize_withdraw,
    find_channel,
    find_channels,
    initiate_withdraw,
)
from agoranet.payments.pay.subkeys import create_subkey, read_subkey, revoke, write_subkey

from .conftest import Env
from .support import channel_state, claim, needs_anvil, settle, token_balance

pytestmark = needs_anvil
DEPOSIT = 5_000_000  # 5 USDC


def test_subkey_spends_its_deposit_and_not_one_unit_more(
    env: Env, payer: LocalAccount, receiver: LocalAccount
) -> None:
    w3, addrs = env.w3, env.addresses
    payer_before = token_balance(w3, addrs, payer.address)
    receiver_before = token_balance(w3, addrs, receiver.address)
    escrow_before = token_balance(w3, addrs, addrs.escrow)
    sk, _ = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=DEPOSIT)
    assert sk.config.payer == payer.address and sk.config.payer_authorizer == sk.address
    assert token_balance(w3, addrs, payer.address) == payer_before - DEPOSIT
    assert token_balance(w3, addrs, addrs.escrow) == escrow_before + DEPOSIT
    assert channel_state(w3, addrs, sk.channel_id) == (DEPOSIT, 0)

    # The agent signs whatever it likes: a voucher for three times its budget.
    greedy = sk.sign_voucher(3 * DEPOSIT)
    with pytest.raises(ContractError, match="ClaimExceedsBalance"):
        claim(w3, addrs, receiver, sk.config, 3 * DEPOSIT, greedy.signature, DEPOSIT + 1)
    with pytest.raises(ContractError, match="ClaimExceedsBalance"):
        claim(w3, addrs, receiver, sk.config, 3 * DEPOSIT, greedy.signature, 3 * DEPOSIT)
    assert channel_state(w3, addrs, sk.channel_id) == (DEPOSIT, 0)

    # Spending within the voucher's ceiling and the deposit works, cumulatively.
    partial = sk.sign_voucher(2_000_000)
    with pytest.raises(ContractError, match="ClaimExceedsCeiling"):
        claim(w3, addrs, receiver, sk.config, 2_000_000, partial.signature, 2_000_001)
    claim(w3, addrs, receiver, sk.config, 2_000_000, partial.signature, 2_000_000)
    claim(w3, addrs, receiver, sk.config, 3 * DEPOSIT, greedy.signature, DEPOSIT)
    assert channel_state(w3, addrs, sk.channel_id) == (DEPOSIT, DEPOSIT)

    # The budget is spent: any further claim, whatever was signed, reverts.
    more = sk.sign_voucher(10**12)
    with pytest.raises(ContractError, match="ClaimExceedsBalance"):
        claim(w3, addrs, receiver, sk.config, 10**12, more.signature, DEPOSIT + 1)

    settle(w3, addrs, receiver, receiver.address)
    assert token_balance(w3, addrs, receiver.address) == receiver_before + DEPOSIT
    assert token_balance(w3, addrs, payer.address) == payer_before - DEPOSIT
    assert token_balance(w3, addrs, addrs.escrow) == escrow_before


def test_only_the_subkey_signs_for_its_channel(
    env: Env, payer: LocalAccount, receiver: LocalAccount
) -> None:
    w3, addrs = env.w3, env.addresses
    sk, _ = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=DEPOSIT)
    by_payer = sign_voucher(EthAccountSigner(payer), sk.channel_id, 1_000, addrs.network)
    stranger = Account.create()
    by_stranger = sign_voucher(EthAccountSigner(stranger), sk.channel_id, 1_000, addrs.network)
    for voucher in (by_payer, by_stranger):
        with pytest.raises(ContractError, match="InvalidSignature"):
            claim(w3, addrs, receiver, sk.config, 1_000, voucher.signature, 1_000)
    assert channel_state(w3, addrs, sk.channel_id) == (DEPOSIT, 0)


def test_subkey_withdrawal_pays_the_payer_not_the_subkey(
    env: Env, payer: LocalAccount, receiver: LocalAccount
) -> None:
    w3, addrs = env.w3, env.addresses
    sk, _ = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=DEPOSIT)
    agent = sk.account()
    env.dev.web3().eth.send_transaction(
        {"from": env.dev.accounts[0], "to": agent.address, "value": 10**17}
    )
    payer_before = token_balance(w3, addrs, payer.address)
    initiate_withdraw(w3, addrs, agent, sk.config, DEPOSIT)
    w3.provider.make_request("evm_increaseTime", [901])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    finalize_withdraw(w3, addrs, agent, sk.config)
    assert token_balance(w3, addrs, agent.address) == 0
    assert token_balance(w3, addrs, payer.address) == payer_before + DEPOSIT


def test_revoke_returns_what_is_left(
    env: Env, payer: LocalAccount, receiver: LocalAccount, tmp_path: Path
) -> None:
    w3, addrs = env.w3, env.addresses
    sk, opened = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=DEPOSIT)
    write_subkey(tmp_path / "agent.json", sk)
    assert (tmp_path / "agent.json").stat().st_mode & 0o777 == 0o600
    assert read_subkey(tmp_path / "agent.json") == sk
    with pytest.raises(WalletError, match="already exists"):
        write_subkey(tmp_path / "agent.json", sk)
    spent = 1_250_000
    voucher = sk.sign_voucher(spent)
    claim(w3, addrs, receiver, sk.config, spent, voucher.signature, spent)
    payer_before = token_balance(w3, addrs, payer.address)

    first = revoke(w3, addrs, payer, sk.config)
    assert first.state == "pending" and first.finalize_after is not None
    assert first.channel.withdraw_amount == DEPOSIT - spent
    with pytest.raises(ContractError, match="WithdrawDelayNotElapsed"):
        finalize_withdraw(w3, addrs, payer, sk.config)
    again = revoke(w3, addrs, payer, sk.config)  # still too early: nothing changes
    assert again.state == "pending" and again.transactions == ()

    done = revoke(w3, addrs, payer, sk.config, advance_time=True)
    assert done.state == "finalized" and done.returned == DEPOSIT - spent
    assert token_balance(w3, addrs, payer.address) == payer_before + DEPOSIT - spent
    assert channel_state(w3, addrs, sk.channel_id) == (spent, spent)
    late = sk.sign_voucher(DEPOSIT)
    with pytest.raises(ContractError, match="ClaimExceedsBalance"):
        claim(w3, addrs, receiver, sk.config, DEPOSIT, late.signature, spent + 1)
    assert revoke(w3, addrs, payer, sk.config).state == "nothing-left"
    print(f"gas: open {opened.gas_used}, initiate {first.transactions[0].gas_used}, "
          f"finalize {done.transactions[0].gas_used}")


def test_channels_are_found_from_events(
    env: Env, payer: LocalAccount, receiver: LocalAccount
) -> None:
    w3, addrs = env.w3, env.addresses
    a, _ = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=1_000_000)
    b, _ = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=2_000_000)
    found = {c.channel_id: c for c in find_channels(w3, addrs, payer.address)}
    assert set(found) == {a.channel_id, b.channel_id}
    assert found[b.channel_id].balance == 2_000_000 and found[b.channel_id].config == b.config
    assert find_channel(w3, addrs, a.channel_id).config == a.config
    assert find_channels(w3, addrs, Account.create().address) == []


def test_revoke_refuses_someone_elses_channel(
    env: Env, payer: LocalAccount, receiver: LocalAccount
) -> None:
    sk, _ = create_subkey(env.w3, env.addresses, payer, receiver=receiver.address, deposit=1)
    with pytest.raises(WalletError, match="payer is"):
        revoke(env.w3, env.addresses, receiver, sk.config)


def test_revoke_survives_a_claim_landing_between_its_read_and_its_transaction(
    env: Env, payer: LocalAccount, receiver: LocalAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's settlement loop may claim while the payer withdraws: the payer's first
    ``initiateWithdraw`` then asks for more than is left and reverts; it reads again."""
    from agoranet.payments.pay import subkeys

    w3, addrs = env.w3, env.addresses
    sk, _ = create_subkey(w3, addrs, payer, receiver=receiver.address, deposit=DEPOSIT)
    spent = 400_000
    real_read = subkeys.read_channel
    reads = 0

    def read_then_claim(*args: object) -> object:
        nonlocal reads
        reads += 1
        info = real_read(*args)  # type: ignore[arg-type]
        if reads == 1:  # the node claims right after the payer has looked
            claim(w3, addrs, receiver, sk.config, spent, sk.sign_voucher(spent).signature, spent)
        return info

    monkeypatch.setattr(subkeys, "read_channel", read_then_claim)
    outcome = revoke(w3, addrs, payer, sk.config)
    assert outcome.state == "pending" and reads >= 3
    assert outcome.channel.withdraw_amount == DEPOSIT - spent
