"""The node: an ASGI app that sells inference from one engine."""

from agoranet.node.app import create_app

__all__ = ["create_app"]
