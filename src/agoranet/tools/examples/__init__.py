"""Paid tools that ship with agoranet, to serve as they are or to copy:
:mod:`~agoranet.tools.examples.summarize` buys the inference it needs on the market."""

from __future__ import annotations

__all__: list[str] = []
