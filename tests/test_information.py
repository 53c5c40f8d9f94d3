"""Pointwise information and its decomposition, against hand and analytic computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from galpipe.bins import MassBins
from galpipe.contracts import validate
from galpipe.information import (
    COMPONENTS,
    INFORMATION_SCHEMA,
    decompose,
    information_table,
    pointwise_information,
    prior_entropy,
    prior_log_probabilities,
    redundancy_measures,
    register_redundancy,
    true_mass_bins,
)
from galpipe.information import decomposition as decomposition_module

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _contract_schema(name: str) -> pa.Schema:
    """The Arrow schema a table contract in schemas/<name>.yaml declares."""
    contract = yaml.safe_load((SCHEMAS / f"{name}.yaml").read_text())
    assert contract["name"] == name
    return pa.schema([pa.field(c["name"], pa.type_for_alias(c["type"]), nullable=c["nullable"])
                      for c in contract["columns"]])


def _sum_of_parts(parts: dict[str, np.ndarray]) -> np.ndarray:
    return parts["redundant"] + parts["unique_1"] + parts["unique_2"] + parts["synergistic"]


# --- prior and pointwise information -----------------------------------------------------------

def test_prior_is_the_histogram_of_galaxies_with_a_mass():
    true_bins = np.array([0, 0, 1, 3, -1])

    log_prior = prior_log_probabilities(true_bins, n_bins=4)

    # counts (2, 1, 0, 1) over 4 galaxies with a mass; the empty bin gets ln 0 = -inf
    np.testing.assert_allclose(log_prior[[0, 1, 3]], np.log([0.5, 0.25, 0.25]), rtol=1e-15)
    assert log_prior[2] == -np.inf


def test_prior_pseudocount_fills_empty_bins():
    log_prior = prior_log_probabilities(np.array([0, 0, 1, 3, -1]), n_bins=4, pseudocount=1.0)

    np.testing.assert_allclose(np.exp(log_prior), [3 / 8, 2 / 8, 1 / 8, 2 / 8], rtol=1e-15)


def test_pointwise_information_is_prior_surprisal_minus_cross_entropy():
    true_bins = np.array([0, 0, 1, 3, -1, 1])
    cross_entropy = np.array([0.1, 0.9, 2.0, 0.3, 0.5, np.nan])
    log_prior = prior_log_probabilities(true_bins, n_bins=4)  # p = (2, 2, 0, 1) / 5

    entropy = prior_entropy(true_bins, log_prior)
    information = pointwise_information(cross_entropy, true_bins, log_prior)

    expected_entropy = [math.log(5 / 2), math.log(5 / 2), math.log(5 / 2), math.log(5), np.nan,
                        math.log(5 / 2)]
    np.testing.assert_allclose(entropy, expected_entropy, rtol=1e-14)
    expected = [math.log(2.5) - 0.1, math.log(2.5) - 0.9, math.log(2.5) - 2.0, math.log(5) - 0.3,
                np.nan, np.nan]
    np.testing.assert_allclose(information, expected, rtol=1e-14)
    assert information[2] < 0  # misinformation: the model gave the truth less than the prior


def test_prior_entropy_refuses_a_galaxy_in_an_empty_prior_bin():
    log_prior = prior_log_probabilities(np.array([0, 0, 1]), n_bins=3)

    with pytest.raises(ValueError, match="zero prior probability"):
        prior_entropy(np.array([0, 2]), log_prior)


def test_true_mass_bins_clip_to_edges_or_drop_out_of_range_masses():
    bins = MassBins()
    masses = np.array([5.0, 13.0, 7.006, np.nan, 12.5])

    edge = true_mass_bins(masses, bins, out_of_range="edge")
    drop = true_mass_bins(masses, bins, out_of_range="drop")

    np.testing.assert_array_equal(edge, [0, 519, 80, -1, 519])
    np.testing.assert_array_equal(drop, [-1, -1, 80, -1, 519])
    with pytest.raises(ValueError, match="out_of_range"):
        true_mass_bins(masses, bins, out_of_range="clip")


def test_dropped_masses_get_no_information_and_leave_the_prior():
    bins = MassBins(low=0.0, high=2.0, n_bins=2)
    masses = np.array([0.5, 1.5, 1.5, 7.0])
    cross_entropy = np.array([0.2, 0.2, 0.2, 0.2])

    true_bins = true_mass_bins(masses, bins, out_of_range="drop")
    log_prior = prior_log_probabilities(true_bins, bins.n_bins)
    information = pointwise_information(cross_entropy, true_bins, log_prior)

    np.testing.assert_allclose(np.exp(log_prior), [1 / 3, 2 / 3])
    np.testing.assert_allclose(information, [math.log(3) - 0.2, math.log(1.5) - 0.2,
                                             math.log(1.5) - 0.2, np.nan])


def test_pointwise_information_rejects_bad_inputs():
    log_prior = np.log([0.5, 0.5])

    with pytest.raises(ValueError, match="shape"):
        pointwise_information(np.zeros(3), np.array([0, 1]), log_prior)
    with pytest.raises(ValueError, match="infinite"):
        pointwise_information(np.array([0.1, np.inf]), np.array([0, 1]), log_prior)
    with pytest.raises(ValueError, match="found 2 at position 1"):
        pointwise_information(np.array([0.1, 0.1]), np.array([0, 2]), log_prior)


# --- decomposition on constructed pointwise information ----------------------------------------

@pytest.mark.parametrize("measure", ["mmi", "ccs"])
def test_identical_sources_are_all_redundant(measure):
    information = np.array([0.7, 1.3, 0.0, 2.2])

    parts = decompose(information, information, information, redundancy=measure)

    np.testing.assert_allclose(parts["redundant"], information)
    for name in ("unique_1", "unique_2", "synergistic"):
        np.testing.assert_allclose(parts[name], 0.0, atol=1e-15)


@pytest.mark.parametrize("measure", ["mmi", "ccs"])
def test_union_knowing_what_neither_source_knows_is_pure_synergy(measure):
    union = np.array([0.69, 1.1, 0.2])
    nothing = np.zeros(3)

    parts = decompose(nothing, nothing, union, redundancy=measure)

    np.testing.assert_allclose(parts["synergistic"], union)
    for name in ("redundant", "unique_1", "unique_2"):
        np.testing.assert_allclose(parts[name], 0.0, atol=1e-15)


def test_independent_additive_sources_are_two_uniques_under_ccs():
    i1, i2 = np.array([0.4, 1.0, 0.25]), np.array([0.9, 0.3, 0.25])

    parts = decompose(i1, i2, i1 + i2, redundancy="ccs")

    np.testing.assert_allclose(parts["unique_1"], i1)
    np.testing.assert_allclose(parts["unique_2"], i2)
    np.testing.assert_allclose(parts["redundant"], 0.0, atol=1e-15)
    np.testing.assert_allclose(parts["synergistic"], 0.0, atol=1e-15)


def test_mmi_reads_independent_additive_sources_as_equal_redundancy_and_synergy():
    # The paper's measure cannot tell additivity from overlap: R = S = min(i1, i2).
    i1, i2 = np.array([0.4, 1.0]), np.array([0.9, 0.3])

    parts = decompose(i1, i2, i1 + i2, redundancy="mmi")

    np.testing.assert_allclose(parts["redundant"], [0.4, 0.3])
    np.testing.assert_allclose(parts["synergistic"], [0.4, 0.3])
    np.testing.assert_allclose(parts["unique_1"], [0.0, 0.7], atol=1e-15)
    np.testing.assert_allclose(parts["unique_2"], [0.5, 0.0], atol=1e-15)


def test_misinformation_gives_negative_components():
    i1 = np.array([-0.5, 0.8])
    i2 = np.array([0.3, 0.6])
    i12 = np.array([0.1, 0.5])  # second galaxy: the union does worse than its better source

    parts = decompose(i1, i2, i12, redundancy="mmi")

    np.testing.assert_allclose(parts["redundant"], [-0.5, 0.6])
    np.testing.assert_allclose(parts["unique_1"], [0.0, 0.2], atol=1e-15)
    np.testing.assert_allclose(parts["unique_2"], [0.8, 0.0], atol=1e-15)
    np.testing.assert_allclose(parts["synergistic"], [-0.2, -0.3])


def test_ccs_counts_shared_misinformation_as_negative_redundancy():
    misinformation = np.array([-0.4, -1.2])

    parts = decompose(misinformation, misinformation, misinformation, redundancy="ccs")

    np.testing.assert_allclose(parts["redundant"], misinformation)
    np.testing.assert_allclose(parts["synergistic"], 0.0, atol=1e-15)


def test_ccs_gives_no_redundancy_when_signs_disagree():
    # i1 > 0 but i2 < 0: the co-information 0.5 - 0.2 - 0.1 = 0.2 is ambiguous, so R = 0.
    parts = decompose(np.array([0.5]), np.array([-0.2]), np.array([0.1]), redundancy="ccs")

    np.testing.assert_allclose(parts["redundant"], [0.0])
    np.testing.assert_allclose(parts["unique_1"], [0.5])
    np.testing.assert_allclose(parts["unique_2"], [-0.2])
    np.testing.assert_allclose(parts["synergistic"], [-0.2])


@pytest.mark.parametrize("measure", ["mmi", "ccs"])
def test_parts_sum_to_union_information_for_every_galaxy(measure):
    rng = np.random.default_rng(5)
    i1, i2, i12 = rng.normal(0.5, 1.5, size=(3, 10_000))

    parts = decompose(i1, i2, i12, redundancy=measure)

    np.testing.assert_allclose(_sum_of_parts(parts), i12, rtol=0, atol=1e-12)


def test_mmi_synergy_is_union_minus_better_source():
    rng = np.random.default_rng(6)
    i1, i2, i12 = rng.normal(0.5, 1.5, size=(3, 1000))

    parts = decompose(i1, i2, i12, redundancy="mmi")

    np.testing.assert_allclose(parts["redundant"], np.minimum(i1, i2))
    np.testing.assert_allclose(parts["synergistic"], i12 - np.maximum(i1, i2), atol=1e-12)


def test_missing_information_gives_missing_parts():
    parts = decompose(np.array([np.nan, 0.5]), np.array([0.2, 0.5]), np.array([0.3, np.nan]))

    for name in COMPONENTS:
        assert np.isnan(parts[name]).all()


def test_custom_redundancy_measure_plugs_in():
    name = "zero_redundancy_for_test"
    try:
        @register_redundancy(name)
        def zero(i1, i2, i12):
            return np.zeros_like(i1)

        parts = decompose(np.array([0.4]), np.array([0.1]), np.array([0.9]), redundancy=name)

        assert name in redundancy_measures()
        np.testing.assert_allclose(parts["unique_1"], [0.4])
        np.testing.assert_allclose(parts["synergistic"], [0.4])
        with pytest.raises(ValueError, match="already registered"):
            register_redundancy(name)(zero)
    finally:
        decomposition_module._REDUNDANCY_MEASURES.pop(name, None)
    with pytest.raises(ValueError, match="unknown redundancy measure"):
        decompose(np.zeros(1), np.zeros(1), np.zeros(1), redundancy=name)


# --- end to end from probability tables --------------------------------------------------------

def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _analytic_information(joint: np.ndarray, source_axes: tuple[int, ...]) -> float:
    """I(Y; X_sources) = H(Y) + H(X) - H(X, Y) of a joint table p[x1, x2, y], in nats."""
    drop = tuple(axis for axis in (0, 1) if axis not in source_axes)
    p_xy = joint.sum(axis=drop) if drop else joint
    p_x = p_xy.sum(axis=-1)
    p_y = joint.sum(axis=(0, 1))
    return _entropy(p_y) + _entropy(p_x) - _entropy(p_xy)


def _information_from_counts(counts: np.ndarray) -> tuple[dict, np.ndarray]:
    """Galaxies drawn exactly in proportion to counts[x1, x2, y]; i1, i2, i12 from exact models."""
    x1, x2, y = (np.repeat(axis.ravel(), counts.ravel())
                 for axis in np.indices(counts.shape))
    n_y = counts.shape[2]
    bins = MassBins(low=0.0, high=float(n_y), n_bins=n_y)
    true_bins = true_mass_bins(y + 0.5, bins)  # masses at the bin centres
    log_prior = prior_log_probabilities(true_bins, bins.n_bins)

    # exact conditionals p(y | x) of the empirical joint, i.e. perfect information models
    c1 = counts.sum(axis=1)
    c2 = counts.sum(axis=0)
    p_given_1 = c1[x1, y] / c1.sum(axis=-1)[x1]
    p_given_2 = c2[x2, y] / c2.sum(axis=-1)[x2]
    p_given_12 = counts[x1, x2, y] / counts.sum(axis=-1)[x1, x2]
    information = {
        name: pointwise_information(-np.log(p), true_bins, log_prior)
        for name, p in (("i1", p_given_1), ("i2", p_given_2), ("i12", p_given_12))
    }
    return information, counts / counts.sum()


def test_mean_pointwise_information_equals_mutual_information_of_a_random_system():
    counts = np.random.default_rng(11).integers(1, 20, size=(2, 3, 4))

    information, joint = _information_from_counts(counts)
    parts = decompose(information["i1"], information["i2"], information["i12"])

    assert information["i1"].mean() == pytest.approx(_analytic_information(joint, (0,)), abs=1e-12)
    assert information["i2"].mean() == pytest.approx(_analytic_information(joint, (1,)), abs=1e-12)
    assert information["i12"].mean() == pytest.approx(_analytic_information(joint, (0, 1)),
                                                      abs=1e-12)
    assert _sum_of_parts(parts).mean() == pytest.approx(_analytic_information(joint, (0, 1)),
                                                        abs=1e-12)


def test_xor_system_is_pure_synergy_of_ln2():
    x1, x2 = np.meshgrid([0, 1], [0, 1], indexing="ij")
    counts = np.zeros((2, 2, 2), dtype=int)
    counts[x1, x2, x1 ^ x2] = 25

    information, joint = _information_from_counts(counts)
    parts = decompose(information["i1"], information["i2"], information["i12"])

    assert _analytic_information(joint, (0,)) == pytest.approx(0.0, abs=1e-15)
    assert _analytic_information(joint, (0, 1)) == pytest.approx(math.log(2))
    np.testing.assert_allclose(information["i1"], 0.0, atol=1e-15)
    np.testing.assert_allclose(parts["synergistic"], math.log(2))
    np.testing.assert_allclose(parts["redundant"], 0.0, atol=1e-15)


def test_copied_source_is_pure_redundancy_of_the_entropy():
    counts = np.zeros((3, 3, 3), dtype=int)
    for value, count in enumerate([10, 20, 30]):
        counts[value, value, value] = count  # y = x1 = x2
    entropy = _entropy(np.array([10, 20, 30]) / 60)

    information, joint = _information_from_counts(counts)
    parts = decompose(information["i1"], information["i2"], information["i12"])

    assert _analytic_information(joint, (0, 1)) == pytest.approx(entropy)
    assert parts["redundant"].mean() == pytest.approx(entropy, abs=1e-12)
    for name in ("unique_1", "unique_2", "synergistic"):
        np.testing.assert_allclose(parts[name], 0.0, atol=1e-15)


# --- the information table ---------------------------------------------------------------------

def test_information_table_matches_its_contract_and_values():
    i1 = np.array([0.5, -0.2, np.nan])
    i2 = np.array([0.3, 0.4, np.nan])
    i12 = np.array([0.9, 0.1, np.nan])
    reference = np.array([1.0, 0.6, np.nan])

    table = information_table(
        np.array([10, 11, 12]), run_id="run-1", tuple_name="Mugriz+Iugriz", source_1="Mugriz",
        source_2="Iugriz", union="Mugriz_Iugriz", i1=i1, i2=i2, i12=i12,
        gap_reference=reference, redundancy="mmi",
    )

    assert table.schema.equals(_contract_schema("information"))
    validate(table, "information")
    assert INFORMATION_SCHEMA.equals(_contract_schema("information"))
    assert table["redundant"].to_pylist()[:2] == pytest.approx([0.3, -0.2])
    assert table["synergistic"].to_pylist()[:2] == pytest.approx([0.4, -0.3])
    assert table["gap"].to_pylist()[:2] == pytest.approx([0.1, 0.5])
    assert table["i_union"].null_count == 1 and table["redundant"].null_count == 1
    assert set(table["tuple"].to_pylist()) == {"Mugriz+Iugriz"}


def test_information_table_without_reference_has_null_gap():
    table = information_table(
        np.array([1, 2]), run_id="r", tuple_name="A+B", source_1="A", source_2="B",
        union="AB", i1=np.array([0.1, 0.2]), i2=np.array([0.1, 0.3]),
        i12=np.array([0.2, 0.3]), gap_reference=None, redundancy="ccs",
    )

    assert table["gap"].null_count == 2
    assert table["redundancy_measure"].to_pylist() == ["ccs", "ccs"]


def test_information_table_names_the_bad_argument():
    with pytest.raises(ValueError, match="i2 has shape"):
        information_table(np.array([1, 2]), run_id="r", tuple_name="A+B", source_1="A",
                          source_2="B", union="AB", i1=np.zeros(2), i2=np.zeros(3),
                          i12=np.zeros(2))
    with pytest.raises(ValueError, match="galaxy_ids"):
        information_table(np.array([1.5, 2.0]), run_id="r", tuple_name="A+B", source_1="A",
                          source_2="B", union="AB", i1=np.zeros(2), i2=np.zeros(2),
                          i12=np.zeros(2))
