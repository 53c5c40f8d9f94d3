"""`galpipe submit`: pipeline runs as Ray jobs on a real two-node Ray cluster on loopback.

The cluster: a head started with the venv's ``ray start --head`` (dashboard on, its own temp
dir and ports) and a second node joining it. Storage is the session's SeaweedFS server and
tracking the session's MLflow server. Only processes this module started are stopped: every
one of them carries a marker variable in its environment, found through /proc; ``ray stop``
is never used because it ends every Ray process on the machine.

Limitation: both nodes run on 127.0.0.1. ``ray start --address`` refuses to add a node while
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and without that setting the GCS and raylets listen
on every interface of the machine (measured with Ray 2.60), even with a loopback
``--node-ip-address``. The second node is therefore started the way
``ray.cluster_utils.Cluster.add_node`` starts one, through ``ray._private.node.Node``, in a
helper process, and nodes are told apart by node id rather than by address.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from galpipe import submit
from galpipe.services import SECRET_KEY

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PIPELINE_TABLES = ("galaxies", "cutouts", "predictions", "neighbours", "local_tests",
                   "causal_edges", "information", "information_summary", "metrics")

# Joins an existing head as a worker node; arguments: GCS address, temp dir, CPUs. The node
# unpacks jobs' working directories into its own folder, as a machine of its own would: each
# node's runtime-env agent replaces the unpacked copy when it first sets a job up, which, in a
# folder shared with the head, would pull files from under the running driver.
JOIN_NODE = """
import sys
from ray._private.node import Node
from ray._private.parameter import RayParams

gcs_address, temp_dir, num_cpus = sys.argv[1], sys.argv[2], float(sys.argv[3])
params = RayParams(gcs_address=gcs_address, node_ip_address="127.0.0.1", num_cpus=num_cpus,
                   object_store_memory=150 * 1024**2, min_worker_port=0, max_worker_port=0,
                   include_log_monitor=False, node_manager_port=0, temp_dir=temp_dir,
                   runtime_env_dir_name="runtime_resources_node2")
