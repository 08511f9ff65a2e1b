"""Test-only behaviour: cheating nodes and chaos for tests and the demo, never for production.

Production modules never import this package; a node reaches it only through a
hidden command-line option (``agoranet node --cheat-payments NAME``) or a test
that builds its parts by hand.
"""
