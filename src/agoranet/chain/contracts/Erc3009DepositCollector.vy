# pragma version ~=0.4.3
"""
@title Erc3009DepositCollector
@notice Deposit collector for BatchSettlement: pulls a deposit with the payer's
        EIP-3009 `receiveWithAuthorization` and forwards it to the escrow.
@dev `collectorData` is abi.encode(uint256 validAfter, uint256 validBefore,
     uint256 salt, bytes signature); the authorization nonce is
     keccak256(abi.encode(channelId, salt)), as the x402 SDK builds it.
     The escrow address lives in storage (not an immutable), so a dev chain can
     install this code at the SDK's constant address and set that slot.
"""

interface IERC3009:
    def receiveWithAuthorization(
        sender: address,
        receiver: address,
        amount: uint256,
        validAfter: uint256,
        validBefore: uint256,
        nonce: bytes32,
        v: uint8,
        r: bytes32,
        s: bytes32,
    ): nonpayable

SIG_MAX: constant(uint256) = 1024
COLLECTOR_DATA_MAX: constant(uint256) = 2048

settlement: public(address)


@deploy
def __init__(settlement: address):
    assert settlement != empty(address), "InvalidX402BatchSettlementAddress"
    self.settlement = settlement


@external
def collect(
    payer: address,
    token: address,
    amount: uint256,
    channelId: bytes32,
    collectorData: Bytes[COLLECTOR_DATA_MAX],
):
    """
    @notice Pull `amount` of `token` from `payer` into the calling escrow.
    """
    assert msg.sender == self.settlement, "OnlyX402BatchSettlement"
    valid_after: uint256 = 0
    valid_before: uint256 = 0
    salt: uint256 = 0
    signature: Bytes[SIG_MAX] = b""
    valid_after, valid_before, salt, signature = abi_decode(
        collectorData, (uint256, uint256, uint256, Bytes[SIG_MAX])
    )
    nonce: bytes32 = keccak256(abi_encode(channelId, salt))
    if len(signature) == 65:
        v: uint8 = convert(slice(signature, 64, 1), uint8)
        if v < 27:
            v += 27
        extcall IERC3009(token).receiveWithAuthorization(
            payer,
            self,
            amount,
            valid_after,
            valid_before,
            nonce,
            v,
            extract32(signature, 0),
            extract32(signature, 32),
        )
    else:
        raw_call(
            token,
            abi_encode(
                payer,
                self,
                amount,
                valid_after,
                valid_before,
                nonce,
                signature,
                method_id=method_id(
                    "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
                ),
            ),
        )
    out: Bytes[32] = raw_call(
        token,
        abi_encode(msg.sender, amount, method_id=method_id("transfer(address,uint256)")),
        max_outsize=32,
    )
    if len(out) != 0:
        assert convert(out, bool), "TokenTransferFailed"
