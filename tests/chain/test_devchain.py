"""The dev chain (anvil) end to end with the x402 SDK's own client and facilitator.

Skipped when no anvil binary is found (``npm install --prefix .tools @foundry-rs/anvil``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.client.scheme import BatchSettlementEvmScheme
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.facilitator.scheme import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.batch_settlement.types import (
    ChannelConfig,
    ClaimPayload,
    EnrichedRefundPayload,
    SettlePayload,
    VoucherClaim,
)
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner, FacilitatorWeb3Signer
from x402.schemas import PaymentPayload, PaymentRequirements

from agoranet.chain import compile_contract
from agoranet.chain.devchain import DevChain, find_anvil, start_devchain
from agoranet.errors import DevChainError

try:
    find_anvil()
    _ANVIL_MISSING = ""
except DevChainError as exc:
    _ANVIL_MISSING = str(exc)

pytestmark = pytest.mark.skipif(bool(_ANVIL_MISSING), reason=_ANVIL_MISSING or "anvil found")

PRICE = 1_000  # per voucher step, base units


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    with start_devchain() as c:
        yield c


def _balance(chain: DevChain, who: str) -> int:
    token = chain.web3().eth.contract(
        address=chain.stablecoin, abi=compile_contract("Stablecoin").abi
    )
    return int(token.functions.balanceOf(who).call())


def test_devchain_installs_contracts(chain: DevChain) -> None:
    w3 = chain.web3()
    assert w3.eth.chain_id == chain.chain_id == 31337
    assert w3.eth.get_code(chain.escrow) == compile_contract("BatchSettlement").runtime_bytecode
    assert _balance(chain, chain.accounts[5]) == 1_000_000 * 10**6
    collector = w3.eth.contract(
        address=chain.collector, abi=compile_contract("Erc3009DepositCollector").abi
    )
    assert collector.functions.settlement().call() == chain.escrow


def test_state_file_persists(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with start_devchain(state_file=state) as c:
        token = c.web3().eth.contract(address=c.stablecoin, abi=compile_contract("Stablecoin").abi)
        tx = token.functions.transfer(c.accounts[2], 123).transact({"from": c.accounts[1]})
        c.web3().eth.wait_for_transaction_receipt(tx)
    assert state.is_file()
    with start_devchain(state_file=state) as c:
        assert _balance(c, c.accounts[2]) == 1_000_000 * 10**6 + 123


def test_sdk_batch_settlement_round_trip(chain: DevChain) -> None:
    """Open a channel, sign 100 vouchers, claim, settle, refund: with the SDK's code."""
    keys = chain.private_keys
    payer = Account.from_key(keys[1])
    receiver = Account.from_key(keys[2]).address
    authorizer = LocalAuthorizerSigner(keys[3])
    facilitator = BatchSettlementEvmFacilitator(
        FacilitatorWeb3Signer(keys[4], chain.rpc_url), authorizer_signer=authorizer
    )
    requirements = PaymentRequirements(
        scheme="batch-settlement",
        network=chain.network,
        asset=chain.stablecoin,
        amount=str(100 * PRICE),  # the SDK deposits a multiple of this
        pay_to=receiver,
        max_timeout_seconds=3600,
        extra={
            "name": "USD Coin",
            "version": "2",
            "receiverAuthorizer": authorizer.address,
            "withdrawDelay": 900,
        },
    )
    payer_before, receiver_before = _balance(chain, payer.address), _balance(chain, receiver)

    client = BatchSettlementEvmScheme(EthAccountSigner(payer))
    first = client.create_payment_payload(requirements)
    assert first["type"] == "deposit"
    deposit = int(first["deposit"]["amount"])
    payment = PaymentPayload(payload=first, accepted=requirements)
    verified = facilitator.verify(payment, requirements)
    assert verified.is_valid, verified.invalid_reason
    opened = facilitator.settle(payment, requirements)
    assert opened.success, (opened.error_reason, opened.error_message)
    assert _balance(chain, payer.address) == payer_before - deposit
    assert _balance(chain, chain.escrow) >= deposit

    config = ChannelConfig.from_dict(first["channelConfig"])
    channel_id = compute_channel_id(config, chain.network)
    signer = EthAccountSigner(payer)
    last = None
    for n in range(1, 101):  # cumulative vouchers, one per request
        last = sign_voucher(signer, channel_id, n * PRICE, chain.network)
        voucher_payment = PaymentPayload(
            payload={
                "type": "voucher",
                "channelConfig": config.to_dict(),
                "voucher": last.to_dict(),
            },
            accepted=requirements,
        )
        if n in (1, 50, 100):
            check = facilitator.verify(voucher_payment, requirements)
            assert check.is_valid, check.invalid_reason
    assert last is not None
    final = int(last.max_claimable_amount)
    assert final == 100 * PRICE < deposit

    claim = ClaimPayload(
        claims=[
            VoucherClaim(
                channel=config,
                max_claimable_amount=last.max_claimable_amount,
                signature=last.signature,
                total_claimed=str(final),
            )
        ]
    )
    claimed = facilitator.settle(
        PaymentPayload(payload=claim.to_dict(), accepted=requirements), requirements
    )
    assert claimed.success, (claimed.error_reason, claimed.error_message)
    settle = SettlePayload(receiver=receiver, token=chain.stablecoin)
    settled = facilitator.settle(
        PaymentPayload(payload=settle.to_dict(), accepted=requirements), requirements
    )
    assert settled.success, (settled.error_reason, settled.error_message)
    assert _balance(chain, receiver) == receiver_before + final

    refund = EnrichedRefundPayload(
        channel_config=config, voucher=last, amount=str(deposit), refund_nonce="0"
    )
    refunded = facilitator.settle(
        PaymentPayload(payload=refund.to_dict(), accepted=requirements), requirements
    )
    assert refunded.success, (refunded.error_reason, refunded.error_message)
    assert _balance(chain, payer.address) == payer_before - final
    assert _balance(chain, receiver) == receiver_before + final
    escrow: Any = chain.web3().eth.contract(
        address=chain.escrow, abi=compile_contract("BatchSettlement").abi
    )
    assert tuple(escrow.functions.channels(bytes.fromhex(channel_id[2:])).call()) == (final, final)
