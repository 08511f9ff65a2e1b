from __future__ import annotations

from collections.abc import Iterator

import pytest

from agoranet.chain.devchain import DevChain, find_anvil, start_devchain
from agoranet.errors import DevChainError


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    """A fresh dev chain (anvil with our contracts) for one test module; skips without anvil."""
    try:
        find_anvil()
    except DevChainError as exc:
        pytest.skip(str(exc))
    dev = start_devchain()
    yield dev
    dev.stop()
