"""Point estimates, quantiles, cross-entropies and estimation metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from galpipe.bins import MassBins
from galpipe.contracts import validate
from galpipe.infer.estimates import pdf_quantiles, point_estimates, true_bin_cross_entropy
from galpipe.infer.metrics import (
    bias,
    crps,
    crps_per_galaxy,
    metrics_table,
    outlier_fraction,
    sigma_mad,
)

# Four bins over [0, 1] dex: centres 0.125, 0.375, 0.625, 0.875; width 0.25.
TINY = MassBins(low=0.0, high=1.0, n_bins=4)
PDFS = np.array(
    [
        [0.1, 0.3, 0.4, 0.2],
        [0.5, 0.0, 0.0, 0.5],
        [0.4, 1.2, 0.4, 0.0],  # not normalised: the estimates normalise it
        [0.0, 0.0, 0.0, 0.0],  # not a PDF
    ]
)


def test_point_estimates_by_hand():
    est = point_estimates(PDFS.astype(np.float32), TINY)

    np.testing.assert_allclose(est["mean"][:3], [0.55, 0.5, 0.375], rtol=1e-6)
    # Median: first bin where the CDF reaches 0.5 (row 2 reaches exactly 0.5 in bin 0).
    np.testing.assert_array_equal(est["median"][:3], [0.625, 0.125, 0.375])
    # Mode: the first bin of largest probability.
    np.testing.assert_array_equal(est["mode"][:3], [0.625, 0.125, 0.375])
    assert all(np.isnan(est[name][3]) for name in ("mean", "median", "mode"))


def test_quantiles_interpolate_linearly_inside_bins():
    uniform = np.full((1, 4), 0.25)
    qs = (0.05, 0.16, 0.5, 0.84, 0.95)

    np.testing.assert_allclose(pdf_quantiles(uniform, TINY, qs), [qs], atol=1e-12)
    # Row 1: CDF at the edges is 0, .1, .4, .8, 1.
    np.testing.assert_allclose(
        pdf_quantiles(PDFS[:2], TINY, (0.05, 0.5, 0.95)),
        [[0.125, 0.5 + 0.1 / 0.4 * 0.25, 0.75 + 0.15 / 0.2 * 0.25], [0.025, 0.25, 0.975]],
    )
    assert np.isnan(pdf_quantiles(PDFS[3:], TINY)).all()


def test_true_bin_cross_entropy_by_hand():
    pdf = PDFS[:2]
    ce = true_bin_cross_entropy(pdf, np.array([2, 1]))
    np.testing.assert_allclose(ce, [-math.log(0.4), math.inf])

    with np.errstate(divide="ignore"):
        log_ce = true_bin_cross_entropy(np.log(pdf), np.array([2, -1]), log=True)
    np.testing.assert_allclose(log_ce[0], -math.log(0.4))
    assert np.isnan(log_ce[1])

    with pytest.raises(ValueError, match="true_bins must lie in"):
        true_bin_cross_entropy(pdf, np.array([4, 0]))


def test_scalar_metrics_on_a_five_galaxy_example_computed_by_hand():
    truth = np.array([10.0, 10.5, 9.0, 11.0, 9.5, 10.0])
    estimate = truth + np.array([0.1, -0.2, 0.05, 0.0, 1.0, np.nan])
    delta = estimate - truth
    # delta sorted: -0.2, 0, 0.05, 0.1, 1.0 -> median 0.05; |delta - 0.05| sorted:
    # 0, 0.05, 0.05, 0.25, 0.95 -> median 0.05 -> sigma_MAD = 1.4826 * 0.05 = 0.07413.
    # 3 sigma = 0.22239: only |1.0| exceeds it (|-0.2| does not) -> 1 of 5.
    assert bias(delta) == pytest.approx(0.19)
    assert sigma_mad(delta) == pytest.approx(0.07413)
    assert outlier_fraction(delta) == pytest.approx(0.2)

    table = metrics_table(
        run_id="r", model="m", estimator="network", estimate_kind="mean", split="test",
        truth=truth, estimate=estimate, pdf=None, bins=MassBins(),
    )
    validate(table, "metrics")
    row = table.to_pylist()[0]
    assert (row["grouping"], row["group"], row["n"]) == ("all", "all", 5)
    assert row["bias"] == pytest.approx(0.19)
    assert row["sigma_mad"] == pytest.approx(0.07413)
    assert row["outlier_fraction"] == pytest.approx(0.2)
    assert row["crps"] is None and row["bin_low"] is None


def crps_slow(pdf, truth, bins):
    """Loop over galaxies and bins: sum of (CDF_pred - step at the true mass)^2 times width."""
    edges = bins.edges
    scores = []
    for row, true_mass in zip(pdf, truth):
        total = sum(float(p) for p in row)
        cdf, score = 0.0, 0.0
        for j in range(bins.n_bins):
            cdf += float(row[j]) / total
            # The step has risen by the upper edge of bin j when the truth lies below that edge.
            step = 1.0 if true_mass < edges[j + 1] else 0.0
            score += (cdf - step) ** 2 * bins.width
        scores.append(score)
    return np.array(scores)


def test_crps_equals_a_slow_loop_whatever_the_chunking():
    rng = np.random.default_rng(2)
    bins = MassBins(low=8.0, high=12.0, n_bins=40)
    pdf = rng.dirichlet(np.full(40, 0.3), size=25).astype(np.float32)
    truth = rng.uniform(8.0, 12.0, size=25)

    want = crps_slow(pdf, truth, bins)
    for chunk_rows in (1, 7, 10_000):
        got = crps_per_galaxy(pdf, truth, bins, chunk_rows=chunk_rows)
        np.testing.assert_allclose(got, want, rtol=1e-9)
    assert crps(pdf, truth, bins) == pytest.approx(want.mean())


def test_crps_of_a_single_bin_pdf_is_the_shift_between_bin_centres():
    bins = MassBins()
    predicted_bins = np.array([100, 100, 250, 519, 0])
    true_bins = np.array([100, 140, 200, 519, 519])
    pdf = np.zeros((5, bins.n_bins), dtype=np.float32)
    pdf[np.arange(5), predicted_bins] = 1.0
    truth = bins.centres[true_bins]

    got = crps_per_galaxy(pdf, truth, bins)

    np.testing.assert_allclose(got, np.abs(bins.centres[predicted_bins] - truth), atol=1e-12)
    # Truths beyond the range sit in the edge bins, like the training labels.
    edge = crps_per_galaxy(pdf[3:4], np.array([13.0]), bins)
    assert edge[0] == pytest.approx(0.0)
    assert np.isnan(crps_per_galaxy(pdf[:1], np.array([np.nan]), bins)[0])


def test_metrics_table_groups_by_class_and_true_mass():
    rng = np.random.default_rng(4)
    # 37 bins so that no group edge (nor the truth at 11.2) falls on a bin edge.
    bins = MassBins(low=8.0, high=12.0, n_bins=37)
    n = 60
    truth = rng.uniform(8.5, 11.5, size=n)
    truth[0] = 11.2  # on the last group's upper edge: the last group includes it
    estimate = truth + rng.normal(0, 0.2, size=n)
    estimate[1] = np.nan
    pdf = rng.dirichlet(np.ones(37), size=n)
    classes = np.array(["star_forming", "passive", None] * 20, dtype=object)
    edges = [7.0, 8.0, 9.0, 10.0, 11.0, 11.2]

    table = metrics_table(
        run_id="run-7", model="mi_mugriz", estimator="knn", estimate_kind="median",
        split="test", truth=truth, estimate=estimate, pdf=pdf, bins=bins, classes=classes,
        mass_edges_for_groups=edges,
    )

    validate(table, "metrics")
    rows = table.to_pylist()
    assert [(r["grouping"], r["group"]) for r in rows] == [
        ("all", "all"), ("class", "passive"), ("class", "star_forming"),
        ("true_mass", "7.00-8.00"), ("true_mass", "8.00-9.00"), ("true_mass", "9.00-10.00"),
        ("true_mass", "10.00-11.00"), ("true_mass", "11.00-11.20"),
    ]
    valid = np.isfinite(estimate)
    scores = crps_slow(pdf, truth, bins)
    masks = {
        0: valid,
        1: valid & (classes == "passive"),
        2: valid & (classes == "star_forming"),
        4: valid & (truth >= 8) & (truth < 9),
        5: valid & (truth >= 9) & (truth < 10),
        6: valid & (truth >= 10) & (truth < 11),
        7: valid & (truth >= 11) & (truth <= 11.2),
    }
    assert masks[7][0] and masks[0].sum() == n - 1
    for position, mask in masks.items():
        row, delta = rows[position], estimate[mask] - truth[mask]
        assert row["n"] == mask.sum() > 0
        assert row["bias"] == pytest.approx(delta.mean())
        mad = 1.4826 * np.median(np.abs(delta - np.median(delta)))
        assert row["sigma_mad"] == pytest.approx(mad)
        assert row["outlier_fraction"] == pytest.approx(np.mean(np.abs(delta) > 3 * mad))
        assert row["crps"] == pytest.approx(scores[mask].mean())
    assert (rows[6]["bin_low"], rows[6]["bin_high"]) == (10.0, 11.0)
    empty = rows[3]
    assert empty["n"] == 0 and empty["bias"] is None and empty["crps"] is None
    assert {r["run_id"] for r in rows} == {"run-7"} and {r["point"] for r in rows} == {"median"}


def test_metrics_table_rejects_unknown_estimator_and_point():
    common = dict(
        run_id="r", model="m", split="test", truth=np.ones(2), estimate=np.ones(2), pdf=None,
        bins=MassBins(),
    )
    with pytest.raises(ValueError, match="estimator must be one of"):
        metrics_table(estimator="forest", estimate_kind="mean", **common)
    with pytest.raises(ValueError, match="estimate_kind must be one of"):
        metrics_table(estimator="knn", estimate_kind="p50", **common)
