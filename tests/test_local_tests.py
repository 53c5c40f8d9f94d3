"""Local causal tests: the vectorised kernel against a per-galaxy loop, permutation p-values
against exact enumeration, behaviour on constructed (in)dependence, and the Ray edge."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

import galpipe.causal.local_tests as local_tests_module
from galpipe.causal import (
    LocalTestBlockWorker,
    block_rng,
    local_statistics_reference,
    local_test_statistics,
    local_tests_record_batch,
    run_local_tests,
)
from galpipe.contracts import validate

pytestmark = pytest.mark.timeout(120)


def _neighbourhoods(n_galaxies: int, k: int, seed: int, kind: str) -> tuple[np.ndarray, ...]:
    """(mass, query, condition), each (G, K): neighbours of a galaxy share one latent value S.

    kind "independent": mass = S + noise, query independent of everything;
    kind "dependent": mass = S + 0.8 query + noise;
    kind "through_condition": query = condition + noise, mass = S + condition + noise, so the
    query informs on mass only through the condition.
    """
    rng = np.random.default_rng(seed)
    latent_s = rng.normal(10.0, 0.5, size=(n_galaxies, 1))
    condition = rng.normal(size=(n_galaxies, k))
    noise = rng.normal(scale=0.2, size=(n_galaxies, k))
    if kind == "independent":
        query = rng.uniform(0.2, 1.0, size=(n_galaxies, k))
        mass = latent_s + noise
    elif kind == "dependent":
        query = rng.normal(size=(n_galaxies, k))
        mass = latent_s + 0.8 * query + noise
    else:
        query = condition + rng.normal(scale=0.5, size=(n_galaxies, k))
        mass = latent_s + condition + noise
    return mass, query, condition


def _with_edge_cases(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixed data with NaNs and deliberate edge cases in the first rows."""
    mass, query, condition = _neighbourhoods(24, 30, seed, "dependent")
    rng = np.random.default_rng(seed + 1)
    for values in (mass, query, condition):
        values[rng.random(values.shape) < 0.12] = np.nan
    mass[0, :22] = np.nan            # 8 valid neighbours: below min_valid=10
    query[1] = (query[1] > 0).astype(float)  # binary query: the quadratic term drops out
    condition[2] = 0.3               # constant condition: conditional statistics undefined
    mass[3] = 10.5                   # constant mass: everything undefined
    query[4, 5:] = np.nan
    query[4, :5] = [0.1, 0.2, 0.3, 0.4, 0.5]  # 5 valid: enough for min_valid=4 only
    return mass, query, condition


@pytest.mark.parametrize("min_valid", [10, 4])
def test_vectorised_statistics_equal_reference_loop_with_nulls(min_valid):
    mass, query, condition = _with_edge_cases(seed=3)

    fast = local_test_statistics(mass, query, condition, n_permutations=25,
                                 rng=np.random.default_rng(11), min_valid=min_valid)
    slow = local_statistics_reference(mass, query, condition, n_permutations=25,
                                      rng=np.random.default_rng(11), min_valid=min_valid)

    assert fast.keys() == slow.keys()
    for name in fast:
        np.testing.assert_array_equal(np.isnan(fast[name]), np.isnan(slow[name]), err_msg=name)
        np.testing.assert_allclose(fast[name], slow[name], rtol=0, atol=1e-9, err_msg=name)
    assert fast["n_valid"][0] == 8
    assert np.isnan(fast["r"][0]) == np.isnan(fast["pe_pvalue"][0]) == (min_valid == 10)
    assert np.all(np.isfinite([fast["r"][1], fast["pe"][1]]))
    # A binary query makes the quadratic fit linear, so pe equals r squared.
    assert fast["pe"][1] == pytest.approx(fast["r"][1] ** 2, abs=1e-12)
    assert np.isfinite(fast["r"][2]) and np.isnan(fast["r_cond"][2])
    assert np.isnan(fast["r"][3]) and np.isnan(fast["pe_cond"][3])
    assert np.isnan(fast["r"][4]) == (min_valid == 10)
    assert np.sum(np.isfinite(fast["r_cond_pvalue"])) >= 15


