"""The step times' coefficient of variation (metrics.step_ms.cv)."""

import pytest

from bench.meters.timing import summarize


def test_summarize_gives_the_coefficient_of_variation() -> None:
    s = summarize([9.0, 10.0, 11.0])
    assert s["cv"] == pytest.approx(1.0 / 10.0)  # sample std 1 over mean 10
    assert summarize([7.0])["cv"] is None  # fewer than 2 samples: no spread
