"""Summaries and figures of the causal analysis: Benjamini-Hochberg against scipy, group
quantiles, KS tests and significant shares against direct numpy/scipy computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from scipy import stats

from galpipe.causal import (
    benjamini_hochberg,
    bootstrap_replicate,
    causal_edges_table,
    plot_causal_graph,
    plot_local_tests,
    summarise_local_tests,
)
from galpipe.contracts import validate

pytestmark = pytest.mark.timeout(120)

EDGES = [9.0, 10.0, 11.0, 12.0]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _local_tests_frame(n: int, seed: int) -> pa.Table:
    """A joined local_tests frame: two models, classes with nulls, masses, and some nulls."""
    rng = np.random.default_rng(seed)
    columns = {
        "run_id": ["run-1"] * n,
        "model": rng.choice(["images", "photometry"], size=n).tolist(),
        "galaxy_id": np.arange(n),
        "query": ["ba_r"] * n,
        "condition": ["redshift"] * n,
        "class": rng.choice(["star-forming", "passive", None], size=n, p=[0.5, 0.4, 0.1]).tolist(),
        "stellar_mass": rng.uniform(8.8, 12.0, size=n),
    }
    for statistic, scale in (("r", 0.3), ("pe", 0.1), ("r_cond", 0.2), ("pe_cond", 0.05)):
        original = rng.normal(0.2, scale, size=n)
        if statistic.startswith("pe"):
            original = np.abs(original)
        original[rng.random(n) < 0.05] = np.nan
        columns[statistic] = original
        columns[f"{statistic}_perm1"] = np.where(np.isnan(original), np.nan,
                                                 rng.normal(0.0, scale, size=n))
        p_values = np.where(rng.random(n) < 0.3, rng.uniform(0, 0.002, n), rng.uniform(0, 1, n))
        columns[f"{statistic}_pvalue"] = np.where(np.isnan(original), np.nan, p_values)
    columns["stellar_mass"][:3] = [12.0, 8.5, np.nan]  # last edge, below the bins, unknown
    return pa.table({name: pa.array(values, from_pandas=True)
                     for name, values in columns.items()})


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(0)
    p_values = np.concatenate([rng.uniform(0, 0.01, 30), rng.uniform(0, 1, 200), [0.5, 0.5]])

    adjusted = benjamini_hochberg(p_values)

    np.testing.assert_allclose(adjusted, stats.false_discovery_control(p_values, method="bh"),
                               rtol=1e-12, atol=0)


def test_benjamini_hochberg_skips_nan_and_matches_hand_computation():
    # Sorted 0.01, 0.02, 0.03, 0.5 -> 4p/rank = 0.04, 0.04, 0.04, 0.5 (already monotone).
    adjusted = benjamini_hochberg(np.array([0.03, np.nan, 0.5, 0.01, 0.02]))

    np.testing.assert_allclose(adjusted, [0.04, np.nan, 0.5, 0.04, 0.04])


def test_summary_matches_direct_numpy_and_scipy():
    frame = _local_tests_frame(2000, seed=1)

    summary = summarise_local_tests(frame, EDGES, run_id="run-2", alpha=0.05)

    validate(summary, "local_tests_summary")
    data = frame.to_pandas()
    rows = summary.to_pandas()
    row = rows[(rows.model == "images") & (rows.statistic == "pe") & (rows["class"] == "passive")
               & (rows.mass_bin_low == 10.0)].iloc[0]
    group = data[(data.model == "images") & (data["class"] == "passive")
                 & (data.stellar_mass >= 10.0) & (data.stellar_mass < 11.0)]
    original = group.pe.dropna().to_numpy()
    permuted = group.pe_perm1.dropna().to_numpy()
    assert row["count"] == original.size
    np.testing.assert_allclose(row[["q05", "q25", "q50", "q75", "q95"]].to_numpy(dtype=float),
                               np.quantile(original, [0.05, 0.25, 0.5, 0.75, 0.95]))
    np.testing.assert_allclose(
        row[["perm1_q05", "perm1_q50", "perm1_q95"]].to_numpy(dtype=float),
        np.quantile(permuted, [0.05, 0.5, 0.95]))
    ks = stats.ks_2samp(original, permuted)
    assert row.ks_statistic == pytest.approx(ks.statistic)
    assert row.ks_pvalue == pytest.approx(ks.pvalue)
    # BH over every images galaxy of the statistic, then the share within the group.
    family = data[data.model == "images"].pe_pvalue.dropna()
    adjusted = pd.Series(stats.false_discovery_control(family.to_numpy()), index=family.index)
    in_group = adjusted.loc[adjusted.index.intersection(group.index)]
    assert row.significant_fraction == pytest.approx(np.mean(in_group <= 0.05))
    assert 0.2 < row.significant_fraction < 0.45


def test_summary_all_rows_cover_every_class_and_mass():
    frame = _local_tests_frame(600, seed=2)

    rows = summarise_local_tests(frame, EDGES, run_id="r").to_pandas()

    images_r = rows[(rows.model == "images") & (rows.statistic == "r")]
    everything = images_r[(images_r["class"] == "all") & images_r.mass_bin_low.isna()]
    data = frame.to_pandas()
    assert everything["count"].item() == data[data.model == "images"].r.notna().sum()
    per_bin = images_r[(images_r["class"] == "all") & images_r.mass_bin_low.notna()]
    masses = data[(data.model == "images") & data.r.notna()].stellar_mass
    assert per_bin["count"].sum() == ((masses >= 9.0) & (masses <= 12.0)).sum()
    assert set(images_r["class"]) == {"all", "passive", "star-forming"}
    assert len(images_r) == 3 * 4


def test_summary_accepts_pandas_and_polars_frames():
    frame = _local_tests_frame(300, seed=3)

    from_arrow = summarise_local_tests(frame, EDGES, run_id="r")
    from_pandas = summarise_local_tests(frame.to_pandas(), EDGES, run_id="r")
    from_polars = summarise_local_tests(pl.from_arrow(frame), EDGES, run_id="r")

    assert from_arrow.equals(from_pandas)
    assert from_arrow.equals(from_polars)


def test_summary_without_condition_skips_conditional_statistics():
    frame = _local_tests_frame(200, seed=4)
    frame = frame.set_column(frame.column_names.index("condition"), "condition",
                             pa.nulls(200, pa.string()))
    for name in ("r_cond", "r_cond_perm1", "r_cond_pvalue"):
        frame = frame.set_column(frame.column_names.index(name), name, pa.nulls(200, pa.float64()))

    rows = summarise_local_tests(frame, EDGES, run_id="r").to_pandas()

    assert "r_cond" not in set(rows.statistic)
    assert rows.condition.isna().all()


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda t: t.drop_columns(["stellar_mass"]), "stellar_mass"),
     (lambda t: t.set_column(t.column_names.index("class"), "class",
                             pa.array(["all"] * t.num_rows)), "reserves")],
)
def test_summary_rejects_bad_frames(change, message):
    with pytest.raises(ValueError, match=message):
        summarise_local_tests(change(_local_tests_frame(50, seed=5)), EDGES, run_id="r")


def test_local_test_figure_is_written(tmp_path):
    frame = _local_tests_frame(400, seed=6)

    path = plot_local_tests(frame, "images", tmp_path / "figures" / "local_tests_images.png",
                            statistics=("r", "pe", "r_cond"))

    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no local tests of model"):
        plot_local_tests(frame, "spectra", tmp_path / "x.png")


def test_causal_graph_figure_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=500), rng.normal(size=500)
    z = x + y + rng.normal(size=500)
    data, names = np.column_stack([x, y, z, z + rng.normal(size=500)]), ["x", "y", "z", "w"]
    patterns = np.stack([
        bootstrap_replicate(data, names, b, seed=0, sample_size=500, method="fci",
                            indep_test="fisherz", alpha=0.01)
        for b in range(4)
    ])
    edges = causal_edges_table(patterns, names, run_id="r", method="fci", indep_test="fisherz",
                               alpha=0.01, n_samples=500, n_rows_complete=500, n_rows_dropped=0)
    validate(edges, "causal_edges")
    assert edges.column("partially_directed_frequency").to_pylist()[1] == 1.0  # x o-> z

    path = plot_causal_graph(edges, tmp_path / "graph.png")

    assert path.read_bytes()[:8] == PNG_MAGIC
    as_pc = edges.set_column(1, edges.schema.field("method"), pa.array(["pc"] * 6))
    doubled = pa.concat_tables([edges, as_pc])
    with pytest.raises(ValueError, match="filter it to one"):
        plot_causal_graph(doubled, tmp_path / "both.png")
