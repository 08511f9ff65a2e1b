"""``python -m agoranet.testing``: the ``agoranet`` command whose ``node`` is the test-only
node of :mod:`agoranet.testing.node` (cheats and chaos by name). Tests and demos only."""

from __future__ import annotations

from agoranet.cli.main import cli, main
from agoranet.testing.node import node

cli.add_command(node, "node")

if __name__ == "__main__":
    main()
