"""Run the pipeline on a Ray cluster through the Ray Jobs API: ``galpipe submit``.

The job's working directory is this galpipe checkout (code, configs, schemas, bundled sample),
uploaded by Ray without the virtual environment, git history, caches and local outputs. The
entrypoint is ``<python> jobs/run_pipeline.py --config ... --storage ...``; the job's driver
connects to the cluster through the ``RAY_ADDRESS`` that Ray Jobs sets for it.

Workers of a cluster do not inherit the submitting shell's environment, so the storage and
MLflow settings (``AWS_*``, ``MLFLOW_*``) are copied into the job's runtime environment, which
reaches the driver and every task and actor on every node. Their values are never logged.

Which interpreter runs the entrypoint (``--python``): on a cluster built from an image or a
setup script that installs galpipe (``cluster/``), plain ``python`` is right. On a cluster
started with ``ray start`` on this machine, ``python`` is whatever the PATH of the shell that
ran ``ray start`` resolves to, which need not be the virtual environment holding galpipe's
dependencies: pass the venv's absolute interpreter, e.g. ``--python /work/main/.venv/bin/python``.
With ``--pip`` Ray builds a fresh virtual environment per job and puts it first on the PATH, so
leave ``--python`` at ``python`` then.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import ipaddress
import logging
import os
import re
import shlex
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PIPELINE_ENTRYPOINT = "jobs/run_pipeline.py"
SMOKE_ENTRYPOINT = "jobs/cluster_smoke.py"

# Gitignore-style patterns (relative to the checkout) that never travel with a job. Ray also
# applies the checkout's .gitignore; this list keeps a checkout without one small too.
WORKING_DIR_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info",
    "galpipe-data", "mlruns", "mlflow.db", "/build", "/dist", "*.ckpt", "*.pt",
)

# Ray refuses packages near its 512 MiB gRPC limit; anything near this size is data that
# belongs in object storage, not in the code shipped with a job.
MAX_WORKING_DIR_BYTES = 100 * 1024**2

# Settings the job's driver and workers need for storage and tracking.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
    "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_DISABLE_TELEMETRY",
)

# Quiet-log Ray settings copied to a cluster on a loopback address. Network and auth settings
# are never copied; a job's processes inherit them from the cluster, which knows them best:
# RAY_AUTH_MODE=disabled would break a remote token-auth cluster reached through an SSH tunnel
# on 127.0.0.1, and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes a driver take 127.0.0.1 as its
# node address even where its node runs on another address.
LOCAL_RAY_ENV = ("RAY_USAGE_STATS_ENABLED", "RAY_DATA_DISABLE_PROGRESS_BARS")

# Packages that must come from the cluster itself, never from a job's pip environment.
CLUSTER_PROVIDED = ("ray",)

TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class JobResult:
    """The outcome of a submitted Ray job.

    ``status`` is Ray's job status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); it is
    terminal unless the caller did not wait or stopped following (``interrupted``).
    ``logs`` holds the job's whole driver output when the caller waited for the end.
    """

    submission_id: str
    address: str
    status: str
    run_id: str | None = None
    message: str | None = None
    logs: str | None = None
    interrupted: bool = False

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


# Runtime environment ------------------------------------------------------------------------


def is_local_address(address: str) -> bool:
    """True when a dashboard address (``http://host:port`` or ``host:port``) is on loopback."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def job_env_vars(address: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The storage, MLflow and (for a cluster on this machine) Ray settings a job needs.

    Taken from ``environ`` (default: this process's environment); unset or empty variables
    are left out so the cluster's own settings (e.g. an instance profile) apply.
    """
    environ = os.environ if environ is None else environ
    names = FORWARDED_ENV + (LOCAL_RAY_ENV if is_local_address(address) else ())
    return {name: environ[name] for name in names if environ.get(name)}


def pinned_requirements(pyproject: str | os.PathLike = REPO_ROOT / "pyproject.toml") -> list[str]:
    """galpipe's pinned runtime dependencies from ``pyproject.toml``, minus Ray itself.

    Ray is left out because a job must use the Ray its cluster runs; installing another copy
    into the job's environment would mix versions.
    """
    path = Path(pyproject)
    try:
        with path.open("rb") as handle:
            project = tomllib.load(handle)["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read [project].dependencies from {path}: {exc}") from exc
    requirements = []
    for requirement in project.get("dependencies", []):
        name = requirement.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip()
        if name.lower() not in CLUSTER_PROVIDED:
            requirements.append(requirement)
    return requirements


def _excluded(relative: str, patterns: list[str]) -> bool:
    """Whether a checkout-relative path matches a gitignore-style pattern (simplified)."""
    parts = relative.split("/")
    for pattern in patterns:
        anchored = pattern.startswith("/")
        pattern = pattern.strip("/")
        if not pattern:
            continue
        if anchored:
            if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(parts[0], pattern):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def working_dir_size(root: str | os.PathLike = REPO_ROOT,
                     excludes: tuple[str, ...] = WORKING_DIR_EXCLUDES) -> tuple[int, list[str]]:
    """Bytes of the files a job would upload from ``root``, and the five largest files.

    An upper estimate: ``excludes`` and the patterns of the root ``.gitignore`` are applied
    with shell-style matching per path component, which covers the simple patterns galpipe
    uses; Ray's exact gitignore rules can only exclude more.
    """
    root = Path(root)
    patterns = list(excludes)
    gitignore = root / ".gitignore"
    if gitignore.is_file():
        patterns += [line.strip() for line in gitignore.read_text().splitlines()
                     if line.strip() and not line.startswith(("#", "!"))]
    total = 0
    sizes: list[tuple[int, str]] = []
    for directory, subdirs, files in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else f"{base}/"
        subdirs[:] = [d for d in subdirs if not _excluded(prefix + d, patterns)]
        for name in files:
            relative = prefix + name
            if _excluded(relative, patterns):
                continue
            try:
                size = (Path(directory) / name).stat().st_size
            except OSError:
                continue
            total += size
            sizes.append((size, relative))
    largest = [f"{path} ({size / 1024**2:.1f} MiB)" for size, path in sorted(sizes)[-5:][::-1]]
    return total, largest


def runtime_environment(address: str, *, pip: bool = False,
                        environ: Mapping[str, str] | None = None,
                        working_dir: str | os.PathLike = REPO_ROOT) -> dict[str, Any]:
    """The Ray runtime environment of a galpipe job.

    ``working_dir`` is the galpipe checkout (without :data:`WORKING_DIR_EXCLUDES`);
    ``env_vars`` from :func:`job_env_vars`; with ``pip`` also the pinned dependencies, for a
    cluster that does not have them installed. Raises ValueError when the checkout holds more
    than :data:`MAX_WORKING_DIR_BYTES` of files.
    """
    size, largest = working_dir_size(working_dir)
    if size > MAX_WORKING_DIR_BYTES:
        raise ValueError(
            f"the job's working directory {working_dir} holds {size / 1024**2:.0f} MiB of "
            f"files (limit {MAX_WORKING_DIR_BYTES // 1024**2} MiB); move data to object "
            f"storage or list it in .gitignore. Largest: {', '.join(largest)}")
    log.debug("working directory %s: about %.1f MiB to upload", working_dir, size / 1024**2)
    env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": list(WORKING_DIR_EXCLUDES),
        "env_vars": job_env_vars(address, environ),
    }
    if pip:
        env["pip"] = pinned_requirements(Path(working_dir) / "pyproject.toml")
    return env


# Submitting and following -------------------------------------------------------------------


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise RuntimeError(
            f"cannot reach the Ray Jobs API at {address}: {exc}. Pass the dashboard address "
            "(http://<head>:8265), not the GCS address (<head>:6379); for a token-auth "
            "cluster set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN") from exc


def _redacted(command: str) -> str:
    """``command`` with passwords in URLs (``scheme://user:password@host``) masked."""
    return re.sub(r"(://[^/\s:@]+):[^/\s@]+@", r"\1:***@", command)


def _status(client, submission_id: str) -> str:
    return client.get_job_status(submission_id).value


def _wait_terminal(client, submission_id: str, poll_s: float,
                   deadline_s: float | None = None) -> str:
    start = time.monotonic()
    while True:
        status = _status(client, submission_id)
        if status in TERMINAL_STATUSES:
            return status
        if deadline_s is not None and time.monotonic() - start > deadline_s:
            return status
        time.sleep(poll_s)


def _tail_logs(client, submission_id: str, sink: Callable[[str], None]) -> None:
    """Stream the job's logs into ``sink`` until the job ends (websocket, then polling)."""

    async def stream() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            sink(chunk)

    import aiohttp

    try:
        asyncio.run(stream())
        return
    except (RuntimeError, OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        # Proxies in front of a dashboard often drop websockets; plain polling still works.
        log.warning("log streaming failed (%s); polling the job's logs instead", exc)
    shown = 0
    while True:
        status = _status(client, submission_id)
        logs = client.get_job_logs(submission_id)
        if len(logs) > shown:
            sink(logs[shown:])
            shown = len(logs)
        if status in TERMINAL_STATUSES:
            return
        time.sleep(1.0)


def submit_job(address: str, entrypoint: list[str], *, wait: bool = True, pip: bool = False,
               run_id: str | None = None, submission_id: str | None = None,
               metadata: Mapping[str, str] | None = None,
               log_sink: Callable[[str], None] | None = None,
               stop_on_interrupt: bool = False, poll_s: float = 1.0) -> JobResult:
    """Submit ``entrypoint`` (argv, run from the checkout's root) as a Ray job at ``address``.

    ``address`` is the Ray dashboard's URL (``http://<head>:8265``). With ``wait`` the call
    returns once the job has ended, streaming its logs into ``log_sink`` when given. Ctrl-C
    while waiting stops following (and, with ``stop_on_interrupt``, stops the job); the
    result then has ``interrupted`` set.
    """
    runtime_env = runtime_environment(address, pip=pip)
    client = _client(address)
    submission_id = submission_id or f"galpipe-{uuid.uuid4().hex[:12]}"
    command = shlex.join(entrypoint)
    submission_id = client.submit_job(
        entrypoint=command, submission_id=submission_id, runtime_env=runtime_env,
        metadata={k: str(v) for k, v in (metadata or {}).items()},
    )
    log.info("submitted job %s to %s: %s", submission_id, address, _redacted(command))
    log.info("job environment carries %s (values not shown)",
             ", ".join(sorted(runtime_env["env_vars"])) or "no variables")
    if not wait:
        log.info("not waiting; follow with: ray job logs --follow --address %s %s",
                 address, submission_id)
        return JobResult(submission_id, address, _status(client, submission_id), run_id)

    try:
        if log_sink is not None:
            _tail_logs(client, submission_id, log_sink)
        status = _wait_terminal(client, submission_id, poll_s)
    except KeyboardInterrupt:
        status = _status(client, submission_id)
        if stop_on_interrupt and status not in TERMINAL_STATUSES:
            log.warning("interrupted: stopping job %s", submission_id)
            client.stop_job(submission_id)
            status = _wait_terminal(client, submission_id, poll_s, deadline_s=60)
        else:
            log.warning("interrupted: job %s keeps running; stop it with: ray job stop "
                        "--address %s %s", submission_id, address, submission_id)
        return JobResult(submission_id, address, status, run_id, interrupted=True)

    info = client.get_job_info(submission_id)
    return JobResult(submission_id, address, status, run_id, message=info.message,
                     logs=client.get_job_logs(submission_id))


def pipeline_entrypoint(*, config_path: str | os.PathLike | None, storage_uri: str,
                        tracking_uri: str | None, run_id: str, python: str = "python",
                        overrides: list[str] | None = None) -> list[str]:
    """The argv of a pipeline job, with paths as the job will see them.

    ``config_path`` must lie inside the checkout (it travels with the working directory) and
    is passed relative to it; a local ``storage_uri`` is made absolute because the job runs
    in its own copy of the checkout.
    """
    argv = [python, PIPELINE_ENTRYPOINT]
    if config_path is not None:
        config_file = Path(config_path).expanduser().resolve()
        if not config_file.is_file():
            raise FileNotFoundError(f"config file {config_path} does not exist")
        try:
            relative = config_file.relative_to(REPO_ROOT)
        except ValueError:
            raise ValueError(
                f"config file {config_file} lies outside the galpipe checkout {REPO_ROOT}, "
                "which is what a job receives; copy it under configs/") from None
        argv += ["--config", relative.as_posix()]
    if not storage_uri.startswith("s3://"):
        storage_uri = str(Path(storage_uri).expanduser().resolve())
    argv += ["--storage", storage_uri, "--run-id", run_id]
    if tracking_uri:
        argv += ["--tracking-uri", tracking_uri]
    for pair in overrides or []:
        argv += ["--set", pair]
    return argv


def smoke_entrypoint(*, storage_uri: str, run_id: str | None = None,
                     python: str = "python") -> list[str]:
    """The argv of a cluster check job (``jobs/cluster_smoke.py``)."""
    if not storage_uri.startswith("s3://"):
        storage_uri = str(Path(storage_uri).expanduser().resolve())
    argv = [python, SMOKE_ENTRYPOINT, "--storage", storage_uri]
    return argv + ["--run-id", run_id] if run_id else argv


def submit_pipeline(address: str, *, config_path: str | os.PathLike | None = None,
                    storage_uri: str, tracking_uri: str | None = None,
                    run_id: str | None = None, wait: bool = True, pip: bool = False,
                    python: str = "python", overrides: list[str] | None = None,
                    log_sink: Callable[[str], None] | None = None,
                    stop_on_interrupt: bool = False) -> JobResult:
    """Submit a whole pipeline run (``jobs/run_pipeline.py``) to the Ray cluster at ``address``.

    The config is validated here first, so a typo fails in a second rather than on the
    cluster. ``run_id`` defaults to a fresh one, chosen here so it is known before the job
    starts: it names the job (``galpipe-<run_id>-<suffix>``), the tables' ``run_id`` column
    and the MLflow parent run's ``galpipe.run_id`` tag.
    """
    from galpipe import config as config_module
    from galpipe.commands import parse_overrides
    from galpipe.pipeline.core import new_run_id

    config = config_module.load(config_path, overrides=parse_overrides(overrides or []))
    run_id = run_id or new_run_id()
    if not storage_uri.startswith("s3://") and not is_local_address(address):
        log.warning("storage %s is a local path but the cluster at %s is remote: every node "
                    "would write to its own disk; use s3://bucket/prefix", storage_uri, address)
    argv = pipeline_entrypoint(config_path=config.source_path, storage_uri=storage_uri,
                               tracking_uri=tracking_uri, run_id=run_id, python=python,
                               overrides=overrides)
    if pip and python != "python":
        log.warning("--pip builds the job's own environment; --python %s bypasses it", python)
    metadata = {"galpipe.run_id": run_id, "galpipe.survey": config.survey.name,
                "galpipe.storage": argv[argv.index("--storage") + 1]}
    return submit_job(address, argv, wait=wait, pip=pip, run_id=run_id,
                      submission_id=f"galpipe-{run_id}-{uuid.uuid4().hex[:6]}",
                      metadata=metadata, log_sink=log_sink,
                      stop_on_interrupt=stop_on_interrupt)


# Command line -------------------------------------------------------------------------------


def _write_stdout(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _submit_command(args: argparse.Namespace) -> int:
    if not args.address:
        raise ValueError("--address is required (the Ray dashboard, e.g. http://127.0.0.1:8265)"
                         " unless RAY_API_SERVER_ADDRESS is set")
    if args.smoke:
        argv = smoke_entrypoint(storage_uri=args.storage, run_id=args.run_id,
                                python=args.python)
        result = submit_job(args.address, argv, wait=not args.no_wait, pip=args.pip,
                            run_id=args.run_id, log_sink=_write_stdout,
                            stop_on_interrupt=args.stop_on_interrupt)
    else:
        result = submit_pipeline(
            args.address, config_path=args.config, storage_uri=args.storage,
            tracking_uri=args.tracking_uri, run_id=args.run_id, wait=not args.no_wait,
            pip=args.pip, python=args.python, overrides=args.set,
            log_sink=_write_stdout, stop_on_interrupt=args.stop_on_interrupt)
    if result.interrupted:
        return 130
    if args.no_wait:
        _write_stdout(f"{result.submission_id}\n")
        return 0
    if result.succeeded:
        log.info("job %s (run %s) SUCCEEDED", result.submission_id, result.run_id)
        return 0
    # Ray's message repeats the end of the logs already shown; its first line says enough.
    reason = (result.message or "").strip().splitlines()[:1] or ["see the job's logs above"]
    log.error("job %s (run %s) %s: %s", result.submission_id, result.run_id, result.status,
              reason[0])
    return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galpipe submit`` to the command line."""
    parser = subparsers.add_parser(
        "submit", help="run the pipeline on a Ray cluster as a Ray job",
        description="Submit a pipeline run to a Ray cluster through the Ray Jobs API, follow "
                    "its logs, and exit 0 only if the job succeeded.")
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="Ray dashboard URL, e.g. http://127.0.0.1:8265 "
                             "(default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--config", default=None,
                        help="config YAML inside this checkout (default: configs/ngc_ic.yaml)")
    parser.add_argument("--storage", default=os.environ.get("GALPIPE_STORAGE", "./galpipe-data"),
                        help="storage root the job writes to; s3://bucket/prefix for a remote "
                             "cluster (default: $GALPIPE_STORAGE or ./galpipe-data)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for the job (default: $MLFLOW_TRACKING_URI "
                             "as forwarded to the job)")
    parser.add_argument("--run-id", default=None, help="run id (default: time + random)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value in the job, e.g. --set training.use_gpu=true")
    parser.add_argument("--no-wait", action="store_true",
                        help="print the job id and return once submitted")
    parser.add_argument("--pip", action="store_true",
                        help="install galpipe's pinned dependencies into the job's own "
                             "environment (for clusters without them)")
    parser.add_argument("--python", default="python",
                        help="interpreter for the entrypoint (default: python; for a `ray start` "
                             "cluster on this machine give the venv's absolute interpreter)")
    parser.add_argument("--stop-on-interrupt", action="store_true",
                        help="on Ctrl-C stop the job too, not just stop following it")
    parser.add_argument("--smoke", action="store_true",
                        help=f"submit {SMOKE_ENTRYPOINT} instead of the pipeline: a seconds-long "
                             "check that every node has the code, the environment and write "
                             "access to --storage")
    parser.set_defaults(handler=_submit_command)
