"""The ``exact`` scheme's client half, rule by rule (no chain: signatures and checks only).

It signs EIP-3009 ``transferWithAuthorization`` for exactly the requirement's amount,
byte for byte as the x402 SDK's exact client signs the same authorization, refuses a
requirement it should not pay, and checks the payment response and its receipt.
The same half paying a real node on the dev chain is in test_schemes_exact_chain.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.exact.client import ExactEvmScheme as SdkExactClient
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.types import ExactEIP3009Authorization
from x402.schemas import PaymentRequired

from agoranet.errors import CannotPayError, PaymentError, ReceiptError
from agoranet.payments import x402wire
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.payments.schemes import SCHEME_EXACT, ClientPayment, ExactClient, Paid
from agoranet.payments.schemes.exact import TRANSFER_WITH_AUTHORIZATION

from .acceptor_support import CHAIN, NETWORK, NODE, TERMS, TOKEN

pytestmark = pytest.mark.timeout(30)

BUYER: LocalAccount = Account.create()
AMOUNT = 12_345


def requirement(amount: int = AMOUNT, **change: Any) -> Any:
    return TERMS.requirement(SCHEME_EXACT, amount).model_copy(update=change)


def test_it_signs_a_transfer_of_exactly_the_amount_as_the_sdk_does() -> None:
    before = int(time.time())
    payment = ExactClient(BUYER).pay(requirement(), "req-1")
    assert (payment.scheme, payment.request_id, payment.amount) == (SCHEME_EXACT, "req-1", AMOUNT)
    decoded = x402wire.decode_payment_payload(payment.header)
    assert decoded.x402_version == 2 and decoded.accepted == requirement()
    auth = decoded.payload["authorization"]
    assert (auth["from"], auth["to"], auth["value"], auth["validAfter"]) == \
        (BUYER.address, NODE.address, str(AMOUNT), "0")
    assert before + 3600 <= int(auth["validBefore"]) <= int(time.time()) + 3600
    assert len(auth["nonce"]) == 66 and payment.state["nonce"] == auth["nonce"].lower()
    # the signature recovers to the buyer over the token's EIP-712 domain ...
    typed = encode_typed_data(
        {"name": "USD Coin", "version": "2", "chainId": CHAIN, "verifyingContract": TOKEN},
        TRANSFER_WITH_AUTHORIZATION,
        {**auth, "value": AMOUNT, "validAfter": 0, "validBefore": int(auth["validBefore"]),
         "nonce": bytes.fromhex(auth["nonce"][2:])})
    assert Account.recover_message(typed, signature=decoded.payload["signature"]) == \
        BUYER.address
    # ... and is the SDK exact client's own signature for that authorization
    sdk = SdkExactClient(EthAccountSigner(BUYER))._sign_authorization(
        ExactEIP3009Authorization(from_address=BUYER.address, to=NODE.address,
                                  value=str(AMOUNT), valid_after="0",
                                  valid_before=auth["validBefore"], nonce=auth["nonce"]),
        requirement())
    assert decoded.payload["signature"] == sdk
    # every payment has its own nonce and request id
    again = ExactClient(BUYER).pay(requirement())
    assert again.state["nonce"] != payment.state["nonce"]
    assert again.request_id != payment.request_id and len(again.request_id) == 32


NO_DOMAIN = ("the exact requirement names no EIP-712 token name and version (extra.name, "
             "extra.version)")


@pytest.mark.parametrize(("options", "req", "error", "says"), [
    ({"max_amount": AMOUNT - 1}, requirement(), CannotPayError,
     f"the requirement asks {AMOUNT} base units, above this payer's cap of {AMOUNT - 1} "
     "a payment"),
    ({"pay_to": TOKEN}, requirement(), PaymentError,
     f"the requirement pays {NODE.address}, not {TOKEN}"),
    ({"asset": NODE.address}, requirement(), PaymentError,
     f"the requirement is in token {TOKEN}, not {NODE.address}"),
    ({}, requirement(amount="lots"), PaymentError,
     "the exact requirement is malformed: amount is not a decimal integer"),
    ({}, requirement(pay_to="0x12"), PaymentError,
     "the exact requirement is malformed: payTo is not an address (0x and 40 hex digits)"),
    ({}, requirement(asset="nope"), PaymentError,
     "the exact requirement is malformed: asset is not an address (0x and 40 hex digits)"),
    ({}, requirement(network="solana:1"), PaymentError,
     "the exact requirement is malformed: network 'solana:1' is not eip155:<chain id>"),
    ({}, requirement(network="eip155:x"), PaymentError,
     "the exact requirement is malformed: network 'eip155:x' is not eip155:<chain id>"),
    ({}, requirement(extra={"name": "USD Coin"}), PaymentError, NO_DOMAIN),
    ({}, requirement(extra={"version": "2"}), PaymentError, NO_DOMAIN),
    ({}, requirement(extra={"name": 1, "version": "2"}), PaymentError, NO_DOMAIN),
    ({}, requirement(scheme="batch-settlement"), PaymentError,
     "an exact payer cannot pay a batch-settlement requirement"),
])
def test_a_requirement_it_should_not_pay_is_refused(options: dict[str, Any], req: Any,
                                                    error: type[Exception], says: str) -> None:
    with pytest.raises(error) as info:
        ExactClient(BUYER, **options).pay(req)
    assert type(info.value) is error and str(info.value) == says


def test_paying_within_the_cap_and_to_the_expected_payee_works() -> None:
    client = ExactClient(BUYER, max_amount=AMOUNT, pay_to=NODE.address.lower(),
                         asset=TOKEN.lower())
    assert client.pay(requirement()).amount == AMOUNT


# ------------------------------------------------------------------ checking the answer

NODE_SIGNER = ReceiptSigner(bytes(NODE.key))


def paid(payment: ClientPayment, **change: Any) -> dict[str, Any]:
    """The node's payment response for ``payment`` (as ExactServer.charge makes it)."""
    fields = {"request_id": payment.request_id, "channel_id": payment.state["nonce"],
              "tokens_in": 3, "tokens_out": 5, "amount": payment.amount,
              "cumulative": payment.amount, "chain_id": CHAIN}
    signer = change.pop("signer", NODE_SIGNER)
    fields.update({k: v for k, v in change.items() if k in fields})
    receipt = signer.sign(Receipt(**fields))
    response = {"success": True, "transaction": "0x" + "ab" * 32, "network": NETWORK,
                "payer": BUYER.address, "extra": {"receipt": receipt.to_json()}}
    response.update({k: v for k, v in change.items() if k not in fields})
    return response


