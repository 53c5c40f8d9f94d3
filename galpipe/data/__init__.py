"""Data stage: preprocessing kernels and the streaming Ray Data input pipeline.

* :mod:`galpipe.data.preprocess`: numpy kernels (log stretch, flux normalisation, colour
  scaling, rotations/flips, catalogue null handling and standardisation).
* :mod:`galpipe.data.pipeline`: :class:`Preprocessor`, :func:`fit_preprocessor`,
  :func:`galaxy_dataset` and :func:`mass_histograms` over a :class:`galpipe.storage.Storage`.

The pipeline names are imported lazily so that importing the kernels (e.g. in inference actors)
does not pull in Ray.
"""

from __future__ import annotations

from typing import Any

_PIPELINE = ("ImageSource", "Preprocessor", "augment_dataset", "check_inputs", "fit_preprocessor",
             "galaxy_dataset", "image_source", "mass_histograms", "prior_entropy")

__all__ = list(_PIPELINE)


def __getattr__(name: str) -> Any:
    if name in _PIPELINE:
        from galpipe.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'galpipe.data' has no attribute '{name}'")
