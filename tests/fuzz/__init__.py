"""Fuzzing a live node and a live gateway (hypothesis, schemathesis); see ``harness``."""
