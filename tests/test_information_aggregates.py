"""Class means, profiles and bootstrap intervals of the information decomposition, and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from galpipe.contracts import validate
from galpipe.information import (
    SUMMARY_COMPONENTS,
    SUMMARY_SCHEMA,
    assign_profile_bins,
    bootstrap_mean_intervals,
    information_figures,
    information_table,
    summarise_information,
)

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
MASS_EDGES = np.array([8.0, 9.0, 10.0, 11.0, 12.0])
MAGNITUDE_EDGES = np.array([14.0, 15.0, 16.0, 17.0, 18.0])


def _contract_schema(name: str) -> pa.Schema:
    """The Arrow schema a table contract in schemas/<name>.yaml declares."""
    contract = yaml.safe_load((SCHEMAS / f"{name}.yaml").read_text())
    assert contract["name"] == name
    return pa.schema([pa.field(c["name"], pa.type_for_alias(c["type"]), nullable=c["nullable"])
                      for c in contract["columns"]])


def _catalogue(n: int = 600, seed: int = 3) -> tuple[pa.Table, pa.Table]:
    """An information table of two tuples (one with a gap) and the matching galaxies table."""
    rng = np.random.default_rng(seed)
    galaxy_ids = rng.permutation(np.arange(1000, 1000 + n))
    stellar_mass = rng.uniform(8.0, 12.0, n)
    stellar_mass[:7] = 11.5 + rng.uniform(0.0, 0.5, 7)  # the [11, 12] bin is built separately
    stellar_mass[7:] = rng.uniform(8.0, 11.0, n - 7)
    magnitude = rng.uniform(14.0, 18.0, n)
    classes = np.array(["star-forming", "passive"], dtype=object)[rng.integers(0, 2, n)]
    classes[-5:] = "other"  # a class too small for min_count
    classes[-6] = None
    galaxies = pa.table({
        "galaxy_id": pa.array(galaxy_ids, pa.int64()),
        "class": pa.array(classes.tolist(), pa.string()),
        "stellar_mass": stellar_mass,
        "petroMag_r": magnitude,
        "redshift": rng.uniform(0.01, 0.2, n),
    })

    tables = []
    for tuple_name, reference in (("A+B", True), ("A+C", False)):
        i1 = rng.normal(0.5, 0.4, n) + 0.1 * (stellar_mass - 10.0)
        i2 = rng.normal(0.3, 0.5, n)
        i12 = np.maximum(i1, i2) + rng.normal(0.1, 0.2, n)
        i1[10] = i2[10] = i12[10] = np.nan  # a galaxy without a true mass
        gap_reference = i12 + rng.normal(0.2, 0.1, n) if reference else None
        for measure in ("mmi", "ccs"):
            tables.append(information_table(
                galaxy_ids, run_id="run-a", tuple_name=tuple_name, source_1="A",
                source_2=tuple_name[-1], union=tuple_name, i1=i1, i2=i2, i12=i12,
                gap_reference=gap_reference, redundancy=measure,
            ))
    info = pa.concat_tables(tables)
    # Galaxies in random order relative to the information rows, to exercise the join.
    galaxies = galaxies.take(rng.permutation(n))
    return info, galaxies


def _summarise(info: pa.Table, galaxies: pa.Table, **options) -> pa.Table:
    settings = dict(run_id="run-a", magnitude_column="petroMag_r", mass_edges=MASS_EDGES,
                    magnitude_edges=MAGNITUDE_EDGES, n_bootstrap=50, level=0.9, min_count=20,
                    seed=7, use_ray=False)
    settings.update(options)
    return summarise_information(info, galaxies, **settings)


def _rows(summary: pa.Table, **match) -> list[dict]:
    return [row for row in summary.to_pylist()
            if all(row[key] == value for key, value in match.items())]


def _joined(info: pa.Table, galaxies: pa.Table, tuple_name: str,
            measure: str) -> dict[str, np.ndarray]:
    """Information columns of one tuple with the galaxy columns, joined by a dict lookup."""
    rows = [row for row in info.to_pylist()
            if row["tuple"] == tuple_name and row["redundancy_measure"] == measure]
    by_id = {row["galaxy_id"]: row for row in galaxies.to_pylist()}
    columns = {name: np.array([np.nan if row[name] is None else row[name] for row in rows])
               for name in SUMMARY_COMPONENTS}
    for name in ("stellar_mass", "petroMag_r"):
        columns[name] = np.array([by_id[row["galaxy_id"]][name] for row in rows])
    columns["class"] = np.array([by_id[row["galaxy_id"]]["class"] for row in rows], dtype=object)
    return columns


# --- bootstrap kernel --------------------------------------------------------------------------

def test_bootstrap_kernel_matches_a_replicate_loop():
    values = np.random.default_rng(1).normal(size=(37, 3))
    values[[2, 5], 1] = np.nan
    n_bootstrap, level = 300, 0.9

    mean, ci_low, ci_high, n = bootstrap_mean_intervals(
        values, n_bootstrap=n_bootstrap, level=level,
        seed_sequence=np.random.SeedSequence([4, 2]), max_chunk_elements=10**9)

    draws = np.random.default_rng(np.random.SeedSequence([4, 2])).integers(
        0, 37, size=(n_bootstrap, 37))
    replicates = np.array([np.nanmean(values[rows], axis=0) for rows in draws])
    np.testing.assert_allclose(mean, np.nanmean(values, axis=0), rtol=1e-14)
    np.testing.assert_allclose(ci_low, np.quantile(replicates, 0.05, axis=0), rtol=1e-12)
    np.testing.assert_allclose(ci_high, np.quantile(replicates, 0.95, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(n, [37, 35, 37])


def test_bootstrap_does_not_depend_on_chunk_size():
    values = np.random.default_rng(2).normal(size=(41, 2))
    sequence = np.random.SeedSequence([9, 3])

    whole = bootstrap_mean_intervals(values, n_bootstrap=101, level=0.95,
                                     seed_sequence=sequence, max_chunk_elements=10**9)
    chunked = bootstrap_mean_intervals(values, n_bootstrap=101, level=0.95,
                                       seed_sequence=sequence, max_chunk_elements=41 * 3)

    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-14)


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_bootstrap_intervals_cover_the_true_mean_at_the_nominal_rate(level):
    rng = np.random.default_rng(2024)
    true_mean, repetitions, n = 0.3, 400, 60
    covered = 0
    for repetition in range(repetitions):
        sample = rng.normal(true_mean, 1.0, n)
        _, low, high, _ = bootstrap_mean_intervals(
            sample, n_bootstrap=400, level=level,
            seed_sequence=np.random.SeedSequence([level == 0.9, repetition]))
        covered += low <= true_mean <= high

    # Percentile intervals run slightly short at n = 60; allow about three binomial sigmas.
    tolerance = 3 * np.sqrt(level * (1 - level) / repetitions) + 0.01
    assert abs(covered / repetitions - level) < tolerance


# --- profile bins ------------------------------------------------------------------------------

def test_profile_bins_match_a_direct_comparison_with_the_edges():
    values = np.concatenate([np.random.default_rng(8).uniform(7.5, 12.5, 500),
                             MASS_EDGES, [np.nan, np.inf]])

    index = assign_profile_bins(values, MASS_EDGES)

    expected = np.full(values.size, -1)
    for k in range(MASS_EDGES.size - 1):
        low, high = MASS_EDGES[k], MASS_EDGES[k + 1]
        last = k == MASS_EDGES.size - 2
        inside = (values >= low) & ((values <= high) if last else (values < high))
        expected[inside] = k
    np.testing.assert_array_equal(index, expected)


# --- summary table -----------------------------------------------------------------------------

def test_summary_matches_its_contract():
    info, galaxies = _catalogue()

    summary = _summarise(info, galaxies)

    assert summary.schema.equals(_contract_schema("information_summary"))
    validate(summary, "information_summary")
    assert SUMMARY_SCHEMA.equals(_contract_schema("information_summary"))
    assert set(summary["grouping"].to_pylist()) == {"class", "stellar_mass", "magnitude"}


def test_class_means_equal_direct_means():
    info, galaxies = _catalogue()

    summary = _summarise(info, galaxies)

    data = _joined(info, galaxies, "A+B", "ccs")
    for name in ("all", "passive", "star-forming"):
        members = np.ones(data["class"].size, bool) if name == "all" else data["class"] == name
        for component in ("redundant", "synergistic", "i_union", "gap"):
            (row,) = _rows(summary, tuple="A+B", redundancy_measure="ccs", grouping="class",
                           group=name, component=component)
            values = data[component][members]
            assert row["n"] == np.isfinite(values).sum()
            assert row["mean"] == pytest.approx(np.nanmean(values), rel=1e-12)
            assert row["ci_low"] < row["mean"] < row["ci_high"]


def test_profile_means_equal_direct_means_per_bin():
    info, galaxies = _catalogue()

    summary = _summarise(info, galaxies)

    data = _joined(info, galaxies, "A+C", "mmi")
    for column, grouping, edges in (("stellar_mass", "stellar_mass", MASS_EDGES),
                                    ("petroMag_r", "magnitude", MAGNITUDE_EDGES)):
        for k in range(edges.size - 1):
            last = k == edges.size - 2
            x = data[column]
            inside = (x >= edges[k]) & ((x <= edges[k + 1]) if last else (x < edges[k + 1]))
            values = data["unique_1"][inside]
            rows = _rows(summary, tuple="A+C", redundancy_measure="mmi", grouping=grouping,
                         component="unique_1", bin_low=edges[k])
            if np.isfinite(values).sum() < 20:
                assert rows == []
                continue
            (row,) = rows
            assert row["bin_high"] == edges[k + 1]
            assert row["n"] == np.isfinite(values).sum()
            assert row["mean"] == pytest.approx(np.nanmean(values), rel=1e-12)


def test_groups_with_fewer_than_min_count_galaxies_are_dropped():
    info, galaxies = _catalogue()

    summary = _summarise(info, galaxies, min_count=20)
    lenient = _summarise(info, galaxies, min_count=5)

    # 7 galaxies in [11, 12] dex and 5 of class "other": kept only with min_count 5
    assert _rows(summary, grouping="stellar_mass", bin_low=11.0) == []
    assert _rows(summary, grouping="class", group="other") == []
    assert {row["n"] for row in _rows(lenient, grouping="stellar_mass", bin_low=11.0)} == {7}
    assert {row["n"] for row in _rows(lenient, grouping="class", group="other")} == {5}
    assert min(summary["n"].to_pylist()) >= 20
    # the gap exists only for the tuple with a reference model
    assert {row["tuple"] for row in _rows(summary, component="gap")} == {"A+B"}


def test_kept_intervals_do_not_depend_on_min_count_or_on_other_groups():
    info, galaxies = _catalogue()

    strict = _summarise(info, galaxies, min_count=20)
    lenient = _summarise(info, galaxies, min_count=5)

    key = ("tuple", "redundancy_measure", "component", "grouping", "group")
    lenient_rows = {tuple(row[k] for k in key): row for row in lenient.to_pylist()}
    for row in strict.to_pylist():
        assert lenient_rows[tuple(row[k] for k in key)] == row


def test_seed_changes_intervals_but_not_means():
    info, galaxies = _catalogue()

    first = _summarise(info, galaxies, seed=1)
    second = _summarise(info, galaxies, seed=2)

    assert first["mean"].to_pylist() == second["mean"].to_pylist()
    assert first["ci_low"].to_pylist() != second["ci_low"].to_pylist()


def test_summary_names_missing_galaxies_and_columns():
    info, galaxies = _catalogue()

    with pytest.raises(ValueError, match="not in the galaxies table"):
        _summarise(info, galaxies.slice(0, 100))
    with pytest.raises(ValueError, match="no column 'mag_r'"):
        _summarise(info, galaxies, magnitude_column="mag_r")


def test_ray_summary_equals_in_process_summary(ray_local):
    info, galaxies = _catalogue(n=300)

    in_process = _summarise(info, galaxies, use_ray=False)
    on_ray = _summarise(info, galaxies, use_ray=True)

    assert on_ray.num_rows > 0
    assert on_ray.equals(in_process)


# --- figures -----------------------------------------------------------------------------------

def test_figures_are_written_as_non_empty_pngs(tmp_path):
    info, galaxies = _catalogue()
    summary = _summarise(info, galaxies)

    paths = information_figures(summary, str(tmp_path / "figures"))

    assert sorted(Path(path).name for path in paths) == [
        "information_classes_ccs.png",
        "information_classes_mmi.png",
        "information_profile_magnitude_ccs.png",
        "information_profile_magnitude_mmi.png",
        "information_profile_stellar_mass_ccs.png",
        "information_profile_stellar_mass_mmi.png",
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert width > 200 and height > 200
            # a drawn figure, not a blank canvas
            assert np.unique(np.asarray(image.convert("L"))).size > 10
