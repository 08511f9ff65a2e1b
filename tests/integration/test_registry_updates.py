"""Issue #15 item 5: updating a registry entry must not run out of gas.

The gas estimate runs against the latest block, the update is mined in a later
one: re-registering the same URL and offer then changes only ``updatedAt``
(``block.timestamp``), a no-op write in the estimate and a real one once mined.
With an exact estimate every other update reverted ("reverted in block N").
"""

from __future__ import annotations

from eth_account import Account

from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import dev_rpc
from agoranet.registry.onchain import registry_at

URL = "http://127.0.0.1:9/v1"


def test_repeated_updates_all_succeed(chain: DevChain) -> None:
    account = Account.from_key(chain.private_keys[7])
    registry = registry_at(chain.rpc_url)
    # Each block one second after the last, as on a chain whose clock moves on.
    dev_rpc(registry.w3, "anvil_setBlockTimestampInterval", [1])
    try:
        digests = ["0x" + "11" * 32] * 4 + ["0x" + "22" * 32, "0x" + "11" * 32]
        for n, digest in enumerate(digests):
            result = registry.register(account, URL, digest)  # raised ContractError before
            entry = next(e for e in registry.entries() if e.provider == account.address)
            assert (entry.url, entry.offer_hash) == (URL, digest), n
            block = registry.w3.eth.get_block(result.block_number)
            assert entry.updated_at == block["timestamp"], n
    finally:
        dev_rpc(registry.w3, "anvil_removeBlockTimestampInterval", [])
    assert [e.provider for e in registry.entries()].count(account.address) == 1
