# pragma version ~=0.4.3
"""
@title Stablecoin
@notice USDC-like test stablecoin: ERC-20 with 6 decimals, EIP-2612 permit and
        EIP-3009 transfer/receive/cancel authorizations. Only the deployer mints.
@dev The EIP-712 domain is rebuilt from `self` on every use, so the runtime code
     keeps working when a dev chain copies it to another address. Name and
     version match USDC's ("USD Coin", "2"), which the x402 SDK signs against.
"""

from ethereum.ercs import IERC20

implements: IERC20

interface IERC1271:
    def isValidSignature(digest: bytes32, signature: Bytes[SIG_MAX]) -> bytes4: view

event AuthorizationUsed:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

event AuthorizationCanceled:
    authorizer: indexed(address)
    nonce: indexed(bytes32)

SIG_MAX: constant(uint256) = 1024

NAME: constant(String[32]) = "USD Coin"
SYMBOL: constant(String[8]) = "USDC"
VERSION: constant(String[8]) = "2"
DECIMALS: constant(uint8) = 6

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
PERMIT_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
)
TRANSFER_WITH_AUTHORIZATION_TYPEHASH: public(constant(bytes32)) = keccak256(
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
RECEIVE_WITH_AUTHORIZATION_TYPEHASH: public(constant(bytes32)) = keccak256(
    "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
CANCEL_AUTHORIZATION_TYPEHASH: public(constant(bytes32)) = keccak256(
    "CancelAuthorization(address authorizer,bytes32 nonce)"
)
ERC1271_MAGIC: constant(bytes4) = 0x1626ba7e
SECP256K1N_HALF: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

minter: public(address)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
nonces: public(HashMap[address, uint256])
_authorizations: HashMap[address, HashMap[bytes32, bool]]


@deploy
def __init__():
    self.minter = msg.sender


@external
@pure
def name() -> String[32]:
    return NAME


@external
@pure
def symbol() -> String[8]:
    return SYMBOL


@external
@pure
def version() -> String[8]:
    return VERSION


@external
@pure
def decimals() -> uint8:
    return DECIMALS


@external
@view
def DOMAIN_SEPARATOR() -> bytes32:
    return self._domain_separator()


@external
@view
def authorizationState(authorizer: address, nonce: bytes32) -> bool:
    return self._authorizations[authorizer][nonce]


@external
def mint(to: address, amount: uint256):
    assert msg.sender == self.minter, "Stablecoin: caller is not the minter"
    assert to != empty(address), "Stablecoin: mint to the zero address"
    self.totalSupply += amount
    self.balanceOf[to] += amount
    log IERC20.Transfer(sender=empty(address), receiver=to, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(owner: address, receiver: address, amount: uint256) -> bool:
    self._spend_allowance(owner, msg.sender, amount)
    self._transfer(owner, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self._approve(msg.sender, spender, amount)
    return True


@external
def permit(
    owner: address,
    spender: address,
    amount: uint256,
    deadline: uint256,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    assert block.timestamp <= deadline, "Stablecoin: permit expired"
    nonce: uint256 = self.nonces[owner]
    digest: bytes32 = self._typed_digest(
        keccak256(abi_encode(PERMIT_TYPEHASH, owner, spender, amount, nonce, deadline))
    )
    assert owner != empty(address), "Stablecoin: invalid signature"
    assert self._recover(digest, convert(v, uint256), r, s) == owner, "Stablecoin: invalid signature"
    self.nonces[owner] = nonce + 1
    self._approve(owner, spender, amount)


@external
def transferWithAuthorization(
    sender: address,
    receiver: address,
    amount: uint256,
    validAfter: uint256,
    validBefore: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    self._use_authorization(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
        sender, receiver, amount, validAfter, validBefore, nonce,
        self._pack_signature(v, r, s),
    )
    self._transfer(sender, receiver, amount)


@external
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
):
    assert receiver == msg.sender, "Stablecoin: caller must be the payee"
    self._use_authorization(
        RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
        sender, receiver, amount, validAfter, validBefore, nonce,
        self._pack_signature(v, r, s),
    )
    self._transfer(sender, receiver, amount)


@external
def cancelAuthorization(authorizer: address, nonce: bytes32, v: uint8, r: bytes32, s: bytes32):
    assert not self._authorizations[authorizer][nonce], "Stablecoin: authorization is used or canceled"
    digest: bytes32 = self._typed_digest(
        keccak256(abi_encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce))
    )
    assert self._is_valid_signature(authorizer, digest, self._pack_signature(v, r, s)), "Stablecoin: invalid signature"
    self._authorizations[authorizer][nonce] = True
    log AuthorizationCanceled(authorizer=authorizer, nonce=nonce)


@external
def __default__():
    """
    @notice The `bytes signature` overloads of transferWithAuthorization and
            receiveWithAuthorization (USDC v2.2), which Vyper cannot declare
            next to the (v, r, s) ones; signatures may be EIP-1271.
    """
    assert len(msg.data) >= 4, "Stablecoin: unknown function"
    selector: bytes4 = convert(slice(msg.data, 0, 4), bytes4)
    typehash: bytes32 = empty(bytes32)
    if selector == method_id("transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)", output_type=bytes4):
        typehash = TRANSFER_WITH_AUTHORIZATION_TYPEHASH
    elif selector == method_id("receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)", output_type=bytes4):
        typehash = RECEIVE_WITH_AUTHORIZATION_TYPEHASH
    else:
        raise "Stablecoin: unknown function"
    # Heads of (address, address, uint256, uint256, uint256, bytes32, bytes), then a
    # 65-byte signature right after them: the only encoding an EOA signer produces.
    assert len(msg.data) >= 4 + 8 * 32 + 65, "Stablecoin: calldata too short"
    sender: address = empty(address)
    receiver: address = empty(address)
    amount: uint256 = 0
    valid_after: uint256 = 0
    valid_before: uint256 = 0
    nonce: bytes32 = empty(bytes32)
    offset: uint256 = 0
    sig_len: uint256 = 0
    sender, receiver, amount, valid_after, valid_before, nonce, offset, sig_len = abi_decode(
        slice(msg.data, 4, 8 * 32),
        (address, address, uint256, uint256, uint256, bytes32, uint256, uint256),
    )
    assert offset == 7 * 32 and sig_len == 65, "Stablecoin: unsupported signature encoding"
    signature: Bytes[SIG_MAX] = slice(msg.data, 4 + 8 * 32, 65)
    if typehash == RECEIVE_WITH_AUTHORIZATION_TYPEHASH:
        assert receiver == msg.sender, "Stablecoin: caller must be the payee"
    self._use_authorization(
        typehash, sender, receiver, amount, valid_after, valid_before, nonce, signature
    )
    self._transfer(sender, receiver, amount)


@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(
        abi_encode(
            EIP712_DOMAIN_TYPEHASH,
            keccak256(NAME),
            keccak256(VERSION),
            chain.id,
            self,
        )
    )


@internal
@view
def _typed_digest(struct_hash: bytes32) -> bytes32:
    return keccak256(concat(x"1901", self._domain_separator(), struct_hash))


@internal
@pure
def _pack_signature(v: uint8, r: bytes32, s: bytes32) -> Bytes[SIG_MAX]:
    return concat(r, s, convert(v, bytes1))


@internal
@pure
def _recover(digest: bytes32, v: uint256, r: bytes32, s: bytes32) -> address:
    if convert(s, uint256) > SECP256K1N_HALF:
        return empty(address)
    if v != 27 and v != 28:
        return empty(address)
    return ecrecover(digest, v, r, s)


@internal
@view
def _is_valid_signature(signer: address, digest: bytes32, signature: Bytes[SIG_MAX]) -> bool:
    if signer == empty(address):
        return False
    if signer.is_contract:
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
    if len(signature) != 65:
        return False
    r: bytes32 = extract32(signature, 0)
    s: bytes32 = extract32(signature, 32)
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    return self._recover(digest, v, r, s) == signer


@internal
def _use_authorization(
    typehash: bytes32,
    sender: address,
    receiver: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    signature: Bytes[SIG_MAX],
):
    assert block.timestamp > valid_after, "Stablecoin: authorization is not yet valid"
    assert block.timestamp < valid_before, "Stablecoin: authorization is expired"
    assert not self._authorizations[sender][nonce], "Stablecoin: authorization is used or canceled"
    digest: bytes32 = self._typed_digest(
        keccak256(abi_encode(typehash, sender, receiver, amount, valid_after, valid_before, nonce))
    )
    assert self._is_valid_signature(sender, digest, signature), "Stablecoin: invalid signature"
    self._authorizations[sender][nonce] = True
    log AuthorizationUsed(authorizer=sender, nonce=nonce)


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "Stablecoin: transfer to the zero address"
    balance: uint256 = self.balanceOf[sender]
    assert balance >= amount, "Stablecoin: transfer amount exceeds balance"
    self.balanceOf[sender] = balance - amount
    self.balanceOf[receiver] += amount
    log IERC20.Transfer(sender=sender, receiver=receiver, value=amount)


@internal
def _approve(owner: address, spender: address, amount: uint256):
    assert spender != empty(address), "Stablecoin: approve to the zero address"
    self.allowance[owner][spender] = amount
    log IERC20.Approval(owner=owner, spender=spender, value=amount)


@internal
def _spend_allowance(owner: address, spender: address, amount: uint256):
    current: uint256 = self.allowance[owner][spender]
    if current == max_value(uint256):
        return
    assert current >= amount, "Stablecoin: insufficient allowance"
    self.allowance[owner][spender] = current - amount
    log IERC20.Approval(owner=owner, spender=spender, value=current - amount)
