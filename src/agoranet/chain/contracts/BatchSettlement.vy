# pragma version ~=0.4.3
"""
@title BatchSettlement
@notice Escrow for the x402 `batch-settlement` scheme: unidirectional payment
        channels funded through deposit collectors, paid out by cumulative
        payer-signed vouchers that the receiver side claims in batches and
        settles per (receiver, token).
@dev ABI and semantics follow the x402 SDK (`x402.mechanisms.evm.batch_settlement`).
     The EIP-712 domain uses `self` at call time and nothing is immutable, so the
     runtime code can be copied to the SDK's constant address on a dev chain.
     Revert reasons are the names of the reference contract's custom errors.
"""

interface IDepositCollector:
    def collect(
        payer: address,
        token: address,
        amount: uint256,
        channelId: bytes32,
        collectorData: Bytes[COLLECTOR_DATA_MAX],
    ): nonpayable

interface IERC20Balance:
    def balanceOf(account: address) -> uint256: view

struct ChannelConfig:
    payer: address
    payerAuthorizer: address
    receiver: address
    receiverAuthorizer: address
    token: address
    withdrawDelay: uint40
    salt: bytes32

struct ChannelState:
    balance: uint128
    totalClaimed: uint128

struct WithdrawalState:
    amount: uint128
    initiatedAt: uint40

struct ReceiverState:
    totalClaimed: uint128
    totalSettled: uint128

struct Voucher:
    channel: ChannelConfig
    maxClaimableAmount: uint128

struct VoucherClaim:
    voucher: Voucher
    signature: Bytes[CLAIM_SIG_MAX]
    totalClaimed: uint128

event ChannelCreated:
    channelId: indexed(bytes32)
    config: ChannelConfig

event ChannelClosed:
    channelId: indexed(bytes32)
    config: ChannelConfig

event Deposited:
    channelId: indexed(bytes32)
    sender: indexed(address)
    amount: uint128
    newBalance: uint128

event Claimed:
    channelId: indexed(bytes32)
    sender: indexed(address)
    claimAmount: uint128
    newTotalClaimed: uint128

event Settled:
    receiver: indexed(address)
    token: indexed(address)
    sender: indexed(address)
    amount: uint128

event Refunded:
    channelId: indexed(bytes32)
    sender: indexed(address)
    amount: uint128

event WithdrawInitiated:
    channelId: indexed(bytes32)
    amount: uint128
    finalizeAfter: uint40

event WithdrawFinalized:
    channelId: indexed(bytes32)
    sender: indexed(address)
    amount: uint128

# Bounds. Vyper reserves memory for a bounded argument's full size, and memory
# gas grows with it, so batch arguments are kept modest: up to MAX_BATCH rows
# per claim (the SDK batches 100), voucher signatures up to CLAIM_SIG_MAX bytes
# (ECDSA, or a short EIP-1271 signature), up to MULTICALL_MAX calls.
SIG_MAX: constant(uint256) = 1024
CLAIM_SIG_MAX: constant(uint256) = 256
COLLECTOR_DATA_MAX: constant(uint256) = 2048
MAX_BATCH: constant(uint256) = 128
MULTICALL_MAX: constant(uint256) = 4
MULTICALL_DATA_MAX: constant(uint256) = 16384
MULTICALL_RESULT_MAX: constant(uint256) = 256

MIN_WITHDRAW_DELAY: public(constant(uint40)) = 900
MAX_WITHDRAW_DELAY: public(constant(uint40)) = 2592000

NAME: constant(String[32]) = "x402 Batch Settlement"
VERSION: constant(String[8]) = "1"
EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
CHANNEL_CONFIG_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
)
VOUCHER_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Voucher(bytes32 channelId,uint128 maxClaimableAmount)"
)
REFUND_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Refund(bytes32 channelId,uint256 nonce,uint128 amount)"
)
CLAIM_ENTRY_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
)
CLAIM_BATCH_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
)
ERC1271_MAGIC: constant(bytes4) = 0x1626ba7e
SECP256K1N_HALF: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

channels: public(HashMap[bytes32, ChannelState])
refundNonce: public(HashMap[bytes32, uint256])
pendingWithdrawals: public(HashMap[bytes32, WithdrawalState])
receivers: public(HashMap[address, HashMap[address, ReceiverState]])