params.dashboard_agent_listen_port = None  # a free port, not the head agent's
Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (``NAME=value``): those this module started."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@dataclass
class LocalCluster:
    """A two-node Ray cluster on loopback started by this module."""

    temp_dir: str
    marker: str
    gcs_address: str
    dashboard: str

    def alive_node_ids(self) -> set[str]:
        from ray.util.state import list_nodes

        return {n.node_id for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"}

    def raylet_pids(self) -> list[int]:
        pids = []
        for pid in _marked_pids(self.marker):
            try:
                if Path(f"/proc/{pid}/exe").resolve().name == "raylet":
                    pids.append(pid)
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        pids = _marked_pids(self.marker)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # gcs_server and raylet may ignore SIGTERM for a while; the session is disposable.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _marked_pids(self.marker):
            time.sleep(0.2)
        for pid in _marked_pids(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _cluster_env(marker: str) -> dict[str, str]:
    """This process's environment without storage, tracking or Ray address settings.

    The cluster must not inherit the S3 keys, so the tests can tell that the job's workers got
    them from the job's runtime environment.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_")) and k != "RAY_ADDRESS"}
    name, value = marker.split("=", 1)
    env.update({name: value, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    return env


@pytest.fixture(scope="module")
def ray_cluster():
    # A short temp dir: Ray's unix socket paths must stay under about 100 characters.
    temp_dir = tempfile.mkdtemp(prefix="gp-ray-", dir="/tmp")
    marker = f"GALPIPE_TEST_CLUSTER={temp_dir}"
    gcs_port, dashboard_port = _free_port(), _free_port()
    cluster = LocalCluster(temp_dir, marker, f"127.0.0.1:{gcs_port}",
                           f"http://127.0.0.1:{dashboard_port}")
    env = _cluster_env(marker)
    try:
        subprocess.run(
            [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
             f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={_free_port()}",
             f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=2",
             f"--object-store-memory={256 * 1024**2}", f"--temp-dir={temp_dir}",
             "--disable-usage-stats"],
            env=env, check=True, capture_output=True, text=True, timeout=120,
            start_new_session=True)
        subprocess.run([sys.executable, "-c", JOIN_NODE, cluster.gcs_address, temp_dir, "1"],
                       env=env, check=True, capture_output=True, text=True, timeout=120,
                       start_new_session=True)
        deadline = time.monotonic() + 60
        while len(cluster.alive_node_ids()) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"second node did not join; logs under {temp_dir}")
            time.sleep(0.5)
        yield cluster
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{exc.cmd[:2]} failed:\n{exc.stdout[-2000:]}\n{exc.stderr[-2000:]}")
    finally:
        cluster.stop()


# Without a cluster ---------------------------------------------------------------------------


def test_job_environment_carries_storage_and_tracking_but_never_ray_network_or_auth():
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id",
               "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1",
               "AWS_SESSION_TOKEN": "", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
               "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_USAGE_STATS_ENABLED": "0", "HOME": "/root", "PATH": "/usr/bin"}

    local = submit.job_env_vars("http://127.0.0.1:8265", environ)
    remote = submit.job_env_vars("http://ray-head.example.org:8265", environ)

    storage_and_tracking = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id",
                            "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1",
                            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert remote == storage_and_tracking
    assert local == {**storage_and_tracking, "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.mark.parametrize("address, local", [
    ("http://127.0.0.1:8265", True), ("127.0.0.2:8265", True), ("http://localhost:8265", True),
    ("http://[::1]:8265", True), ("http://10.0.0.5:8265", False),
    ("https://ray.example.org", False),
])
def test_loopback_addresses_are_recognised(address, local):
    assert submit.is_local_address(address) is local


def test_passwords_in_urls_are_masked_in_logged_commands():
    command = "python jobs/run_pipeline.py --tracking-uri https://ann:s3cr3t@mlflow.example.org/"

    assert submit._redacted(command) == \
        "python jobs/run_pipeline.py --tracking-uri https://ann:***@mlflow.example.org/"
    assert submit._redacted("--storage s3://bucket/a:b@c") == "--storage s3://bucket/a:b@c"


def test_pip_requirements_are_the_pinned_dependencies_without_ray():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = submit.pinned_requirements()

    assert [r for r in declared if not r.startswith("ray")] == requirements
    assert all("==" in r for r in requirements)
    assert any(r.startswith("torch==") for r in requirements)


def test_working_dir_size_leaves_out_environments_caches_and_outputs(tmp_path):
    files = {"galpipe/a.py": 100, "configs/x.yaml": 20, "data/sample.parquet": 3000,
             ".venv/lib/big.so": 10_000, ".git/objects/pack": 5000,
             "galpipe/__pycache__/a.cpython-311.pyc": 700, "galpipe/b.pyc": 300,
             "galpipe-data/tables/t.parquet": 9000, "mlflow.db": 400,
             "build/lib/x.py": 50, "galpipe/build/keep.py": 7, "ignored-by-git/x": 999}
    for relative, size in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x" * size)
    (tmp_path / ".gitignore").write_text("# local\nignored-by-git/\n")

    total, largest = submit.working_dir_size(tmp_path)

    # Kept: the code, configs, sample data, a nested (unanchored) build dir and .gitignore.
    assert total == 100 + 20 + 3000 + 7 + len("# local\nignored-by-git/\n")
    assert largest[0].startswith("data/sample.parquet")


def test_oversized_working_dir_is_refused_with_the_largest_files_named(tmp_path):
    with open(tmp_path / "huge.fits", "wb") as handle:
        handle.truncate(submit.MAX_WORKING_DIR_BYTES + 1)  # sparse: no disk used

    with pytest.raises(ValueError, match="huge.fits"):
        submit.runtime_environment("http://127.0.0.1:8265", working_dir=tmp_path)


def test_this_checkout_fits_in_a_job():
    runtime_env = submit.runtime_environment("http://127.0.0.1:8265", pip=True)
    total, _ = submit.working_dir_size(submit.REPO_ROOT)

    assert total < submit.MAX_WORKING_DIR_BYTES
    assert runtime_env["working_dir"] == str(submit.REPO_ROOT)
    assert runtime_env["pip"] == submit.pinned_requirements()


def test_pipeline_entrypoint_uses_paths_the_job_can_see(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "configs")

    argv = submit.pipeline_entrypoint(config_path="tiny.yaml", storage_uri="../galpipe-data",
                                      tracking_uri=None, run_id="r1", python="/opt/py",
                                      overrides=["training.steps=5"])

    assert argv == ["/opt/py", "jobs/run_pipeline.py", "--config", "configs/tiny.yaml",
                    "--storage", str(REPO / "galpipe-data"), "--run-id", "r1",
                    "--set", "training.steps=5"]
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "configs" / "tiny.yaml").read_text())
    with pytest.raises(ValueError, match="outside the galpipe checkout"):
        submit.pipeline_entrypoint(config_path=outside, storage_uri="s3://b/p",
                                   tracking_uri=None, run_id="r1")


def test_submit_without_an_address_exits_with_a_message(monkeypatch, caplog):
    from galpipe.cli import main

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["submit", "--storage", "s3://galpipe/x"]) == 2
    assert "--address is required" in caplog.text


# On the two-node cluster ---------------------------------------------------------------------


def test_job_reaches_every_node_with_code_environment_and_storage(
        ray_cluster, s3_server, s3_uri, caplog):
    from galpipe.contracts import validate
    from galpipe.storage import Storage

    run_id = f"smoke-{uuid.uuid4().hex[:8]}"
    chunks: list[str] = []
    caplog.set_level("DEBUG", logger="galpipe")

    result = submit.submit_job(
        ray_cluster.dashboard,
        [sys.executable, "jobs/cluster_smoke.py", "--storage", s3_uri, "--run-id", run_id,
         "--n-galaxies", "30"],
        run_id=run_id, log_sink=chunks.append)

    assert result.succeeded, result.logs
    assert "SMOKE OK nodes=2 galaxies=30" in "".join(chunks)

    storage = Storage(s3_uri)
    reports = [json.loads(storage.read_bytes(f"smoke/{run_id}/node-{node}.json"))
               for node in ray_cluster.alive_node_ids()]
    forwarded = submit.job_env_vars(ray_cluster.dashboard)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(forwarded)
    for report in reports:
        assert all(report["env_set"][name] for name in forwarded if name in report["env_set"])
        assert report["env_values"]["AWS_ENDPOINT_URL"] == s3_server.endpoint
        # The code came with the job, not from the checkout the cluster was started in.
        assert "runtime_resources" in report["galpipe_file"]
    # The raylets never had the keys: the workers got them from the job's environment.
    assert ray_cluster.raylet_pids()
    for pid in ray_cluster.raylet_pids():
        assert "AWS_SECRET_ACCESS_KEY" not in _environ_of(pid)

    galaxies = storage.read_table("galaxies", f"smoke-{run_id}")
    validate(galaxies, "galaxies")
    assert galaxies["galaxy_id"].to_pylist() == list(range(1, 31))
    assert storage.provenance_of("galaxies", f"smoke-{run_id}").run_id == run_id

    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in result.logs
    assert all(SECRET_KEY not in json.dumps(report) for report in reports)


def test_a_failing_job_is_reported_as_failed(ray_cluster):
    result = submit.submit_job(ray_cluster.dashboard,
                               [sys.executable, "-c", "raise SystemExit(3)"])

    assert result.status == "FAILED"
    assert not result.succeeded
    assert "3" in (result.message or "")


def test_without_waiting_the_job_id_comes_back_and_the_job_runs_on(ray_cluster):
    from ray.job_submission import JobSubmissionClient

    result = submit.submit_job(ray_cluster.dashboard,
                               [sys.executable, "-c", "print('finished on its own')"],
                               wait=False)

    assert result.status in ("PENDING", "RUNNING") and result.logs is None
    client = JobSubmissionClient(ray_cluster.dashboard)
    deadline = time.monotonic() + 120
    while client.get_job_status(result.submission_id).value not in submit.TERMINAL_STATUSES:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert client.get_job_status(result.submission_id).value == "SUCCEEDED"
    assert "finished on its own" in client.get_job_logs(result.submission_id)


def test_interrupt_with_stop_on_interrupt_stops_the_job(ray_cluster):
    from ray.job_submission import JobSubmissionClient

    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "from galpipe.submit import submit_job\n"
        f"r = submit_job({ray_cluster.dashboard!r}, [sys.executable, '-c', "
        "'import time; print(\"sleeping\", flush=True); time.sleep(300)'], "
        "stop_on_interrupt=True, log_sink=sys.stdout.write)\n"
        "print('RESULT', r.submission_id, r.status, r.interrupted, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("sleeping"):
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=120)
    output = "".join(lines) + rest

    result_line = next((line for line in output.splitlines() if line.startswith("RESULT")), None)
    assert result_line is not None, output
    _, submission_id, status, interrupted = result_line.split()
    assert (status, interrupted) == ("STOPPED", "True"), output
    client = JobSubmissionClient(ray_cluster.dashboard)
    assert client.get_job_status(submission_id).value == "STOPPED"


@pytest.mark.skipif(not (REPO / "configs" / "tiny.yaml").exists()
                    or importlib.util.find_spec("galpipe.pipeline") is None,
                    reason="needs configs/tiny.yaml and galpipe.pipeline.run_pipeline")
@pytest.mark.timeout(900)  # the tiny run alone takes minutes on 2 shared cores
def test_galpipe_submit_runs_the_tiny_pipeline_on_the_cluster(
        ray_cluster, s3_uri, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from galpipe import config as config_module
    from galpipe.contracts import load_contract, validate_dataset
    from galpipe.storage import Storage

    run_id = f"tiny-{uuid.uuid4().hex[:8]}"
    output_path = tmp_path / "submit.log"
    with output_path.open("w") as output_file:
        # Every stage runs; 15 steps per model instead of 30 (also checks --set reaches the job).
        process = subprocess.Popen(
            [sys.executable, "-m", "galpipe.cli", "submit", "--address", ray_cluster.dashboard,
             "--config", "configs/tiny.yaml", "--storage", s3_uri,
             "--tracking-uri", mlflow_server.tracking_uri, "--run-id", run_id,
             "--python", sys.executable, "--set", "training.steps=15", "--stop-on-interrupt"],
            cwd=REPO, stdout=output_file, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=820)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            process.wait(60)
            pytest.fail("the pipeline job did not finish within 820 s; last output:\n"
                        + output_path.read_text()[-4000:])
    output = output_path.read_text()

    assert returncode == 0, output[-6000:]
    assert "SUCCEEDED" in output
    assert SECRET_KEY not in output

    storage = Storage(s3_uri)
    assert set(PIPELINE_TABLES) <= set(storage.tables())
    for name in PIPELINE_TABLES:
        assert validate_dataset(storage.dataset(name), name) > 0, name
        if load_contract(name).column_names[0] == "run_id":
            run_ids = storage.read_table(name, columns=["run_id"])["run_id"].unique()
            assert run_ids.to_pylist() == [run_id], name

    experiment = config_module.load(REPO / "configs" / "tiny.yaml").tracking.experiment
    client = MlflowClient(mlflow_server.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id],
                              filter_string=f"tags.`galpipe.run_id` = '{run_id}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.params["training.steps"] == "15"
