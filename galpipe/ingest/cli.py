"""``galpipe ingest``: build the galaxies and cutouts tables from what survey users have.

    galpipe ingest sample   --storage URI
    galpipe ingest catalogue --storage URI CATALOGUE --id-column objid --ra-column ra \\
        --dec-column dec [--column TARGET=SOURCE ...] [--crossmatch WISE.fits --prefix wise_ \\
        --max-separation 3] [--fits-dir DIR --fits-pattern "{id}.fits" --bands r --size 64]
    galpipe ingest npz      --storage URI CATALOGUE.npz IMAGES.npz [--array TARGET=SOURCE ...]

Outputs land under ``STORAGE/tables/{galaxies,cutouts}/<key>/`` (atomic, validated against the
contracts); the key is printed and can be given to a config as ``{kind: tables, ...}``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _pairs(values: list[str] | None, what: str) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for value in values:
        if "=" not in value:
            raise ValueError(f"{what} expects TARGET=SOURCE, got {value!r}")
        target, source = value.split("=", 1)
        out[target] = source
    return out


def _write(args: argparse.Namespace, galaxies, cutouts, inputs: list[str], options) -> int:
    from galpipe.config import stable_hash
    from galpipe.pipeline.core import new_run_id
    from galpipe.storage import Provenance, Storage

    storage = Storage(args.storage)
    storage.check_reachable()
    key = args.key or f"ingest-{stable_hash([inputs, options])}"
    run_id = new_run_id()

    def provenance() -> Provenance:
        return Provenance(run_id, stable_hash(options), input_uris=inputs, stage="ingest")

    storage.write_table("galaxies", galaxies, key=key, provenance=provenance())
    if cutouts is not None:
        ref = storage.write_table("cutouts", cutouts, key=key, provenance=provenance())
        log.info("cutouts: %d images", ref.num_rows)
    print(f"ingested {galaxies.num_rows} galaxies into {storage.uri}/tables/galaxies/{key}"
          + (f" and cutouts/{key}" if cutouts is not None else ""))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from galpipe.ingest.sample import load_sample, sample_dir

    galaxies, cutouts = load_sample()
    return _write(args, galaxies, cutouts, [str(sample_dir())], {"source": "sample"})


def _catalogue(args: argparse.Namespace) -> int:
    import numpy as np

    from galpipe.ingest.catalogues import read_catalogue, to_galaxies
    from galpipe.ingest.crossmatch import crossmatch
    from galpipe.ingest.fits_cutouts import fits_cutout_batches

    columns = _pairs(args.column, "--column")
    table = read_catalogue(args.catalogue, columns=columns, id_column=args.id_column,
                           ra_column=args.ra_column, dec_column=args.dec_column,
                           name_column=args.name_column,
                           sentinel_exempt=tuple(args.sentinel_exempt or ()))
    inputs = [str(Path(args.catalogue).resolve())]
    if args.crossmatch:
        other = read_catalogue(args.crossmatch, columns=_pairs(args.crossmatch_column,
                                                               "--crossmatch-column"),
                               id_column=args.crossmatch_id_column,
                               ra_column=args.crossmatch_ra_column,
                               dec_column=args.crossmatch_dec_column)
        table = crossmatch(table, other, max_separation_arcsec=args.max_separation,
                           prefix=args.prefix)
        inputs.append(str(Path(args.crossmatch).resolve()))
    from galpipe.ingest.tables import IngestError

    try:
        galaxies = to_galaxies(table, survey=args.survey, seed=args.seed,
                               stratify_by=args.stratify_by or None)
    except IngestError as exc:
        raise IngestError(f"catalogue {args.catalogue}: {exc}") from exc
    cutouts = None
    if args.fits_dir:
        ids = galaxies.column("galaxy_id").to_numpy()
        if args.only_with_images:
            from galpipe.ingest.fits_cutouts import galaxy_ids_from_files

            have = galaxy_ids_from_files(args.fits_dir, args.fits_pattern.replace(
                "{band}", args.bands[0]))
            keep = np.isin(ids, have)
            galaxies = galaxies.filter(keep)
            ids = ids[keep]
        cutouts = fits_cutout_batches(ids, args.fits_dir, pattern=args.fits_pattern,
                                      bands=args.bands, size=args.size, policy=args.policy,
                                      bias=args.bias)
        inputs.append(str(Path(args.fits_dir).resolve()))
    return _write(args, galaxies, cutouts, inputs, vars(args))


def _npz(args: argparse.Namespace) -> int:
    from galpipe.ingest.reference_npz import read_reference_npz

    galaxies, cutouts = read_reference_npz(args.catalogue_npz, args.images_npz,
                                           arrays=_pairs(args.array, "--array"),
                                           bands=args.bands, survey=args.survey)
    inputs = [str(Path(p).resolve()) for p in (args.catalogue_npz, args.images_npz)]
    return _write(args, galaxies, cutouts, inputs, vars(args))


def register(subparsers: argparse._SubParsersAction) -> None:
    import os

    parser = subparsers.add_parser("ingest", help="build galaxies/cutouts tables from inputs")
    kinds = parser.add_subparsers(dest="ingest_kind", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", default=os.environ.get("GALPIPE_STORAGE", "./galpipe-data"))
        p.add_argument("--key", default=None, help="output key (default: hash of the inputs)")
        p.add_argument("--survey", default="survey", help="survey name stored in metadata")
        p.add_argument("--seed", type=int, default=20250929, help="split seed")

    sample = kinds.add_parser("sample", help="the bundled NGC/IC SDSS sample")
    common(sample)
    sample.set_defaults(handler=_sample)

    cat = kinds.add_parser("catalogue", help="a FITS/CSV/Parquet catalogue (+ FITS cutouts)")
    common(cat)
    cat.add_argument("catalogue")
    cat.add_argument("--id-column", required=True)
    cat.add_argument("--ra-column", required=True)
    cat.add_argument("--dec-column", required=True)
    cat.add_argument("--name-column", default=None)
    cat.add_argument("--column", action="append", metavar="TARGET=SOURCE",
                     help="catalogue column to keep, renamed (stellar_mass=lgm_tot_p50 ...)")
    cat.add_argument("--sentinel-exempt", action="append",
                     help="column whose values >= 9000 are real (e.g. fluxes)")
    cat.add_argument("--stratify-by", default="class")
    cat.add_argument("--crossmatch", default=None, help="second catalogue matched by position")
    cat.add_argument("--crossmatch-id-column", default="id")
    cat.add_argument("--crossmatch-ra-column", default="ra")
    cat.add_argument("--crossmatch-dec-column", default="dec")
    cat.add_argument("--crossmatch-column", action="append", metavar="TARGET=SOURCE")
    cat.add_argument("--prefix", default="xm_", help="prefix of cross-matched columns")
    cat.add_argument("--max-separation", type=float, default=3.0, help="arcsec")
    cat.add_argument("--fits-dir", default=None, help="directory of FITS cutouts")
    cat.add_argument("--fits-pattern", default="{id}.fits")
    cat.add_argument("--bands", nargs="+", default=["r"])
    cat.add_argument("--size", type=int, default=64)
    cat.add_argument("--policy", choices=("strict", "crop"), default="strict")
    cat.add_argument("--bias", type=float, default=0.0, help="soft bias to subtract (fpC: 1000)")
    cat.add_argument("--only-with-images", action="store_true",
                     help="keep only catalogue rows that have a cutout file")
    cat.set_defaults(handler=_catalogue)

    npz = kinds.add_parser("npz", help="the reference implementation's .npz pair")
    common(npz)
    npz.add_argument("catalogue_npz")
    npz.add_argument("images_npz")
    npz.add_argument("--array", action="append", metavar="TARGET=SOURCE",
                     help="catalogue array to keep, renamed (stellar_mass=mass ...)")
    npz.add_argument("--bands", nargs="+", default=["u", "g", "r", "i", "z"])
    npz.set_defaults(handler=_npz)