# --------------------------------------------------------------------------
# Deposits
# --------------------------------------------------------------------------

@external
@nonreentrant
def deposit(
    config: ChannelConfig,
    amount: uint128,
    collector: address,
    collectorData: Bytes[COLLECTOR_DATA_MAX],
):
    """
    @notice Fund a channel through a collector, which must move exactly
            `amount` of `config.token` from the payer to this contract.
    """
    assert config.payer != empty(address), "InvalidChannel"
    assert config.receiver != empty(address), "InvalidChannel"
    assert config.receiverAuthorizer != empty(address), "InvalidChannel"
    assert config.token != empty(address), "InvalidChannel"
    assert (
        config.withdrawDelay >= MIN_WITHDRAW_DELAY
        and config.withdrawDelay <= MAX_WITHDRAW_DELAY
    ), "WithdrawDelayOutOfRange"
    assert amount != 0, "ZeroDeposit"
    assert collector != empty(address), "InvalidCollector"

    channel_id: bytes32 = self._channel_id(config)
    ch: ChannelState = self.channels[channel_id]
    assert amount <= max_value(uint128) - ch.balance, "DepositOverflow"
    new_balance: uint128 = ch.balance + amount
    self.channels[channel_id].balance = new_balance

    before: uint256 = staticcall IERC20Balance(config.token).balanceOf(self)
    extcall IDepositCollector(collector).collect(
        config.payer, config.token, convert(amount, uint256), channel_id, collectorData
    )
    after: uint256 = staticcall IERC20Balance(config.token).balanceOf(self)
    assert after == before + convert(amount, uint256), "DepositCollectionFailed"

    if ch.balance == 0 and ch.totalClaimed == 0:
        log ChannelCreated(channelId=channel_id, config=config)
    log Deposited(channelId=channel_id, sender=msg.sender, amount=amount, newBalance=new_balance)


# --------------------------------------------------------------------------
# Claims and settlement
# --------------------------------------------------------------------------

@external
@nonreentrant
def claim(voucherClaims: DynArray[VoucherClaim, MAX_BATCH]):
    """
    @notice Apply voucher claims; the caller must be each row's receiver or
            receiverAuthorizer.
    """
    assert len(voucherClaims) != 0, "EmptyBatch"
    # Rows are copied one at a time: copying the whole bounded array would cost
    # far more memory gas than the work itself.
    for i: uint256 in range(len(voucherClaims), bound=MAX_BATCH):
        vc: VoucherClaim = voucherClaims[i]
        assert msg.sender == vc.voucher.channel.receiver or msg.sender == vc.voucher.channel.receiverAuthorizer, "NotAuthorizedToClaim"
        self._process_claim(vc, self._channel_id(vc.voucher.channel))


@external
@nonreentrant
def claimWithSignature(
    voucherClaims: DynArray[VoucherClaim, MAX_BATCH],
    authorizerSignature: Bytes[SIG_MAX],
):
    """
    @notice Apply voucher claims authorized by the shared receiverAuthorizer's
            EIP-712 signature over the batch; anyone may submit.
    """
    assert len(voucherClaims) != 0, "EmptyBatch"
    authorizer: address = voucherClaims[0].voucher.channel.receiverAuthorizer
    ids: DynArray[bytes32, MAX_BATCH] = []
    entries: DynArray[bytes32, MAX_BATCH] = []
    for i: uint256 in range(len(voucherClaims), bound=MAX_BATCH):
        cid: bytes32 = self._channel_id(voucherClaims[i].voucher.channel)
        ids.append(cid)
        entries.append(self._claim_entry_hash(cid, voucherClaims[i].voucher.maxClaimableAmount, voucherClaims[i].totalClaimed))
    digest: bytes32 = self._claim_batch_digest(entries)
    assert self._is_valid_signature(authorizer, digest, authorizerSignature), "InvalidSignature"
    for i: uint256 in range(len(voucherClaims), bound=MAX_BATCH):
        vc: VoucherClaim = voucherClaims[i]
        assert vc.voucher.channel.receiverAuthorizer == authorizer, "NotReceiverAuthorizer"
        self._process_claim(vc, ids[i])


