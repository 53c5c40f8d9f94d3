"""Storage: URIs in, Arrow filesystems out, atomic table writes with provenance.

Every reader and writer in galpipe goes through :class:`Storage`. A storage root is a local
directory (the embedded default) or ``s3://bucket/prefix``; S3 endpoint and credentials come
from the standard AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``).

Layout under the root::

    tables/<table>/<key>/part-<attempt>-<n>.parquet   data files of one committed output
    tables/<table>/<key>/_COMMITTED.json               manifest, written last
    checkpoints/..., figures/..., runs/...

A table output is identified by ``key`` (the content hash of the stage config and inputs that
produced it). Writes are atomic: data files are written under a fresh attempt id and the
manifest, which lists exactly those files, is written last in a single PUT (S3) or an atomic
rename (local). Readers only read files listed in a manifest, so a killed writer leaves nothing
visible, and a rewrite never mixes files of two attempts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import galpipe
from galpipe.contracts import Contract, ContractError, load_contract, validate

log = logging.getLogger(__name__)

MANIFEST = "_COMMITTED.json"
PROVENANCE_KEY = b"galpipe.provenance"
DEFAULT_ROW_GROUP = 8192
DEFAULT_ROWS_PER_FILE = 500_000


class StorageError(RuntimeError):
    """Storage is unreachable, or a table is missing or damaged."""


UNIQUE_KEYS = {"galaxies": "galaxy_id", "cutouts": "galaxy_id"}
"""Tables whose key column must be unique across every batch of one output (join keys)."""


def _check_part(part: str, what: str) -> str:
    """A table name or key usable as one path segment (no separators, not '.'/'..')."""
    if not part or "/" in part or "\\" in part or part in (".", ".."):
        raise ValueError(f"{what} must be a non-empty name without '/' and not '.' or '..', "
                         f"got {part!r}")
    return part


def code_version() -> str:
    """The galpipe version plus the git commit of the checkout when there is one."""
    root = Path(galpipe.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{galpipe.__version__}+{sha}" if sha else galpipe.__version__
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GALPIPE_CODE_VERSION", galpipe.__version__)


@dataclass
class Provenance:
    """Where a table came from; stored in Parquet metadata and in the table's manifest."""

    run_id: str
    config_hash: str
    code_version: str = field(default_factory=code_version)
    input_uris: list[str] = field(default_factory=list)
    stage: str = ""
    created_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Provenance":
        return cls(**json.loads(text))


_PROVENANCE_FIELDS = {f.name for f in fields(Provenance)}


def _manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a parsed manifest's shape, or None when it is usable."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object, got {type(manifest).__name__}"
    missing = [k for k in ("files", "num_rows", "provenance") if k not in manifest]
    if missing:
        return f"missing entries {missing}"
    files = manifest["files"]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return "'files' must be a list of file names"
    # Names are joined under the output's folder: anything that could leave it is damage.
    bad = [f for f in files if not f.startswith("part-") or "/" in f or "\\" in f or ".." in f]
    if bad:
        return f"'files' lists names outside the output's folder: {bad[:3]}"
    if not isinstance(manifest["num_rows"], int) or manifest["num_rows"] < 0:
        return f"'num_rows' must be a non-negative integer, got {manifest['num_rows']!r}"
    provenance = manifest["provenance"]
    if not isinstance(provenance, dict) or not {"run_id", "config_hash"} <= set(provenance):
        return "'provenance' must be an object with 'run_id' and 'config_hash'"
    return None


