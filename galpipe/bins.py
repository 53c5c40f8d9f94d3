"""Stellar-mass bins shared by every model, metric and information estimate.

The paper discretises log10 stellar mass into 520 bins of 0.0125 dex over [6.0, 12.5]; every
classifier outputs a softmax over these bins. Labels outside the range go to the edge bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MassBins:
    """Uniform bins in log10 stellar mass (dex).

    Parameters
    ----------
    low, high:
        Range of the bins in log10(M*/Msun).
    n_bins:
        Number of bins; the bin width is ``(high - low) / n_bins`` dex.
    """

    low: float = 6.0
    high: float = 12.5
    n_bins: int = 520

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"mass bins need high > low, got low={self.low}, high={self.high}")
        if self.n_bins < 2:
            raise ValueError(f"mass bins need at least 2 bins, got n_bins={self.n_bins}")

    @property
    def width(self) -> float:
        """Bin width in dex."""
        return (self.high - self.low) / self.n_bins

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, shape (n_bins + 1,), dex."""
        return np.linspace(self.low, self.high, self.n_bins + 1)

    @property
    def centres(self) -> np.ndarray:
        """Bin centres, shape (n_bins,), dex."""
        edges = self.edges
        return 0.5 * (edges[:-1] + edges[1:])

    def index(self, log_mass: np.ndarray) -> np.ndarray:
        """Bin index of each log mass, clipped into [0, n_bins - 1]; -1 where the mass is NaN."""
        log_mass = np.asarray(log_mass, dtype=np.float64)
        idx = np.floor((log_mass - self.low) / self.width)
        idx = np.clip(np.nan_to_num(idx, nan=-1.0), 0, self.n_bins - 1).astype(np.int64)
        idx[~np.isfinite(log_mass)] = -1
        return idx

    def in_range(self, log_mass: np.ndarray) -> np.ndarray:
        """True where a finite log mass lies inside [low, high] (edge bins not needed)."""
        log_mass = np.asarray(log_mass, dtype=np.float64)
        return np.isfinite(log_mass) & (log_mass >= self.low) & (log_mass <= self.high)
