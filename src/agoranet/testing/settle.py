"""Force a node's claim and settlement now, from outside its process (tests only).

A node claims when its :class:`~agoranet.payments.accept.settlement.ClaimPolicy` says so;
a test that wants every charge on chain before it checks the money opens the
node's ledger file (SQLite, shared safely with the running node) and runs the
same :class:`~agoranet.payments.accept.settlement.Settler` with ``force=True``, signed
with the node's key through the x402 SDK's facilitator, exactly as the node's
own settlement loop does. It does not release holds (the running node owns
them): a request still streaming stays out of the claim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.constants import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.facilitator.scheme import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.errors import PaymentError
from agoranet.payments.accept.acceptor import PaymentTerms
from agoranet.payments.accept.ledger import Ledger
from agoranet.payments.accept.ledger_url import is_postgres_url
from agoranet.payments.accept.settlement import SettleOutcome, Settler
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import Web3StateReader

__all__ = ["force_settlement"]


def force_settlement(rpc_url: str, ledger_path: Path | str, node_key: str) -> SettleOutcome:
    """Claim every unclaimed channel in the ledger at ``ledger_path`` and settle to the node
    whose private key is ``node_key``. A claim that fails does not raise: the outcome's
    ``reason`` starts with ``failed:`` and names it (the money invariants then say which
    charge went unclaimed). ``ledger_path`` may be a PostgreSQL ledger's URL: then it
    claims only while no running replica holds the ledger's claim lock (they claim)."""
    account: LocalAccount = Account.from_key(node_key)
    key = "0x" + bytes(account.key).hex()
    w3 = connect(rpc_url)
    chain_id = int(w3.eth.chain_id)
    addresses = resolve_addresses(chain_id, ChainSettings(rpc_url=rpc_url))
    terms = PaymentTerms(chain_id=chain_id, asset=addresses.require_stablecoin(),
                         pay_to=account.address, receiver_authorizer=account.address,
                         token_name=addresses.token_name or "USD Coin",
                         token_version=addresses.token_version or "2")
    batch = BatchSettlementEvmFacilitator(FacilitatorWeb3Signer(key, rpc_url),
                                          authorizer_signer=LocalAuthorizerSigner(key))
    reader = Web3StateReader(w3, addresses)

    def settled_of(tx_hash: str) -> int:
        receipt: Any = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        events = reader.escrow.events.Settled().process_receipt(receipt, errors=DISCARD)
        return sum(int(e["args"]["amount"]) for e in events)

    ledger: Ledger
    if is_postgres_url(str(ledger_path)):
        from agoranet.payments.accept.pg_ledger import PgLedger  # psycopg: the `postgres` extra

        ledger = PgLedger(str(ledger_path))
    else:
        ledger = SqliteLedger(ledger_path)
    try:
        settler = Settler(ledger, batch.settle, terms.requirement(SCHEME_BATCH_SETTLEMENT, 0),
                          reader, settled_of=settled_of)
        try:
            outcome = settler.tick(force=True)
        except PaymentError as exc:
            return SettleOutcome({}, reason=f"failed: {exc}")
        return outcome or SettleOutcome({}, reason="nothing to claim")
    finally:
        ledger.close()
