"""Audits of served answers against a reference copy of the weights."""
