"""The node: an ASGI app that sells inference from one engine (:mod:`agoranet.node.app`).

The package imports nothing itself, so that its payment parts (``payment_setup``,
``settlement_loop``, ``upload_payments``) are used -- by ``agoranet tools serve`` -- without
loading the engines and their libraries (torch).
"""

__all__: list[str] = []