@dataclass(frozen=True)
class TableRef:
    """A committed table output: its name, key, files and manifest."""

    name: str
    key: str
    uri: str
    files: tuple[str, ...]
    num_rows: int
    provenance: Provenance


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host or scheme
        kwargs["scheme"] = scheme if host else "https"
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs["access_key"] = key
        kwargs["secret_key"] = secret
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    elif not endpoint:
        kwargs["anonymous"] = False
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """An Arrow filesystem and the path inside it for a local path or ``s3://`` URI."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        return _s3_filesystem(), text[len("s3://"):].rstrip("/")
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"unsupported storage URI '{text}': use a local path or s3://bucket/prefix")
    if text.startswith("file://"):
        text = text[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def polars_storage_options(uri: str) -> dict[str, str] | None:
    """Storage options for polars' object-store readers (None for local paths)."""
    if not str(uri).startswith("s3://"):
        return None
    options = {"aws_region": os.environ.get("AWS_REGION", "us-east-1")}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        options["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            options["aws_allow_http"] = "true"
    for env, opt in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
                     ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(env):
            options[opt] = os.environ[env]
    return options


class Storage:
    """A storage root (local directory or ``s3://bucket/prefix``) holding galpipe tables."""

    def __init__(self, uri: str | os.PathLike):
        self.uri = os.fspath(uri).rstrip("/") or "/"
        self.fs, self.root = resolve(self.uri)

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __reduce__(self):
        # Arrow filesystems carry credentials; rebuild from the URI and the environment instead.
        return (Storage, (self.uri,))

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    # Paths ---------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """A path inside this filesystem under the root."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def uri_of(self, path: str) -> str:
        """The URI of a path of this filesystem (``s3://...`` or an absolute local path)."""
        return f"s3://{path}" if self.is_s3 else path

    def table_path(self, name: str, key: str | None = None) -> str:
        _check_part(name, "table name")
        if key is None:
            return self.path("tables", name)
        return self.path("tables", name, _check_part(key, f"key of table '{name}'"))

    def _unreachable(self, exc: OSError, doing: str) -> StorageError:
        """A StorageError for a filesystem failure, with the settings a user can check."""
        hint = ""
        if self.is_s3:
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "<AWS default>")
            hint = (f" (endpoint {endpoint}; check AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY and that the bucket exists)")
        return StorageError(f"storage {self.uri} is unreachable or refused access (could not "
                            f"{doing}){hint}: {exc}")

    def check_reachable(self) -> None:
        """Raise StorageError with an actionable message when the root cannot be used."""
        try:
            self.fs.create_dir(self.root, recursive=True)
            self.fs.get_file_info(self.root)
        except OSError as exc:
            raise self._unreachable(exc, "be reached") from exc

    # Small files --------------------------------------------------------------------------

    def write_bytes(self, relative: str, data: bytes) -> str:
        """Write a small file atomically (rename locally, single PUT on S3); return its URI."""
        target = self.path(relative)
        parent = target.rsplit("/", 1)[0]
        try:
            self.fs.create_dir(parent, recursive=True)
            if self.is_s3:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
            else:
                tmp = f"{target}.tmp-{uuid.uuid4().hex}"
                try:
                    with open(tmp, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
        except OSError as exc:
            raise self._unreachable(exc, f"write {self.uri_of(target)}") from exc
        return self.uri_of(target)

    def read_bytes(self, relative: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(relative)) as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._unreachable(exc, f"read {self.uri_of(self.path(relative))}") from exc

    def exists(self, relative: str) -> bool:
        try:
            return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound
        except OSError as exc:
            raise self._unreachable(exc, f"look up {self.uri_of(self.path(relative))}") from exc

    def upload_file(self, local_path: str | os.PathLike, relative: str) -> str:
        """Copy a local file (e.g. a figure) under the root; return its URI."""
        return self.write_bytes(relative, Path(local_path).read_bytes())

    # Tables -------------------------------------------------------------------------------

    def _manifest(self, name: str, key: str) -> dict[str, Any] | None:
        """The parsed manifest of one output (None when there is none), checked for shape."""
        path = f"{self.table_path(name, key)}/{MANIFEST}"
        try:
            with self.fs.open_input_stream(path) as handle:
                manifest = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StorageError(f"damaged manifest {self.uri_of(path)}: {exc}; delete the "
                               f"folder {self.uri_of(self.table_path(name, key))} to recompute "
                               f"it") from exc
        except OSError as exc:
            raise self._unreachable(exc, f"read manifest {self.uri_of(path)}") from exc
        problem = _manifest_problem(manifest)
        if problem:
            raise StorageError(f"damaged manifest {self.uri_of(path)}: {problem}; delete the "
                               f"folder {self.uri_of(self.table_path(name, key))} to recompute "
                               f"it")
        return manifest

    def has_table(self, name: str, key: str) -> bool:
        """True when table ``name`` has a committed output under ``key``."""
        return self._manifest(name, key) is not None

    def table(self, name: str, key: str) -> TableRef:
        """The committed output ``key`` of table ``name``."""
        manifest = self._manifest(name, key)
        if manifest is None:
            raise StorageError(
                f"table '{name}' has no committed output '{key}' under {self.uri}"
            )
        base = self.table_path(name, key)
        return TableRef(
            name=name,
            key=key,
            uri=self.uri_of(base),
            files=tuple(f"{base}/{f}" for f in manifest["files"]),
            num_rows=int(manifest["num_rows"]),
            provenance=Provenance(**{k: v for k, v in manifest["provenance"].items()
                                     if k in _PROVENANCE_FIELDS}),
        )

    def keys(self, name: str) -> list[str]:
        """Committed keys of table ``name``, oldest first."""
        selector = pafs.FileSelector(self.table_path(name), allow_not_found=True)
        found = []
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise self._unreachable(exc, f"list the outputs of table '{name}'") from exc
        for info in infos:
            if info.type == pafs.FileType.Directory:
                manifest = self._manifest(name, info.base_name)
                if manifest is not None:
                    found.append((str(manifest["provenance"].get("created_at", "")),
                                  info.base_name))
        return [key for _, key in sorted(found)]

    def tables(self) -> list[str]:
        """Names of the tables present under this root."""
        selector = pafs.FileSelector(self.path("tables"), allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise self._unreachable(exc, "list its tables") from exc
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def write_table(
        self,
        name: str,
        data: pa.Table | Iterable[pa.RecordBatch],
        *,
        key: str,
        provenance: Provenance,
        contract: Contract | str | None = None,
        row_group_size: int = DEFAULT_ROW_GROUP,
        rows_per_file: int = DEFAULT_ROWS_PER_FILE,
        extra_metadata: dict[bytes, bytes] | None = None,
    ) -> TableRef:
        """Write table ``name`` under ``key`` atomically, validating each batch on the way.

        ``data`` is a table or a stream of record batches (memory stays bounded by one batch
        plus the Parquet writer's row group). Every batch is checked against the contract
        (default: the contract named ``name``); a violation aborts the write and leaves the
        previous committed output, if any, untouched.
        """
        if isinstance(data, pa.Table):
            batches = data.to_batches(max_chunksize=row_group_size) or \
                [pa.RecordBatch.from_pylist([], schema=data.schema)]
        else:
            batches = data
        with self.table_writer(name, key=key, provenance=provenance, contract=contract,
                               row_group_size=row_group_size, rows_per_file=rows_per_file,
                               extra_metadata=extra_metadata) as writer:
            for batch in batches:
                writer.write(batch)
        return writer.ref

    def table_writer(self, name: str, *, key: str, provenance: Provenance,
                     contract: Contract | str | None = None, **options: Any) -> "TableWriter":
        """A streaming writer for one table output; commits on a clean exit of its ``with``."""
        if contract is None:
            contract = load_contract(name)
        elif isinstance(contract, str):
            contract = load_contract(contract)
        return TableWriter(self, name, key, provenance, contract, **options)

    def _remove_stale(self, base: str, keep: set[str]) -> None:
        """Delete data files of earlier, superseded or killed attempts under one key."""
        selector = pafs.FileSelector(base, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError:
            log.warning("could not list %s to remove stale files", base)
            return
        for info in infos:
            if info.base_name.startswith("part-") and info.base_name not in keep:
                try:
                    self.fs.delete_file(info.path)
                except OSError:
                    log.warning("could not remove stale file %s", info.path)

    def delete_table(self, name: str, key: str) -> None:
        """Remove one committed output (manifest first, so it disappears atomically)."""
        base = self.table_path(name, key)
        try:
            try:
                self.fs.delete_file(f"{base}/{MANIFEST}")
            except FileNotFoundError:
                pass
            self.fs.delete_dir_contents(base, missing_dir_ok=True)
        except OSError as exc:
            raise self._unreachable(exc, f"delete table '{name}' output '{key}'") from exc

    def dataset(self, name: str, keys: str | Iterable[str] | None = None) -> pads.Dataset:
        """A pyarrow dataset over committed outputs of ``name`` (all keys when None)."""
        if keys is None:
            keys = self.keys(name)
        elif isinstance(keys, str):
            keys = [keys]
        files: list[str] = []
        schema = None
        for key in keys:
            ref = self.table(name, key)
            files.extend(ref.files)
        if not files:
            raise StorageError(f"table '{name}' has no committed output under {self.uri}")
        try:
            if schema is None:
                schema = pq.read_schema(files[0], filesystem=self.fs)
            return pads.dataset(files, schema=schema, filesystem=self.fs, format="parquet")
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read table '{name}' under {self.uri}: {exc}") from exc

    def read_table(
        self, name: str, key: str | Iterable[str] | None = None, *,
        columns: list[str] | None = None, filter: Any = None,
    ) -> pa.Table:
        """Read committed output(s) of table ``name`` into memory (small tables only)."""
        dataset = self.dataset(name, key)
        try:
            return dataset.to_table(columns=columns, filter=filter)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read table '{name}' under {self.uri}: {exc}") from exc

    def iter_batches(
        self, name: str, key: str | Iterable[str] | None = None, *,
        columns: list[str] | None = None, batch_size: int = DEFAULT_ROW_GROUP,
    ) -> Iterator[pa.RecordBatch]:
        """Stream committed output(s) of ``name`` batch by batch (memory bounded by a batch)."""
        dataset = self.dataset(name, key)
        try:
            yield from dataset.to_batches(columns=columns, batch_size=batch_size)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read table '{name}' under {self.uri}: {exc}") from exc

    @contextmanager
    def local_dir(self, relative: str) -> Iterator[Path]:
        """A local scratch directory whose files are uploaded under ``relative`` on success."""
        import shutil
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="galpipe-"))
        try:
            yield scratch
            for path in sorted(scratch.rglob("*")):
                if path.is_file():
                    self.upload_file(path, f"{relative}/{path.relative_to(scratch).as_posix()}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def provenance_of(self, name: str, key: str) -> Provenance:
        """Provenance stored in the Parquet metadata of a committed output."""
        ref = self.table(name, key)
        if not ref.files:
            return ref.provenance
        try:
            schema = pq.read_schema(ref.files[0], filesystem=self.fs)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read table '{name}' output '{key}' under {self.uri}: "
                               f"{exc}") from exc
        raw = (schema.metadata or {}).get(PROVENANCE_KEY)
        if raw is None:
            raise StorageError(f"{self.uri_of(ref.files[0])} has no galpipe provenance "
                               f"metadata; was it written by galpipe?")
        return Provenance.from_json(raw)


class TableWriter:
    """Writes one table output batch by batch; the manifest is written only by :meth:`commit`.

    Use as a context manager: a clean exit commits, an exception deletes this attempt's files
    and leaves any earlier committed output untouched.
    """

    def __init__(self, storage: Storage, name: str, key: str, provenance: Provenance,
                 contract: Contract, *, row_group_size: int = DEFAULT_ROW_GROUP,
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                 extra_metadata: dict[bytes, bytes] | None = None):
        self.storage = storage
        self.name = name
        self.key = key
        self.provenance = provenance
        self.provenance.stage = provenance.stage or name
        self.contract = contract
        self.row_group_size = row_group_size
        self.rows_per_file = rows_per_file
        self.extra_metadata = extra_metadata or {}
        self.base = storage.table_path(name, key)
        self.attempt = uuid.uuid4().hex[:10]
        self.files: list[str] = []
        self.num_rows = 0
        self.ref: TableRef | None = None
        self._schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None
        self._stream = None
        self._rows_in_file = 0
        self._unique_key = UNIQUE_KEYS.get(contract.name)
        self._seen_keys: list[Any] = []

    def __enter__(self) -> "TableWriter":
        try:
            self.storage.fs.create_dir(self.base, recursive=True)
        except OSError as exc:
            raise self.storage._unreachable(exc, f"create {self.storage.uri_of(self.base)}") \
                from exc
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        """Validate one batch against the contract and append it."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        table = validate(self.contract.conform(table), self.contract)
        if self._unique_key is not None:
            self._check_unique(table.column(self._unique_key))
        if self._schema is None:
            metadata = dict(table.schema.metadata or {})
            metadata[PROVENANCE_KEY] = self.provenance.to_json().encode()
            metadata[b"galpipe.contract"] = \
                f"{self.contract.name}:v{self.contract.version}".encode()
            metadata.update(self.extra_metadata)
            self._schema = table.schema.with_metadata(metadata)
        if table.schema != self._schema:
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise ValueError(f"table '{self.name}': a batch's schema differs from the "
                                 f"first batch's: {exc}") from exc
        try:
            if self._writer is None or self._rows_in_file >= self.rows_per_file:
                self._close_file()
                filename = f"part-{self.attempt}-{len(self.files):05d}.parquet"
                self._stream = self.storage.fs.open_output_stream(f"{self.base}/{filename}")
                self.files.append(filename)
                self._writer = pq.ParquetWriter(self._stream, self._schema, compression="zstd")
                self._rows_in_file = 0
            self._writer.write_table(table, row_group_size=self.row_group_size)
        except OSError as exc:
            raise self.storage._unreachable(
                exc, f"write table '{self.name}' output '{self.key}'") from exc
        self._rows_in_file += table.num_rows
        self.num_rows += table.num_rows

    def _check_unique(self, column: pa.ChunkedArray) -> None:
        """Raise ContractError when a key value repeats within this output (all batches so far).

        Keeps every key seen (8 bytes per row for int64 ids), the price of catching a duplicate
        before it is committed rather than at a join downstream.
        """
        import numpy as np

        values = column.to_numpy(zero_copy_only=False)
        previous = np.concatenate(self._seen_keys) if self._seen_keys else values[:0]
        unique, counts = np.unique(values, return_counts=True)
        repeated = unique[counts > 1]
        again = unique[np.isin(unique, previous)]
        duplicates = np.union1d(repeated, again)
        if len(duplicates):
            rows = np.flatnonzero(np.isin(values, duplicates))
            raise ContractError(self.name, [
                f"column '{self._unique_key}': duplicate values {duplicates[:5].tolist()} "
                f"(rows {rows[:5].tolist()} of batch starting at row {self.num_rows}); "
                f"each {self._unique_key} may appear once per table"])
        self._seen_keys = [np.concatenate([previous, unique])]

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None

    def commit(self) -> TableRef:
        """Close the data files and write the manifest that makes them visible."""
        if self._writer is None and not self.files:
            if self._schema is None:
                raise ValueError(f"no data to write for table '{self.name}'")
        try:
            self._close_file()
        except OSError as exc:
            raise self.storage._unreachable(
                exc, f"write table '{self.name}' output '{self.key}'") from exc
        self._check_files_present()
        manifest = {
            "table": self.name,
            "key": self.key,
            "files": self.files,
            "num_rows": self.num_rows,
            "contract": f"{self.contract.name}:v{self.contract.version}",
            "provenance": asdict(self.provenance),
        }
        self.storage.write_bytes(f"tables/{self.name}/{self.key}/{MANIFEST}",
                                 json.dumps(manifest, indent=1).encode())
        # A concurrent writer of the same key (a retried task whose first attempt still runs)
        # may have committed after us: clean up against whichever manifest won, never ours.
        current = self.storage._manifest(self.name, self.key)
        keep = set(current["files"]) if current else set(self.files)
        self.storage._remove_stale(self.base, keep=keep)
        log.info("wrote table %s/%s: %d rows in %d file(s)", self.name, self.key,
                 self.num_rows, len(self.files))
        self.ref = self.storage.table(self.name, self.key)
        return self.ref

    def _check_files_present(self) -> None:
        """Refuse to commit when a data file vanished (a concurrent writer cleaned it up)."""
        for filename in self.files:
            path = f"{self.base}/{filename}"
            try:
                found = self.storage.fs.get_file_info(path).type == pafs.FileType.File
            except OSError as exc:
                raise self.storage._unreachable(exc, f"check {path}") from exc
            if not found:
                raise StorageError(
                    f"table '{self.name}' output '{self.key}': data file {filename} disappeared "
                    f"before commit (another writer of the same key committed meanwhile); "
                    f"this attempt is discarded, the other output stays")

    def abort(self) -> None:
        """Delete this attempt's files; earlier committed output stays as it was."""
        try:
            self._close_file()
        except Exception:  # the error that caused the abort matters more than a failed close
            self._writer = self._stream = None
        for filename in self.files:
            try:
                self.storage.fs.delete_file(f"{self.base}/{filename}")
            except OSError:
                pass
