"""Global causal discovery: reading causal-learn's endpoint encoding, and PC/FCI bootstraps
recovering a known linear-Gaussian graph X -> Z <- Y, Z -> W."""

from __future__ import annotations

import numpy as np
import pytest
from causallearn.graph.Edge import Edge
from causallearn.graph.Endpoint import Endpoint
from causallearn.graph.GeneralGraph import GeneralGraph
from causallearn.graph.GraphNode import GraphNode

from galpipe.causal import bootstrap_discovery, bootstrap_replicate, discover_graph, edge_patterns
from galpipe.causal.discovery import (
    BIDIRECTED,
    DIRECTED,
    NO_EDGE,
    NONDIRECTED,
    PARTIALLY_DIRECTED,
    PATTERN_COLUMNS,
    REVERSE_DIRECTED,
    REVERSE_PARTIALLY_DIRECTED,
    UNDIRECTED,
)
from galpipe.contracts import validate

pytestmark = pytest.mark.timeout(180)

NAMES = ["X", "Y", "Z", "W"]
TRUE_EDGES = {("X", "Z"), ("Y", "Z"), ("Z", "W")}


def _collider_chain(n: int, seed: int) -> np.ndarray:
    """Samples (n, 4) of X -> Z <- Y, Z -> W with Gaussian noise, columns X, Y, Z, W."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=n), rng.normal(size=n)
    z = 0.9 * x - 0.8 * y + rng.normal(scale=0.7, size=n)
    w = 0.8 * z + rng.normal(scale=0.7, size=n)
    return np.column_stack([x, y, z, w])


def _row(table, source: str, target: str) -> dict:
    rows = [r for r in table.to_pylist() if r["source"] == source and r["target"] == target]
    assert len(rows) == 1
    return rows[0]


def test_edge_patterns_read_causal_learn_endpoints():
    nodes = [GraphNode(name) for name in "ABCDEFG"]
    graph = GeneralGraph(nodes)
    a, b, c, d, e, f, g = nodes
    graph.add_edge(Edge(a, b, Endpoint.TAIL, Endpoint.ARROW))    # A --> B
    graph.add_edge(Edge(c, b, Endpoint.TAIL, Endpoint.ARROW))    # B <-- C
    graph.add_edge(Edge(c, d, Endpoint.TAIL, Endpoint.TAIL))     # C --- D
    graph.add_edge(Edge(d, e, Endpoint.ARROW, Endpoint.ARROW))   # D <-> E
    graph.add_edge(Edge(e, f, Endpoint.CIRCLE, Endpoint.ARROW))  # E o-> F
    graph.add_edge(Edge(g, f, Endpoint.CIRCLE, Endpoint.ARROW))  # F <-o G
    graph.add_edge(Edge(a, g, Endpoint.CIRCLE, Endpoint.CIRCLE))  # A o-o G

    patterns = edge_patterns(graph.graph)

    expected = {(0, 1): DIRECTED, (1, 2): REVERSE_DIRECTED, (2, 3): UNDIRECTED,
                (3, 4): BIDIRECTED, (4, 5): PARTIALLY_DIRECTED,
                (5, 6): REVERSE_PARTIALLY_DIRECTED, (0, 6): NONDIRECTED}
    for i in range(7):
        for j in range(i + 1, 7):
            assert patterns[i, j] == expected.get((i, j), NO_EDGE), (i, j)
    assert not np.tril(patterns).any()


def test_single_pc_run_orients_collider_and_chain():
    graph = discover_graph(_collider_chain(3000, 0), NAMES, method="pc", alpha=0.01)

    patterns = edge_patterns(graph)

    assert patterns[0, 2] == DIRECTED and patterns[1, 2] == DIRECTED  # X -> Z <- Y
    assert patterns[2, 3] == DIRECTED                                # Z -> W
    assert patterns[0, 1] == patterns[0, 3] == patterns[1, 3] == NO_EDGE


def test_replicate_resamples_rows_from_its_own_seed():
    data = _collider_chain(400, 1)

    replicate = bootstrap_replicate(data, NAMES, 3, seed=9, sample_size=300, method="pc",
                                    indep_test="fisherz", alpha=0.01)

    rng = np.random.default_rng(np.random.SeedSequence([9, 3]))
    rows = rng.integers(0, 400, size=300)
    expected = edge_patterns(discover_graph(data[rows], NAMES, method="pc", alpha=0.01))
    np.testing.assert_array_equal(replicate, expected)


@pytest.fixture(scope="module")
def collider_data() -> np.ndarray:
    data = _collider_chain(1500, 2)
    data[[5, 17, 300], [0, 3, 2]] = np.nan
    return data


def test_pc_bootstrap_recovers_known_graph(ray_local, collider_data):
    table = bootstrap_discovery(collider_data, NAMES, method="pc", alpha=0.001, n_bootstrap=16,
                                seed=4, num_actors=2, run_id="run-3")

    validate(table, "causal_edges")
    assert table.num_rows == 6
    for row in table.to_pylist():
        pair = (row["source"], row["target"])
        if pair in TRUE_EDGES:
            assert row["adjacency_frequency"] >= 0.9, pair
            assert row["directed_frequency"] >= 0.8, pair
        else:
            # Duplicated rows make resampled Fisher-z tests overconfident, so absent edges
            # appear in some resamples (up to about 0.2 at B = 60 on these data).
            assert row["adjacency_frequency"] <= 0.3, pair
        assert row["nondirected_frequency"] is None
        shares = sum(row[c] or 0.0 for c in PATTERN_COLUMNS.values())
        assert shares == pytest.approx(row["adjacency_frequency"])
    assert table.column("n_rows_dropped").to_pylist()[0] == 3
    assert table.column("n_rows_complete").to_pylist()[0] == 1497
    assert table.column("n_samples").to_pylist()[0] == 1497


def test_fci_bootstrap_recovers_known_pag(ray_local, collider_data):
    table = bootstrap_discovery(collider_data, NAMES, method="fci", alpha=0.001, n_bootstrap=12,
                                seed=4, num_actors=2, run_id="run-3")

    validate(table, "causal_edges")
    # FCI allows hidden common causes: X o-> Z <-o Y, and Z --> W follows from the collider.
    assert _row(table, "X", "Z")["partially_directed_frequency"] >= 0.8
    assert _row(table, "Y", "Z")["partially_directed_frequency"] >= 0.8
    assert _row(table, "Z", "W")["directed_frequency"] >= 0.8
    for pair in [("X", "Y"), ("X", "W"), ("Y", "W")]:
        assert _row(table, *pair)["adjacency_frequency"] <= 0.3


def test_same_seed_gives_identical_table_whatever_the_actor_count(ray_local):
    data = _collider_chain(300, 5)

    first = bootstrap_discovery(data, NAMES, n_bootstrap=6, seed=11, num_actors=1,
                                run_id="r", alpha=0.05)
    second = bootstrap_discovery(data, NAMES, n_bootstrap=6, seed=11, num_actors=3,
                                 run_id="r", alpha=0.05)

    assert first.equals(second)


def test_kci_resamples_are_capped(ray_local):
    data = _collider_chain(120, 6)[:, [0, 2, 3]]

    table = bootstrap_discovery(data, ["X", "Z", "W"], indep_test="kci", n_bootstrap=2,
                                num_actors=1, run_id="r", kci_max_samples=80)

    validate(table, "causal_edges")
    assert table.column("n_samples").to_pylist() == [80, 80, 80]
    with pytest.raises(ValueError, match="kci_max_samples"):
        bootstrap_discovery(data, ["X", "Z", "W"], indep_test="kci", sample_size=100,
                            kci_max_samples=80, run_id="r")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"method": "ges"}, "method"), ({"indep_test": "chisq"}, "indep_test"),
     ({"names": ["X", "X", "Z", "W"]}, "unique"), ({"names": ["X", "Y"]}, "one name per column")],
)
def test_invalid_arguments_raise_with_the_value_named(ray_local, arguments, message):
    options = {"names": NAMES, "run_id": "r"} | arguments
    with pytest.raises(ValueError, match=message):
        bootstrap_discovery(_collider_chain(50, 0), **options)