@external
@nonreentrant
def settle(receiver: address, token: address):
    """
    @notice Transfer claimed but unsettled funds of (receiver, token) to the
            receiver; anyone may call. A no-op when nothing is pending.
    """
    rs: ReceiverState = self.receivers[receiver][token]
    amount: uint128 = rs.totalClaimed - rs.totalSettled
    if amount == 0:
        return
    self.receivers[receiver][token].totalSettled = rs.totalClaimed
    self._safe_transfer(token, receiver, amount)
    log Settled(receiver=receiver, token=token, sender=msg.sender, amount=amount)


# --------------------------------------------------------------------------
# Timed withdrawal (payer side)
# --------------------------------------------------------------------------

@external
@nonreentrant
def initiateWithdraw(config: ChannelConfig, amount: uint128):
    """
    @notice Start the payer's timed withdrawal of unclaimed escrow.
    """
    assert msg.sender == config.payer or msg.sender == config.payerAuthorizer, "InvalidChannel"
    assert amount != 0, "NothingToWithdraw"
    channel_id: bytes32 = self._channel_id(config)
    assert self.pendingWithdrawals[channel_id].initiatedAt == 0, "WithdrawalAlreadyPending"
    ch: ChannelState = self.channels[channel_id]
    assert amount <= ch.balance - ch.totalClaimed, "WithdrawAmountExceedsAvailable"
    now: uint40 = convert(block.timestamp, uint40)
    self.pendingWithdrawals[channel_id] = WithdrawalState(amount=amount, initiatedAt=now)
    log WithdrawInitiated(channelId=channel_id, amount=amount, finalizeAfter=now + config.withdrawDelay)


@external
@nonreentrant
def finalizeWithdraw(config: ChannelConfig):
    """
    @notice Complete a pending withdrawal once `withdrawDelay` has passed; the
            amount is capped by what is still unclaimed.
    """
    assert msg.sender == config.payer or msg.sender == config.payerAuthorizer, "NotAuthorizedToFinalizeWithdraw"
    channel_id: bytes32 = self._channel_id(config)
    ws: WithdrawalState = self.pendingWithdrawals[channel_id]
    assert ws.initiatedAt != 0, "WithdrawalNotPending"
    assert block.timestamp >= convert(ws.initiatedAt, uint256) + convert(config.withdrawDelay, uint256), "WithdrawDelayNotElapsed"
    ch: ChannelState = self.channels[channel_id]
    amount: uint128 = min(ws.amount, ch.balance - ch.totalClaimed)
    self.pendingWithdrawals[channel_id] = empty(WithdrawalState)
    new_balance: uint128 = ch.balance - amount
    self.channels[channel_id].balance = new_balance
    log WithdrawFinalized(channelId=channel_id, sender=msg.sender, amount=amount)
    if new_balance == 0 and ch.totalClaimed == 0:
        log ChannelClosed(channelId=channel_id, config=config)
    if amount != 0:
        self._safe_transfer(config.token, config.payer, amount)


# --------------------------------------------------------------------------
# Cooperative refund (receiver side)
# --------------------------------------------------------------------------

@external
@nonreentrant
def refund(config: ChannelConfig, amount: uint128):
    """
    @notice Return unclaimed escrow to the payer; only the receiver or the
            receiverAuthorizer may call. Advances `refundNonce`.
    """
    assert msg.sender == config.receiver or msg.sender == config.receiverAuthorizer, "NotAuthorizedToRefund"
    self._execute_refund(config, self._channel_id(config), amount)


@external
@nonreentrant
def refundWithSignature(
    config: ChannelConfig,
    amount: uint128,
    nonce: uint256,
    receiverAuthorizerSignature: Bytes[SIG_MAX],
):
    """
    @notice Refund authorized by the receiverAuthorizer's EIP-712 `Refund`
            signature at the current nonce; anyone may submit.
    """
    channel_id: bytes32 = self._channel_id(config)
    assert nonce == self.refundNonce[channel_id], "InvalidRefundNonce"
    digest: bytes32 = self._refund_digest(channel_id, nonce, amount)
    assert self._is_valid_signature(config.receiverAuthorizer, digest, receiverAuthorizerSignature), "InvalidSignature"
    self._execute_refund(config, channel_id, amount)


