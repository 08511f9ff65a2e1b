"""Test-only behaviour: cheating nodes and chaos for tests and the demo, never for production.

Each is a wrapper registered by name: cheating engines wrap the transformers engine
(:mod:`~agoranet.testing.cheats`), chaos wraps a node's routes in ASGI middleware
(:mod:`~agoranet.testing.chaos`, :mod:`~agoranet.testing.stall`), payment cheats are
ledgers (:mod:`~agoranet.testing.payment_cheats`). Production modules never import this
package (``tests/test_layers.py`` checks it); a node process gets the wrappers only from
the test-only entry point ``python -m agoranet.testing node ...``
(:mod:`~agoranet.testing.node`, through :class:`agoranet.node.hooks.NodeHooks`), and an
in-process test builds its parts by hand.
"""
