"""Metrics of a committed predictions output: every point estimate, labelled split and group.

The per-galaxy CRPS is computed once by the inference actors (they hold the full PDF) and
stored in ``predictions``; here only per-galaxy scalars are needed, so the metrics of a whole
survey are computed from a few columns of the labelled galaxies.

Limitation: sigma_MAD needs exact medians, so the labelled galaxies' residuals of one model are
held in memory (8 bytes per galaxy and point estimate); beyond about 10^8 labelled galaxies a
streaming quantile sketch would be needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from galpipe.contracts import load_contract
from galpipe.infer.metrics import _group_row

SPLITS = ("train", "validation", "test")
POINTS = {"mean": "mass_mean", "median": "mass_median", "mode": "mass_mode"}


def metrics_from_predictions(
    predictions: pa.Table, *, classes: Mapping[int, str | None], run_id: str, model: str,
    estimator: str, mass_edges: Sequence[float],
) -> pa.Table:
    """The ``metrics`` rows (overall, per class, per true-mass group) of one predictions output.

    ``predictions`` needs galaxy_id, split, stellar_mass, mass_mean, mass_median, mass_mode and
    crps; ``classes`` maps galaxy id to class label.
    """
    rows = []
    edges = np.asarray(mass_edges, dtype=np.float64)
    split = np.asarray(predictions.column("split").to_pylist(), dtype=object)
    truth = predictions.column("stellar_mass").to_numpy(zero_copy_only=False).astype(float)
    crps = predictions.column("crps").to_numpy(zero_copy_only=False).astype(float)
    ids = predictions.column("galaxy_id").to_numpy()
    galaxy_class = np.asarray([classes.get(int(i)) for i in ids], dtype=object)
    for split_name in SPLITS:
        in_split = (split == split_name) & np.isfinite(truth)
        if not in_split.any():
            continue
        for point, column in POINTS.items():
            estimate = predictions.column(column).to_numpy(zero_copy_only=False).astype(float)
            delta = estimate - truth

            def add(grouping: str, group: str, mask: np.ndarray, low=None, high=None) -> None:
                stats = _group_row(delta[mask], crps[mask])
                rows.append({"run_id": run_id, "model": model, "estimator": estimator,
                             "point": point, "split": split_name, "grouping": grouping,
                             "group": group, "bin_low": low, "bin_high": high, **stats})

            add("all", "all", in_split)
            for label in sorted({c for c in galaxy_class[in_split] if c is not None}):
                add("class", str(label), in_split & (galaxy_class == label))
            for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
                last = i == len(edges) - 2
                inside = (truth >= low) & ((truth <= high) if last else (truth < high))
                add("true_mass", f"{low:g}-{high:g}", in_split & inside, float(low),
                    float(high))
    schema = load_contract("metrics").arrow_schema()
    if not rows:
        return schema.empty_table()
    return pa.Table.from_pylist(rows, schema=schema)