# --------------------------------------------------------------------------
# Multicall
# --------------------------------------------------------------------------

@external
def multicall(
    data: DynArray[Bytes[MULTICALL_DATA_MAX], MULTICALL_MAX]
) -> DynArray[Bytes[MULTICALL_RESULT_MAX], MULTICALL_MAX]:
    """
    @notice Run several calls to this contract in one transaction (delegatecall
            to self); the first failure reverts all with its revert data.
    """
    results: DynArray[Bytes[MULTICALL_RESULT_MAX], MULTICALL_MAX] = []
    for call_data: Bytes[MULTICALL_DATA_MAX] in data:
        ok: bool = False
        out: Bytes[MULTICALL_RESULT_MAX] = b""
        ok, out = raw_call(
            self,
            call_data,
            max_outsize=MULTICALL_RESULT_MAX,
            is_delegate_call=True,
            revert_on_failure=False,
        )
        if not ok:
            raw_revert(out)
        results.append(out)
    return results


# --------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------

@external
@view
def getChannelId(config: ChannelConfig) -> bytes32:
    return self._channel_id(config)


@external
@view
def getVoucherDigest(channelId: bytes32, maxClaimableAmount: uint128) -> bytes32:
    return self._voucher_digest(channelId, maxClaimableAmount)


@external
@view
def getRefundDigest(channelId: bytes32, nonce: uint256, amount: uint128) -> bytes32:
    return self._refund_digest(channelId, nonce, amount)


@external
@view
def getClaimBatchDigest(voucherClaims: DynArray[VoucherClaim, MAX_BATCH]) -> bytes32:
    entries: DynArray[bytes32, MAX_BATCH] = []
    for i: uint256 in range(len(voucherClaims), bound=MAX_BATCH):
        entries.append(
            self._claim_entry_hash(
                self._channel_id(voucherClaims[i].voucher.channel),
                voucherClaims[i].voucher.maxClaimableAmount,
                voucherClaims[i].totalClaimed,
            )
        )
    return self._claim_batch_digest(entries)


@external
@view
def DOMAIN_SEPARATOR() -> bytes32:
    return self._domain_separator()


@external
@view
def eip712Domain() -> (bytes1, String[32], String[8], uint256, address, bytes32, DynArray[uint256, 1]):
    """
    @notice EIP-5267 description of the EIP-712 domain.
    """
    return (0x0f, NAME, VERSION, chain.id, self, empty(bytes32), [])


# --------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------

@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(
        abi_encode(EIP712_DOMAIN_TYPEHASH, keccak256(NAME), keccak256(VERSION), chain.id, self)
    )


@internal
@view
def _typed_digest(struct_hash: bytes32) -> bytes32:
    return keccak256(concat(x"1901", self._domain_separator(), struct_hash))


@internal
@view
def _channel_id(config: ChannelConfig) -> bytes32:
    return self._typed_digest(
        keccak256(
            abi_encode(
                CHANNEL_CONFIG_TYPEHASH,
                config.payer,
                config.payerAuthorizer,
                config.receiver,
                config.receiverAuthorizer,
                config.token,
                config.withdrawDelay,
                config.salt,
            )
        )
    )


@internal
@view
def _voucher_digest(channel_id: bytes32, max_claimable: uint128) -> bytes32:
    return self._typed_digest(keccak256(abi_encode(VOUCHER_TYPEHASH, channel_id, max_claimable)))


@internal
@view
def _refund_digest(channel_id: bytes32, nonce: uint256, amount: uint128) -> bytes32:
    return self._typed_digest(keccak256(abi_encode(REFUND_TYPEHASH, channel_id, nonce, amount)))


@internal
@pure
def _claim_entry_hash(channel_id: bytes32, max_claimable: uint128, total_claimed: uint128) -> bytes32:
    return keccak256(abi_encode(CLAIM_ENTRY_TYPEHASH, channel_id, max_claimable, total_claimed))


