"""check_signature answers every voucher it is given with a 402 naming the signature, never
a crash: one built by hand (not through parse_voucher) whose channel id is not 32 bytes or
whose authorizer is not hex cannot be recovered against, and is refused for that."""

from __future__ import annotations

import dataclasses

import pytest
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from agoranet.payments.accept.verifier import check_signature, parse_voucher

from .test_voucher_checks import CHAIN, payload, refusal

pytestmark = pytest.mark.timeout(30)


def test_a_channel_id_of_another_length_is_an_invalid_signature() -> None:
    voucher = parse_voucher(payload(77))
    short = dataclasses.replace(voucher, channel_id=voucher.channel_id[:-2])
    assert refusal(check_signature, short, CHAIN).reason == \
        bs_errors.ERR_INVALID_VOUCHER_SIGNATURE


def test_an_authorizer_that_is_not_hex_is_an_invalid_signature() -> None:
    voucher = parse_voucher(payload(77))
    config = ChannelConfig.from_dict({**voucher.config.to_dict(), "payerAuthorizer": "0xzz"})
    odd = dataclasses.replace(voucher, config=config)
    assert refusal(check_signature, odd, CHAIN).reason == \
        bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
