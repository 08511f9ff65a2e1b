"""What a node produces so that its work can be checked: TOPLOC-style commitments.

Engines build them (node side) and :mod:`agoranet.verify` checks them; both
depend on this package, which depends on neither.
"""