@internal
@view
def _claim_batch_digest(entries: DynArray[bytes32, MAX_BATCH]) -> bytes32:
    # abi_encode of a bare array is (length, items...): drop the length word.
    packed: Bytes[32 + 32 * MAX_BATCH] = abi_encode(entries, ensure_tuple=False)
    root: bytes32 = keccak256(slice(packed, 32, 32 * len(entries)))
    return self._typed_digest(keccak256(abi_encode(CLAIM_BATCH_TYPEHASH, root)))


@internal
def _process_claim(vc: VoucherClaim, channel_id: bytes32):
    ch: ChannelState = self.channels[channel_id]
    if vc.totalClaimed <= ch.totalClaimed:
        return
    assert vc.totalClaimed <= vc.voucher.maxClaimableAmount, "ClaimExceedsCeiling"
    assert vc.totalClaimed <= ch.balance, "ClaimExceedsBalance"
    digest: bytes32 = self._voucher_digest(channel_id, vc.voucher.maxClaimableAmount)
    cfg: ChannelConfig = vc.voucher.channel
    if cfg.payerAuthorizer != empty(address):
        assert self._recover(digest, vc.signature) == cfg.payerAuthorizer, "InvalidSignature"
    else:
        assert self._is_valid_signature(cfg.payer, digest, vc.signature), "InvalidSignature"
    delta: uint128 = vc.totalClaimed - ch.totalClaimed
    self.channels[channel_id].totalClaimed = vc.totalClaimed
    self.receivers[cfg.receiver][cfg.token].totalClaimed += delta
    log Claimed(channelId=channel_id, sender=msg.sender, claimAmount=delta, newTotalClaimed=vc.totalClaimed)


@internal
def _execute_refund(config: ChannelConfig, channel_id: bytes32, amount: uint128):
    assert amount != 0, "ZeroRefund"
    self.refundNonce[channel_id] += 1
    ch: ChannelState = self.channels[channel_id]
    refund_amount: uint128 = min(amount, ch.balance - ch.totalClaimed)
    if refund_amount == 0:
        return
    new_balance: uint128 = ch.balance - refund_amount
    self.channels[channel_id].balance = new_balance
    ws: WithdrawalState = self.pendingWithdrawals[channel_id]
    if ws.initiatedAt != 0:
        if refund_amount >= ws.amount:
            self.pendingWithdrawals[channel_id] = empty(WithdrawalState)
        else:
            self.pendingWithdrawals[channel_id].amount = ws.amount - refund_amount
    log Refunded(channelId=channel_id, sender=msg.sender, amount=refund_amount)
    if new_balance == 0 and ch.totalClaimed == 0:
        log ChannelClosed(channelId=channel_id, config=config)
    self._safe_transfer(config.token, config.payer, refund_amount)


@internal
@pure
def _recover(digest: bytes32, signature: Bytes[SIG_MAX]) -> address:
    if len(signature) != 65:
        return empty(address)
    s: uint256 = extract32(signature, 32, output_type=uint256)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    if s > SECP256K1N_HALF or (v != 27 and v != 28):
        return empty(address)
    return ecrecover(digest, v, extract32(signature, 0, output_type=uint256), s)


@internal
@view
def _is_valid_signature(signer: address, digest: bytes32, signature: Bytes[SIG_MAX]) -> bool:
    """
    @dev Code-routed like OpenZeppelin's SignatureChecker: EIP-1271 for
         contracts, ECDSA for plain accounts.
    """
    if signer == empty(address):
        return False
    if not signer.is_contract:
        return self._recover(digest, signature) == signer
    ok: bool = False
    out: Bytes[32] = b""
    ok, out = raw_call(
        signer,
        abi_encode(digest, signature, method_id=method_id("isValidSignature(bytes32,bytes)")),
        max_outsize=32,
        is_static_call=True,
        revert_on_failure=False,
    )
    return ok and len(out) == 32 and convert(slice(out, 0, 4), bytes4) == ERC1271_MAGIC


@internal
def _safe_transfer(token: address, receiver: address, amount: uint128):
    assert token.is_contract, "TokenHasNoCode"
    out: Bytes[32] = raw_call(
        token,
        abi_encode(receiver, convert(amount, uint256), method_id=method_id("transfer(address,uint256)")),
        max_outsize=32,
    )
    if len(out) != 0:
        assert convert(out, bool), "TokenTransferFailed"