def test_unconditional_only_returns_no_conditional_columns():
    mass, query, _ = _neighbourhoods(5, 20, 0, "dependent")

    result = local_test_statistics(mass, query, n_permutations=3, rng=np.random.default_rng(0))

    assert set(result) == {"n_valid", "r", "r_perm1", "r_pvalue", "pe", "pe_perm1", "pe_pvalue"}


def test_chunked_permutation_draws_equal_one_shot(monkeypatch):
    mass, query, condition = _with_edge_cases(seed=5)
    one_shot = local_test_statistics(mass, query, condition, n_permutations=17,
                                     rng=np.random.default_rng(2))

    monkeypatch.setattr(local_tests_module, "_CHUNK_ELEMENTS", 2 * mass.size)
    chunked = local_test_statistics(mass, query, condition, n_permutations=17,
                                    rng=np.random.default_rng(2))

    for name in one_shot:
        np.testing.assert_array_equal(one_shot[name], chunked[name], err_msg=name)


def test_statistics_match_textbook_values_without_permutations():
    rng = np.random.default_rng(8)
    query = rng.normal(size=(1, 50))
    mass = 2.0 + query - 0.5 * query**2 + rng.normal(scale=0.3, size=(1, 50))

    result = local_test_statistics(mass, query, n_permutations=1, rng=rng)

    design = np.column_stack([np.ones(50), query[0], query[0] ** 2])
    coefficients, *_ = np.linalg.lstsq(design, mass[0], rcond=None)
    residual = mass[0] - design @ coefficients
    assert result["r"][0] == pytest.approx(np.corrcoef(mass[0], query[0])[0, 1], abs=1e-12)
    assert result["pe"][0] == pytest.approx(1 - residual.var() / mass[0].var(), abs=1e-12)


def test_pvalue_converges_to_exact_enumeration_over_all_permutations():
    # Four valid neighbours have 24 orderings; the exact permutation p-value counts them.
    mass = np.array([[1.0, 2.0, 2.5, 4.0, np.nan]])
    query = np.array([[0.3, 0.1, 0.9, 1.2, 5.0]])
    n_permutations = 20_000

    result = local_test_statistics(mass, query, n_permutations=n_permutations,
                                   rng=np.random.default_rng(4), min_valid=4)

    observed = np.corrcoef(mass[0, :4], query[0, :4])[0, 1]
    orderings = [np.corrcoef(mass[0, :4], query[0, list(p)])[0, 1]
                 for p in itertools.permutations(range(4))]
    exact = np.mean(np.abs(orderings) >= abs(observed) - 1e-12)
    tolerance = 4 * np.sqrt(exact * (1 - exact) / n_permutations) + 1 / (n_permutations + 1)
    assert abs(result["r_pvalue"][0] - exact) < tolerance
    # The +1 correction: (1 + hits) / (B + 1) is a multiple of 1 / (B + 1).
    hits = result["r_pvalue"][0] * (n_permutations + 1) - 1
    assert hits == pytest.approx(round(hits), abs=1e-6)


def test_perfect_dependence_gives_the_smallest_possible_pvalue():
    query = np.linspace(0.0, 1.0, 30)[None, :]
    mass = 9.0 + 2.0 * query

    result = local_test_statistics(mass, query, n_permutations=49, rng=np.random.default_rng(1))

    assert result["r"][0] == pytest.approx(1.0)
    assert result["pe"][0] == pytest.approx(1.0)
    assert result["r_pvalue"][0] == pytest.approx(1 / 50)
    assert result["pe_pvalue"][0] == pytest.approx(1 / 50)


def test_independent_query_gives_uniform_pvalues_and_small_correlations():
    mass, query, condition = _neighbourhoods(600, 60, 21, "independent")

    result = local_test_statistics(mass, query, condition, n_permutations=99,
                                   rng=np.random.default_rng(9))

    for name in ("r_pvalue", "pe_pvalue", "r_cond_pvalue", "pe_cond_pvalue"):
        p_values = result[name]
        assert 0.45 < p_values.mean() < 0.55, name
        assert 0.025 < np.mean(p_values <= 0.05) < 0.08, name
    assert np.mean(np.abs(result["r"])) < 0.15
    # Under the null the single-permutation statistic has the original's distribution.
    assert abs(np.median(result["pe"]) - np.median(result["pe_perm1"])) < 0.01


