"""The tool server loads no inference engine: ``agoranet tools serve`` starts without torch.

It uses the node's payment parts (``agoranet.node.payment_setup``, ``settlement_loop``);
the ``agoranet.node`` package must not drag the node app, its engines and torch in with
them (they cost seconds of every start). Checked in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import agoranet.cli.tools, agoranet.tools.app, agoranet.node.payment_setup
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers"}
               or m.startswith(("agoranet.engines.", "agoranet.node.app")))
heavy = [m for m in heavy if m not in {"agoranet.engines.base", "agoranet.engines.registry"}]
print(",".join(heavy))
"""


def test_the_tool_server_imports_no_engine() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the tool server imports {done.stdout.strip()[:500]}"
