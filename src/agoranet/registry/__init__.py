"""Signed offers, the on-chain registry and the discovery cache."""