def test_dependent_query_gives_tiny_pvalues_and_large_efficiency():
    mass, query, condition = _neighbourhoods(200, 60, 22, "dependent")

    result = local_test_statistics(mass, query, condition, n_permutations=99,
                                   rng=np.random.default_rng(9))

    assert np.all(result["r_pvalue"] == pytest.approx(1 / 100))
    assert np.all(result["pe_pvalue"] == pytest.approx(1 / 100))
    assert np.median(result["pe"]) > 0.8
    assert np.median(result["pe_perm1"]) < 0.1
    assert np.mean(result["r_cond_pvalue"] <= 0.05) > 0.95


def test_dependence_only_through_condition_vanishes_when_conditioned():
    mass, query, condition = _neighbourhoods(400, 60, 23, "through_condition")

    result = local_test_statistics(mass, query, condition, n_permutations=99,
                                   rng=np.random.default_rng(9))

    assert np.mean(result["r_pvalue"] <= 0.05) > 0.95
    assert np.median(result["pe"]) > 0.5
    assert np.mean(result["r_cond_pvalue"] <= 0.05) < 0.09
    assert np.mean(result["pe_cond_pvalue"] <= 0.05) < 0.09
    assert 0.4 < np.mean(result["r_cond_pvalue"]) < 0.6


def test_record_batch_satisfies_contract_with_nulls_for_nan():
    mass, query, condition = _with_edge_cases(seed=7)
    statistics = local_test_statistics(mass, query, condition, n_permutations=5,
                                       rng=np.random.default_rng(0))

    batch = local_tests_record_batch(
        np.arange(24), np.full(24, 30), statistics, run_id="run-1", model="photometry",
        query_name="ba_r", condition_name="redshift", n_permutations=5)
    unconditional = local_tests_record_batch(
        np.arange(24), np.full(24, 30), {k: v for k, v in statistics.items() if "cond" not in k},
        run_id="run-1", model="photometry", query_name="ba_r", condition_name=None,
        n_permutations=5)

    validate(pa.Table.from_batches([batch]), "local_tests")
    validate(pa.Table.from_batches([unconditional]), "local_tests")
    assert batch.column("r").null_count == int(np.isnan(statistics["r"]).sum()) > 0
    assert batch.column("r").to_pylist()[0] is None
    assert unconditional.column("r_cond").null_count == 24
    assert unconditional.column("condition").null_count == 24


