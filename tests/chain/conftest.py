"""Fixtures for the contract tests, and the hypothesis profiles.

Profiles: "ci" (200 examples per property) when the CI env var is true,
else "dev" (fewer, for a quick local loop). HYPOTHESIS_PROFILE overrides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import boa
import pytest
from hypothesis import HealthCheck, settings

from .helpers import System, deploy_system

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _ci else "dev"))


@pytest.fixture(scope="module")
def _module_system() -> System:
    return deploy_system()


@pytest.fixture
def system(_module_system: System) -> Iterator[System]:
    """Fresh-looking contracts per test: state is rolled back afterwards."""
    with boa.env.anchor():
        yield _module_system
