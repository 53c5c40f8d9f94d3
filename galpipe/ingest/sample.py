"""The bundled real sample: 3,901 NGC/IC galaxies with SDSS gri colour cutouts.

The Parquet files live in the repository at ``data/ngc_ic/`` (built by
``scripts/build_sample.py``, described in ``data/ngc_ic/PROVENANCE.md``), so the whole pipeline
runs on real pixels from a fresh clone, without any download.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import galpipe
from galpipe.ingest.tables import IngestError

GALAXIES_FILE = "galaxies.parquet"
CUTOUTS_FILE = "cutouts.parquet"


def sample_dir() -> Path:
    """The folder of the bundled sample (``<repository>/data/ngc_ic``)."""
    return Path(galpipe.__file__).resolve().parent.parent / "data" / "ngc_ic"


def load_sample() -> tuple[pa.Table, pa.Table]:
    """The bundled sample as (galaxies, cutouts) tables, rows sorted by ``galaxy_id``.

    ``galaxies`` follows ``schemas/galaxies.yaml`` (with OpenNGC photometry, shape and the
    per-image ``pixel_scale`` in arcsec/px after the contract's columns); ``cutouts`` holds
    3 x 64 x 64 uint8 g, r, i planes (pixel kind ``colour_uint8``).
    """
    folder = sample_dir()
    paths = [folder / GALAXIES_FILE, folder / CUTOUTS_FILE]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise IngestError(f"bundled sample files missing: {missing}; rebuild them with "
                          f"scripts/build_sample.py")
    return pq.read_table(paths[0]), pq.read_table(paths[1])