def _training_set(n_train: int, seed: int) -> dict[str, np.ndarray]:
    """Shuffled, non-contiguous training ids with mass, query and condition (some NaN)."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n_train) * 7 + 1000)
    condition = rng.normal(size=n_train)
    query = condition + rng.normal(scale=0.5, size=n_train)
    mass = 10 + 0.5 * query + rng.normal(scale=0.3, size=n_train)
    mass[rng.random(n_train) < 0.05] = np.nan
    return {"ids": ids, "mass": mass, "query": query, "condition": condition}


def _blocks(train_ids: np.ndarray, n_galaxies: int, k: int, block_size: int, seed: int):
    """Blocks of (galaxy ids, neighbour ids) drawn from the training ids."""
    rng = np.random.default_rng(seed)
    galaxy_ids = np.arange(n_galaxies, dtype=np.int64) + 5_000_000
    neighbours = rng.choice(train_ids, size=(n_galaxies, k))
    neighbours[0, :3] = -1  # empty slots
    return [(galaxy_ids[i:i + block_size], neighbours[i:i + block_size])
            for i in range(0, n_galaxies, block_size)]


def _run(train, blocks, **overrides) -> pa.Table:
    options = dict(run_id="run-7", model="images", query_name="ba_r",
                   condition_name="redshift", n_permutations=19, seed=5, min_valid=10)
    options |= overrides
    batches = list(run_local_tests(iter(blocks), train["ids"], train["mass"], train["query"],
                                   train["condition"], **options))
    return pa.Table.from_batches(batches)


@pytest.fixture(scope="module")
def ray_runs(ray_local):
    """One training set and blocks, run three ways: 1 actor, 2 actors, and smaller blocks."""
    train = _training_set(500, seed=1)
    blocks = _blocks(train["ids"], 90, 25, block_size=20, seed=2)
    galaxy_ids = np.concatenate([b[0] for b in blocks])
    neighbours = np.concatenate([b[1] for b in blocks])
    small_blocks = [(galaxy_ids[i:i + 7], neighbours[i:i + 7]) for i in range(0, 90, 7)]
    return {
        "train": train,
        "blocks": blocks,
        "one_actor": _run(train, blocks, num_actors=1, max_in_flight=1),
        "two_actors": _run(train, blocks, num_actors=2, max_in_flight=4),
        "small_blocks": _run(train, small_blocks, num_actors=1, max_in_flight=3),
    }


def test_ray_edge_equals_kernel_and_ignores_actor_count(ray_runs):
    train, blocks, one_actor = ray_runs["train"], ray_runs["blocks"], ray_runs["one_actor"]

    assert one_actor.equals(ray_runs["two_actors"])
    validate(one_actor, "local_tests")
    assert one_actor.column("galaxy_id").to_pylist() == list(range(5_000_000, 5_000_090))
    assert one_actor.column("k").to_pylist()[:2] == [22, 25]
    row_of = {galaxy_id: row for row, galaxy_id in enumerate(train["ids"])}
    offset = 0
    for block_id, (galaxy_ids, neighbours) in enumerate(blocks):
        rows = np.vectorize(lambda i: row_of.get(i, -1))(neighbours)
        gathered = [np.where(rows >= 0, train[name][rows], np.nan)
                    for name in ("mass", "query", "condition")]
        direct = local_test_statistics(*gathered, n_permutations=19,
                                       rng=block_rng(5, block_id), min_valid=10)
        part = one_actor.slice(offset, len(galaxy_ids))
        for name in ("r", "pe_pvalue", "r_cond_perm1", "pe_cond", "n_valid_conditional"):
            np.testing.assert_array_equal(
                part.column(name).to_numpy(zero_copy_only=False), direct[name], err_msg=name)
        offset += len(galaxy_ids)


def test_ray_edge_statistics_do_not_depend_on_block_size(ray_runs):
    whole, split = ray_runs["one_actor"], ray_runs["small_blocks"]

    for name in ("galaxy_id", "r", "pe", "r_cond", "pe_cond", "n_valid", "k"):
        assert whole.column(name).equals(split.column(name)), name
    # Permutations come from per-block generators, so p-values differ by Monte Carlo noise.
    difference = np.abs(whole.column("r_pvalue").to_numpy(zero_copy_only=False)
                        - split.column("r_pvalue").to_numpy(zero_copy_only=False))
    assert np.nanmean(difference) < 0.15


def test_ray_edge_holds_at_most_max_in_flight_blocks(ray_local):
    train = _training_set(300, seed=5)
    blocks = _blocks(train["ids"], 60, 20, block_size=10, seed=6)
    consumed = []

    def counting_blocks():
        for block in blocks:
            consumed.append(1)
            yield block

    stream = run_local_tests(counting_blocks(), train["ids"], train["mass"], train["query"],
                             None, run_id="r", model="m", query_name="q", condition_name=None,
                             n_permutations=3, num_actors=1, max_in_flight=2)
    first = next(stream)
    assert len(consumed) == 2 and first.num_rows == 10
    rest = list(stream)
    assert len(rest) == 5 and len(consumed) == 6


def test_unknown_neighbour_id_raises_naming_it(ray_local):
    train = _training_set(100, seed=7)
    blocks = _blocks(train["ids"], 10, 12, block_size=10, seed=8)
    blocks[0][1][4, 2] = 999_999_999

    with pytest.raises(ValueError, match="999999999"):
        _run(train, blocks, num_actors=1)


def test_worker_rejects_duplicated_training_ids():
    with pytest.raises(ValueError, match="not unique"):
        LocalTestBlockWorker(np.array([3, 1, 3]), np.zeros(3), np.zeros(3), None, {})


def test_mismatched_condition_arguments_raise(ray_local):
    train = _training_set(50, seed=9)
    with pytest.raises(ValueError, match="condition_name"):
        next(run_local_tests([], train["ids"], train["mass"], train["query"], train["condition"],
                             run_id="r", model="m", query_name="q", condition_name=None))
