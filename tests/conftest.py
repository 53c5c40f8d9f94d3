"""Shared fixtures: one in-process Ray runtime per test session, kept on loopback."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU in-process Ray runtime shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=256 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 with buckets 'galpipe' and 'mlflow-artifacts'.

    Sets AWS_ENDPOINT_URL, keys and region in this process's environment for the session.
    """
    from galpipe.services import SeaweedFS

    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), port=_free_port()) as server:
        old = {k: os.environ.get(k) for k in server.client_env()}
        os.environ.update(server.client_env())
        yield server
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_uri(s3_server, request):
    """A fresh s3:// storage prefix per test on the session's SeaweedFS server."""
    import uuid

    return f"s3://galpipe/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and artifacts on SeaweedFS."""
    from galpipe.services import MLflowServer

    root = tmp_path_factory.mktemp("mlflow")
    with MLflowServer(root, port=_free_port(), s3=s3_server) as server:
        yield server
