"""``agoranet demo``: the embedded default, end to end, with real processes and clients."""

from agoranet.demo.run import run_demo

__all__ = ["run_demo"]
