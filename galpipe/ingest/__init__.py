"""Ingest: survey inputs into the ``galaxies`` and ``cutouts`` tables.

Sources and their readers (each returns contract-shaped Arrow tables or streams record batches):

* catalogue files (FITS, CSV, Parquet): :func:`read_catalogue`, then :func:`to_galaxies`;
  a second catalogue (e.g. WISE) joins by position with :func:`crossmatch`;
* FITS image cutouts: :func:`fits_cutout_batches`;
* the paper's reference ``.npz`` pair: :func:`read_reference_npz`;
* the bundled NGC/IC sample: :func:`load_sample` (built by ``scripts/build_sample.py``);
* a mock survey with known relations: :func:`mock_survey`.

Nothing here writes to storage: callers (the ``galpipe ingest`` / ``galpipe mock`` commands) pass
the tables or batches to :class:`galpipe.storage.Storage`.
"""

from galpipe.ingest.catalogues import read_catalogue, to_galaxies
from galpipe.ingest.crossmatch import crossmatch
from galpipe.ingest.fits_cutouts import (
    SDSS_FPC_SOFT_BIAS,
    fits_cutout_batches,
    galaxy_ids_from_files,
)
from galpipe.ingest.mock import mock_survey
from galpipe.ingest.reference_npz import read_reference_npz
from galpipe.ingest.sample import load_sample, sample_dir
from galpipe.ingest.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, assign_split
from galpipe.ingest.tables import IngestError, cutout_images

__all__ = [
    "DEFAULT_FRACTIONS", "DEFAULT_SEED", "IngestError", "SDSS_FPC_SOFT_BIAS", "assign_split",
    "crossmatch", "cutout_images", "fits_cutout_batches", "galaxy_ids_from_files",
    "load_sample", "mock_survey", "read_catalogue", "read_reference_npz", "sample_dir",
    "to_galaxies",
]
