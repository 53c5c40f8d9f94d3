"""cluster/: the AWS launcher config and KubeRay manifests are well formed, agree with each
other and with the pinned Ray, and every command they (and cluster/README.md) name runs a real
entrypoint that accepts the arguments given."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
GPU_INSTANCE_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5")


def _load(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


def _ray_pin() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==")[1] for d in dependencies if re.match(r"ray(\[.*\])?==", d)]
    assert len(pins) == 1, "pyproject.toml must pin ray exactly once"
    return pins[0]


def _ray_cluster_specs() -> dict[str, dict]:
    """The RayCluster spec of each KubeRay manifest (a RayJob's rayClusterSpec)."""
    cluster = _load(KUBERAY / "raycluster.yaml")
    job = _load(KUBERAY / "rayjob.yaml")
    return {"raycluster.yaml": cluster["spec"], "rayjob.yaml": job["spec"]["rayClusterSpec"]}


def _containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, group in groups for c in group["template"]["spec"]["containers"]]


def _commands() -> list[tuple[str, str]]:
    """Shell commands written in cluster/: README code blocks, YAML and Dockerfile comments,
    and the RayJob entrypoints, with backslash continuations joined."""
    found: list[tuple[str, str]] = []
    for path in sorted(CLUSTER.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".md":
            lines = [line for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
                     for line in block.splitlines()]
        else:
            lines = [line.lstrip("#").strip() for line in text.splitlines()
                     if line.lstrip().startswith("#")]
        joined = "\n".join(lines).replace("\\\n", " ")
        found += [(path.name, line.strip()) for line in joined.splitlines() if line.strip()]
    for path in sorted(KUBERAY.glob("*.yaml")):
        manifest = _load(path)
        if manifest.get("kind") == "RayJob":
            found.append((path.name, manifest["spec"]["entrypoint"]))
    return found


def _job_script_invocations() -> list[tuple[str, Path, list[str]]]:
    """(where, script, arguments) for every command that runs a script under jobs/."""
    invocations = []
    for where, command in _commands():
        if not re.search(r"jobs/\w+\.py", command):
            continue
        tokens = shlex.split(command, comments=True)
        for i, token in enumerate(tokens):
            if re.fullmatch(r"(\./)?jobs/\w+\.py", token):
                invocations.append((where, REPO / token, tokens[i + 1:]))
    return invocations


def _job_parser(script: Path):
    spec = importlib.util.spec_from_file_location(f"_job_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_every_yaml_under_cluster_parses():
    paths = sorted(CLUSTER.rglob("*.yaml"))
    assert {p.relative_to(CLUSTER).as_posix() for p in paths} >= {
        "aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"}
    for path in paths:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_aws_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(CLUSTER / "aws.yaml")))


def test_aws_launcher_has_a_cpu_head_gpu_workers_s3_profiles_and_installs_galpipe():
    config = _load(CLUSTER / "aws.yaml")
    types = config["available_node_types"]

    assert config["cluster_name"]
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in types
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_workers = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers, "no worker node type offers a GPU"
    for worker in gpu_workers:
        family = worker["node_config"]["InstanceType"].split(".")[0]
        assert family in GPU_INSTANCE_FAMILIES, worker["node_config"]["InstanceType"]
        assert worker["max_workers"] >= 1
    for name, node_type in types.items():
        assert ":instance-profile/" in node_type["node_config"]["IamInstanceProfile"]["Arn"], name
    setup = config["setup_commands"]
    assert any("pip install" in c and "galpipe" in c for c in setup)
    mounts = config["file_mounts"]
    assert any(local == "." for local in mounts.values()), "the checkout is not copied"
    installed = next(c for c in setup if "pip install" in c and "-e" in c.split())
    assert installed.split()[-1] in mounts, "pip installs a path that is not mounted"


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"),
                                        ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest_kinds(name, kind):
    manifest = _load(KUBERAY / name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert manifest["metadata"]["name"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_gpu_workers_and_storage_keys_from_a_secret(name):
    spec = _ray_cluster_specs()[name]

    assert "headGroupSpec" in spec and spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            limits = container["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1, group["groupName"]
    for where, container in _containers(spec):
        env = {e["name"]: e for e in container["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key], f"{name} {where}: literal {key}"
            assert env[key]["valueFrom"]["secretKeyRef"]["name"], f"{name} {where}: {key}"


def test_rayjob_runs_on_the_same_cluster_as_raycluster():
    specs = _ray_cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"]


def test_ray_version_images_and_working_dir_agree_with_the_pin_and_dockerfile():
    pin = _ray_pin()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)", dockerfile, re.M).group(1)
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile, re.M).group(1)

    assert base.split("-")[0] == pin
    images = set()
    for name, spec in _ray_cluster_specs().items():
        assert spec["rayVersion"] == pin, name
        images |= {c["image"] for _, c in _containers(spec)}
    assert len(images) == 1, images
    rayjob = _load(KUBERAY / "rayjob.yaml")
    assert yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["working_dir"] == workdir


def test_every_job_entrypoint_is_a_real_script_accepting_its_arguments():
    from galpipe import config as config_module
    from galpipe.commands import parse_overrides

    invocations = _job_script_invocations()
    scripts = {script for _, script, _ in invocations}
    assert REPO / "jobs" / "run_pipeline.py" in scripts
    assert any(where == "rayjob.yaml" for where, _, _ in invocations)

    for where, script, arguments in invocations:
        assert script.is_file(), f"{where}: {script} does not exist"
        try:
            args = _job_parser(script).parse_args(arguments)
        except SystemExit as exc:
            pytest.fail(f"{where}: {script.name} rejects {arguments} (exit {exc.code})")
        if getattr(args, "config", None):
            # The config named must exist in the checkout and validate with its overrides.
            config_module.load(REPO / args.config, overrides=parse_overrides(args.set))
    for script in scripts:
        shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, timeout=60, cwd=REPO)
        assert shown.returncode == 0 and "--storage" in shown.stdout, shown.stderr


def test_every_documented_galpipe_submit_command_parses_and_builds_a_valid_entrypoint():
    from galpipe import submit
    from galpipe.cli import build_parser

    parser = build_parser()
    commands = [(where, c) for where, c in _commands() if c.startswith("galpipe submit")]
    assert any(where == "README.md" for where, _ in commands)
    assert any("--smoke" in c for _, c in commands)
    for where, command in commands:
        try:
            args = parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")
        if args.smoke:
            argv = submit.smoke_entrypoint(storage_uri=args.storage, run_id="r1",
                                           python=args.python)
        else:
            argv = submit.pipeline_entrypoint(
                config_path=REPO / args.config, storage_uri=args.storage,
                tracking_uri=args.tracking_uri, run_id="r1", python=args.python,
                overrides=args.set)
        # What the job receives must satisfy the job script's own parser.
        try:
            _job_parser(REPO / argv[1]).parse_args(argv[2:])
        except SystemExit as exc:
            pytest.fail(f"{where}: the job rejects {argv} (exit {exc.code})")
