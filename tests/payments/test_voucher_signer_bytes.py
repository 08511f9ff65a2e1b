"""The voucher's signer is compared with the channel's payer authorizer as 20 bytes
(payments/accept/verifier.py, payments/ecdsa.py): any letter case of the authorizer is the same
address, one byte off is another, and the bytes recovered are the checksummed address's."""

from __future__ import annotations

import pytest
from eth_account import Account
from x402.mechanisms.evm.batch_settlement import errors as bs_errors

from agoranet.payments.accept.verifier import check_signature, parse_voucher
from agoranet.payments.ecdsa import recover_address, recover_address_bytes
from agoranet.payments.vouchers import voucher_digest

from .test_voucher_checks import CHAIN, PAYER, config, payload, refusal

pytestmark = pytest.mark.timeout(30)


def test_the_authorizer_in_any_letter_case_is_the_signer() -> None:
    digits = PAYER.address[2:]
    for spelled in (PAYER.address, "0x" + digits.lower(), "0x" + digits.upper()):
        check_signature(parse_voucher(payload(77, cfg=config(payerAuthorizer=spelled))), CHAIN)


def test_an_authorizer_one_byte_off_or_another_key_is_refused() -> None:
    raw = bytes.fromhex(PAYER.address[2:])
    for other in ("0x" + (raw[:-1] + bytes([raw[-1] ^ 1])).hex(),
                  "0x" + (bytes([raw[0] ^ 0x80]) + raw[1:]).hex(),
                  Account.create().address):
        voucher = parse_voucher(payload(77, cfg=config(payerAuthorizer=other)))
        assert refusal(check_signature, voucher, CHAIN).reason == \
            bs_errors.ERR_INVALID_VOUCHER_SIGNATURE


def test_the_bytes_recovered_are_the_checksummed_addresss() -> None:
    voucher = parse_voucher(payload(77))
    digest = voucher_digest(voucher.channel_id, voucher.amount, CHAIN)
    signature = bytes.fromhex(voucher.signature[2:])
    raw = recover_address_bytes(digest, signature)
    assert raw == bytes.fromhex(PAYER.address[2:])
    assert recover_address(digest, signature) == PAYER.address
    assert recover_address_bytes(digest[:31], signature) is None
    assert recover_address_bytes(digest, signature[:64]) is None
    assert recover_address(digest, signature[:64]) is None
