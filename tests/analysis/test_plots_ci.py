"""The median's CI as error bars, and p99 left out where the record has none (n < 100)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.analysis import plots
from bench.analysis.plotdata import entries
from bench.analysis.plotstyle import CI_NOTE, panel_of
from bench.results import load

FIX = Path(__file__).parents[1] / "fixtures"


@pytest.fixture
def jax_train():
    """cpu_a's jax train panel, every point given a CI of median -10%/+20%; the first point
    (smallest batch) has a null p99 and the last a null CI, as summarize() writes them."""
    f = load(FIX / "cpu_a.jsonl")
    items = sorted((e for e in entries([f]) if e.ok and panel_of(e) == ("cpu", "jax", "train")),
                   key=lambda e: e.batch_size)
    assert len(items) >= 3
    for e in items:
        s = e.record.metrics["step_ms"]
        s.update(ci_low=s["median"] * 0.9, ci_high=s["median"] * 1.2, null_reasons={})
    first, last = items[0].record.metrics["step_ms"], items[-1].record.metrics["step_ms"]
    first.update(p99=None, null_reasons={"p99": "needs >= 100 samples, have 20"})
    last.update(ci_low=None, ci_high=None, null_reasons={"ci_low": "needs >= 6 samples"})
    return items


def _bars(ax) -> list[np.ndarray]:
    """The (x, low, high) of every error bar drawn with gid "ci"."""
    out = []
    for coll in ax.collections:
        if coll.get_gid() == "ci":
            for seg in coll.get_segments():
                (x0, y0), (_, y1) = seg
                out.append(np.array([x0, min(y0, y1), max(y0, y1)]))
    return sorted(out, key=lambda r: r[0])


def test_latency_draws_the_median_ci_and_leaves_out_null_p99(jax_train) -> None:
    fig = plots.latency_figure(jax_train)
    left, right = fig.axes
    with_ci = [e for e in jax_train if e.metric("step_ms.ci_low") is not None]
    expect = [[e.batch_size, 0.9 * e.metric("step_ms.median"), 1.2 * e.metric("step_ms.median")]
              for e in with_ci]
    np.testing.assert_allclose(_bars(left), expect)
    assert _bars(right) == []  # bars belong to the median only
    [p99] = [ln.get_xydata() for ln in right.get_lines() if ln.get_gid() == "series"]
    assert p99[:, 0].tolist() == [e.batch_size for e in jax_train[1:]]  # first left out
    title = right.get_title()
    assert f"1 of {len(jax_train)} points not drawn" in title and "100 samples" in title
    assert CI_NOTE in [t.get_text() for t in fig.legends[0].get_texts()]


def test_throughput_draws_the_ci_in_samples_per_s(jax_train) -> None:
    fig = plots.throughput_figure(jax_train)
    with_ci = [e for e in jax_train if e.metric("step_ms.ci_low") is not None]
    thr = [e.metric("samples_per_s") for e in with_ci]
    expect = [[e.batch_size, t / 1.2, t / 0.9] for e, t in zip(with_ci, thr)]
    np.testing.assert_allclose(_bars(fig.axes[0]), expect)


def test_no_ci_no_bars_and_no_note() -> None:
    items = [e for e in entries([load(FIX / "cpu_a.jsonl")])
             if panel_of(e) == ("cpu", "jax", "train")]  # the fixture has no CI at all
    fig = plots.latency_figure(items)
    assert _bars(fig.axes[0]) == []
    assert CI_NOTE not in [t.get_text() for t in fig.legends[0].get_texts()]
    assert fig.axes[1].get_title() == "p99 step time"


def test_all_p99_null_still_draws_the_median(jax_train) -> None:
    for e in jax_train:
        e.record.metrics["step_ms"]["p99"] = None
    fig = plots.latency_figure(jax_train)
    assert [ln for ln in fig.axes[1].get_lines() if ln.get_gid() == "series"] == []
    assert f"{len(jax_train)} of {len(jax_train)} points not drawn" in fig.axes[1].get_title()
    assert len([ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "series"]) == 1
