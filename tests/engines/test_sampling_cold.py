"""A temperature too small for float32 (found by ``bench/fuzz.py``): greedy, not a crash.

``temperature=1e-200`` is valid (> 0) but divides the logits into infinities, and the
softmax of those is NaN: ``torch.multinomial`` raised RuntimeError, a node's 500.
"""

from __future__ import annotations

import pytest
import torch

from agoranet.engines.sampling import Sampler


@pytest.mark.parametrize("temperature", [1e-200, 5e-324, 1e-40])
@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_a_temperature_that_overflows_is_greedy(temperature: float, top_p: float) -> None:
    logits = torch.tensor([0.5, 3.0, -2.0, float("-inf"), 2.9])
    for seed in range(5):
        assert Sampler(temperature, top_p, seed).choose(logits) == 1


def test_a_small_temperature_that_fits_still_samples_the_same() -> None:
    logits = torch.tensor([0.5, 3.0, -2.0, 2.9])
    picks = {Sampler(1.0, 1.0, seed).choose(logits) for seed in range(40)}
    assert picks >= {1, 3}  # a warm sampler is still random
    assert {Sampler(1e-3, 1.0, seed).choose(logits) for seed in range(10)} == {1}