def test_a_good_response_is_believed_with_its_receipt() -> None:
    client = ExactClient(BUYER)
    payment = client.pay(requirement(), "req-1")
    result = client.check(payment, paid(payment), max_tokens=5)
    assert isinstance(result, Paid)
    assert (result.amount, result.transaction) == (AMOUNT, "0x" + "ab" * 32)
    assert result.receipt is not None and result.receipt.request_id == "req-1"
    assert result.receipt.signer == NODE.address
    # a server that signs no receipt (settled after the answer, a plain x402 server)
    bare = {"success": True, "network": NETWORK, "transaction": "0x" + "cd" * 32}
    assert client.check(payment, bare) == Paid(AMOUNT, "0x" + "cd" * 32, None)
    bare["transaction"] = ""
    assert client.check(payment, bare) == Paid(AMOUNT, "", None)
    assert client.check(payment, {**bare, "payer": BUYER.address.lower(), "extra": {}}) == \
        Paid(AMOUNT)


@pytest.mark.parametrize(("change", "says"), [
    ({"success": False}, "the exact payment response does not report success"),
    ({"success": "yes"}, "the exact payment response does not report success"),
    ({"network": "eip155:1"}, "the exact payment response is for another network"),
    ({"payer": NODE.address}, "the exact payment response names another payer"),
    ({"request_id": "other"}, "receipt other is for another request"),
    ({"channel_id": "0x" + "00" * 32}, "receipt req-1 is for another transfer"),
    ({"chain_id": 1}, "receipt req-1 is for another chain"),
    ({"amount": AMOUNT - 1}, f"receipt req-1 charges {AMOUNT - 1}, the transfer moved {AMOUNT}"),
    ({"cumulative": AMOUNT + 1}, f"receipt req-1 charges {AMOUNT}, the transfer moved {AMOUNT}"),
    ({"signer": ReceiptSigner(bytes(Account.create().key))}, "signed by"),
    ({"extra": {"receipt": {"requestId": "x"}}}, "malformed receipt: 'channelId'"),
    ({"extra": {"receipt": "signed"}}, "the exact payment's receipt is not an object: 'signed'"),
])
def test_a_response_that_breaks_one_check_is_refused(change: dict[str, Any], says: str) -> None:
    client = ExactClient(BUYER)
    payment = client.pay(requirement(), "req-1")
    with pytest.raises(ReceiptError) as info:
        client.check(payment, paid(payment, **change))
    assert says in str(info.value)


def test_more_tokens_than_asked_for_is_refused() -> None:
    client = ExactClient(BUYER)
    payment = client.pay(requirement(), "req-1")
    with pytest.raises(ReceiptError) as info:
        client.check(payment, paid(payment), max_tokens=4)
    assert str(info.value) == "receipt req-1 counts more tokens than max_tokens"


def test_a_refusal_quotes_at_most_300_characters_of_what_came() -> None:
    client = ExactClient(BUYER)
    payment = client.pay(requirement(), "req-1")
    with pytest.raises(ReceiptError) as info:
        client.check(payment, {"success": False, "pad": "x" * 400})
    assert len(str(info.value)) == 300
    assert str(info.value).startswith("the exact payment response does not report success: ")
    with pytest.raises(ReceiptError) as info:
        client.check(payment, paid(payment, extra={"receipt": "y" * 400}))
    assert str(info.value) == ("the exact payment's receipt is not an object: '" + "y" * 400)[:300]


def test_no_corrective_402_is_adopted() -> None:
    required = PaymentRequired.model_validate({"x402Version": 2, "error": "x", "accepts": [
        requirement().model_dump(by_alias=True)]})
    assert ExactClient(BUYER).adopt(required) is False
