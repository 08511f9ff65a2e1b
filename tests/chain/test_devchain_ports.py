"""Starting the dev chain on a port another chain took first (:func:`start_devchain`).

A port picked free is free only until anvil binds it; tests on two workers start many
chains, and another one can take the port first. Then our anvil fails to bind while the
other chain answers on the port: it must not be taken for ours (its state, its nonces,
stopped by another test), and a picked port gets another try. Real anvil processes.
"""

from __future__ import annotations

import pytest

from agoranet.chain import devchain
from agoranet.chain.devchain import find_anvil, start_devchain
from agoranet.errors import DevChainError

try:
    find_anvil()
    _ANVIL_MISSING = ""
except DevChainError as exc:
    _ANVIL_MISSING = str(exc)

pytestmark = pytest.mark.skipif(bool(_ANVIL_MISSING), reason=_ANVIL_MISSING or "anvil found")


def test_a_picked_port_another_chain_took_first_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with start_devchain() as other:
        taken = int(other.rpc_url.rsplit(":", 1)[1])
        free = devchain._free_port
        ports = iter([taken])  # picked free, then taken; the next pick is a free port
        monkeypatch.setattr(devchain, "_free_port", lambda host: next(ports, None) or free(host))
        with start_devchain() as chain:
            assert chain.rpc_url != other.rpc_url
            assert chain.process is not None and chain.process.poll() is None  # ours runs
            other.stop()  # the other chain goes; ours stays
            assert chain.web3().eth.block_number >= 0
