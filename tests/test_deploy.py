"""The deployment recipes (deploy/) and the Dockerfile, checked as far as this machine allows:
every configuration they carry loads through the connector's own loader and names only real
keys and variables; the CronJob validates against the Kubernetes schema; the Container
Instance's fields are the official SDK's; the systemd units pass `systemd-analyze verify`; the
cron line's flock keeps a second run out. ``make test-container`` builds and runs the image."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from connector import api
from connector.oci import auth

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The OCI CLI's variables the connector reads (docs/guides/credentials.md).
CLI_NAMES = {
    *auth.CLI_VARIABLES.values(),
    auth.AUTH_VARIABLE,
    *auth.CONFIG_FILE_VARIABLES,
    "OCI_CLI_PROFILE",
    "OCI_CLI_CERT_BUNDLE",
}
# What the store reads from the environment (pyarrow's S3 filesystem: the AWS chain).
STORE_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def check_environment(names: set[str]) -> None:
    """Each variable a recipe sets is one the connector or its store reads."""
    unknown = {n for n in names if not n.startswith("OCI_IMAGES__")} - CLI_NAMES - STORE_NAMES
    assert set() == unknown


def environment_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile (KEY=value lines, # comments), as the unit and cron read it."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


# -- the Dockerfile ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def instructions(parsed: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parsed.structure if i["instruction"] == name]


def test_the_dockerfile_builds_in_two_stages_from_an_argument(dockerfile: DockerfileParser) -> None:
    """ARG BASE before the first FROM (slim Python by default); a builder stage and a final one,
    both on BASE, the final one taking only the venv from the builder."""
    first_from = next(i for i, x in enumerate(dockerfile.structure) if x["instruction"] == "FROM")
    before = [x["value"] for x in dockerfile.structure[:first_from] if x["instruction"] == "ARG"]
    assert ["BASE=python:3.11-slim"] == before
    assert ["${BASE} AS builder", "${BASE}"] == instructions(dockerfile, "FROM")
    assert ["--from=builder /opt/oci-images /opt/oci-images"] == [
        c for c in instructions(dockerfile, "COPY") if c.startswith("--from")
    ]


def test_the_image_runs_the_command_as_a_non_root_user(dockerfile: DockerfileParser) -> None:
    """USER is a numeric non-root uid (runAsNonRoot can check it) and comes after the last
    FROM; the entry point is the command, in exec form."""
    last_from = max(i for i, x in enumerate(dockerfile.structure) if x["instruction"] == "FROM")
    users = [x["value"] for x in dockerfile.structure[last_from:] if x["instruction"] == "USER"]
    assert ["10001:10001"] == users
    assert ['["oci-images"]'] == instructions(dockerfile, "ENTRYPOINT")


def test_everything_is_installed_from_hashes(dockerfile: DockerfileParser) -> None:
    """Every pip install takes a hash-pinned lock (--require-hashes) or the wheel just built
    (--no-index); the subset of the lock is chosen by scripts/lock_subset.py."""
    installs = [
        part
        for run in instructions(dockerfile, "RUN")
        for part in run.split("&&")
        if "pip install" in part
    ]
    assert 3 == len(installs)
    assert [] == [p for p in installs if "--require-hashes" not in p and "--no-index" not in p]
    assert any("lock_subset.py requirements.lock" in r for r in instructions(dockerfile, "RUN"))


def test_the_image_subset_resolves_from_the_lock() -> None:
    """The Dockerfile's EXTRAS exist in the lock, with the core, and no test tool comes with
    them; the build backend's lock pins the version pyproject.toml asks for."""
    extras = next(
        v.split("=", 1)[1].strip('"')
        for v in instructions(DockerfileParser(path=str(ROOT / "Dockerfile")), "ARG")
        if v.startswith("EXTRAS=")
    )
    command = [sys.executable, "scripts/lock_subset.py", "requirements.lock", *extras.split()]
    subset = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0] for line in subset.splitlines() if "==" in line}
    assert {"oci", "ocifs", "botocore", "deltalake", "pyiceberg", "pyarrow", "aiohttp"} <= names
    assert {"prometheus-client", "opentelemetry-sdk"} <= names
    assert set() == names & {"pytest", "mypy", "ruff", "duckdb", "moto", "kubernetes-validate"}
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert [f"{backend[0]} \\"] == [
        line
        for line in (ROOT / "requirements-build.lock").read_text().splitlines()
        if line.startswith(backend[0].split("==")[0] + "==")
    ]


def test_no_secret_or_local_state_reaches_the_build_context() -> None:
    """.dockerignore admits only what the Dockerfile copies: no key, no .env, no venv."""
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert "*" == patterns[0]
    assert {"**/*.pem", "**/.env", "**/.oci"} <= set(patterns)
    assert [] == [p for p in patterns if p.startswith("!") and (".venv" in p or "tests" in p)]


# -- Kubernetes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "cronjob.yaml").read_text())
    return {d["kind"]: d for d in documents}


def test_the_cronjob_validates_against_the_kubernetes_schema(
    kubernetes: dict[str, dict[str, Any]],
) -> None:
    """Strict validation (no unknown field) of both documents with the schema bundled in
    kubernetes-validate (no network)."""
    version = kubernetes_validate.latest_version()
    for document in kubernetes.values():
        kubernetes_validate.validate(document, version, strict=True)
    broken = json.loads(json.dumps(kubernetes["CronJob"]))
    broken["spec"]["jobTemplate"]["spec"]["backofLimit"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_cronjob_runs_once_without_retries_as_non_root(
    kubernetes: dict[str, dict[str, Any]],
) -> None:
    """Forbid, no pod-level retry, a read-only root as uid 10001 with /tmp an emptyDir, and the
    memory request above the measured peak (279 MB PSS at 5,000 x 4)."""
    cron = kubernetes["CronJob"]["spec"]
    job = cron["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert ("Forbid", 0, "Never") == (
        cron["concurrencyPolicy"],
        job["backoffLimit"],
        pod["restartPolicy"],
    )
    assert (True, 10001) == (
        pod["securityContext"]["runAsNonRoot"],
        pod["securityContext"]["runAsUser"],
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    mebibytes = int(container["resources"]["requests"]["memory"].removesuffix("Mi"))
    assert 279e6 < mebibytes * 2**20 <= int(container["resources"]["limits"]["memory"][:-2]) * 2**20


def test_the_cronjob_configuration_loads(
    kubernetes: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The ConfigMap's file and the container's literal variables load through the connector's
    loader (an unknown key or variable would be refused); the key comes from a Secret."""
    pod = kubernetes["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
    (tmp_path / "config.toml").write_text(kubernetes["ConfigMap"]["data"]["config.toml"])
    assert ["run", "--config", f"{mount}/config.toml"] == container["args"]
    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = api.load_config(tmp_path / "config.toml", environ=literal)
    assert ("s3://oci-images-lake/exports", 8) == (settings.output.uri, settings.fetch.max_attempts)
    secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert "OCI_CLI_KEY_CONTENT" in secret
    check_environment(set(literal) | set(secret))


# -- OCI Container Instance ----------------------------------------------------------------


def unknown_fields(value: Any, model: str) -> list[str]:
    """The fields of ``value`` that the official SDK's ``model`` (and its nested models, with
    their subtypes) does not have, as paths."""
    from oci.container_instances import models

    if model.startswith("list["):
        return [p for item in value for p in unknown_fields(item, model[5:-1])]
    cls = getattr(models, model, None)
    if cls is None:  # str, int, bool, dict(str, str): a leaf
        return []
    if hasattr(cls, "get_subtype"):
        cls = getattr(models, cls.get_subtype(value))
    fields = {camel: snake for snake, camel in cls().attribute_map.items()}
    types = cls().swagger_types
    found = [f"{model}.{k}" for k in value if k not in fields]
    for key, inner in value.items():
        if key in fields:
            found += unknown_fields(inner, types[fields[key]])
    return found


def test_the_container_instance_names_only_the_sdk_fields(tmp_path: Path) -> None:
    """Every field of container-instance.json is one of CreateContainerInstanceDetails (what
    `oci container-instances container-instance create --from-json` takes); its config file is
    deploy/oci-container-instance/config.toml, which loads with resource principals."""
    folder = DEPLOY / "oci-container-instance"
    details = json.loads((folder / "container-instance.json").read_text())
    assert [] == unknown_fields(details, "CreateContainerInstanceDetails")
    assert ["CreateContainerInstanceDetails.bogus"] == unknown_fields(
        details | {"bogus": 1}, "CreateContainerInstanceDetails"
    )
    configs = [
        c for v in details["volumes"] if v["volumeType"] == "CONFIGFILE" for c in v["configs"]
    ]
    carried = base64.b64decode(configs[0]["data"])
    assert (folder / "config.toml").read_bytes() == carried
    (tmp_path / "config.toml").write_bytes(carried)
    container = details["containers"][0]
    settings = api.load_config(tmp_path / "config.toml", environ=container["environmentVariables"])
    assert ("resource_principal", False) == (
        settings.oci.auth,
        container["isResourcePrincipalDisabled"],
    )
    check_environment(set(container["environmentVariables"]))


# -- systemd and cron ----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say of the service and the timer (with
    ExecStart pointed at this machine's oci-images, since it checks that it exists)."""
    command = shutil.which("oci-images", path=str(Path(sys.executable).parent))
    assert command is not None
    for name in ("oci-images.service", "oci-images.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/oci-images/bin/oci-images", command))
    units = [str(tmp_path / "oci-images.service"), str(tmp_path / "oci-images.timer")]
    answer = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert (0, "") == (answer.returncode, answer.stderr)


def test_the_systemd_service_is_a_hardened_oneshot() -> None:
    """Type=oneshot, secrets from an EnvironmentFile and a credential, Persistent timer."""
    service = (DEPLOY / "systemd" / "oci-images.service").read_text().splitlines()
    timer = (DEPLOY / "systemd" / "oci-images.timer").read_text().splitlines()
    for setting in (
        "Type=oneshot",
        "EnvironmentFile=/etc/oci-images/secrets.env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecStart=/opt/oci-images/bin/oci-images run --config /etc/oci-images/config.toml",
    ):
        assert setting in service
    assert "Persistent=true" in timer


def test_the_batch_configuration_and_its_secrets_load() -> None:
    """deploy/config.toml (systemd and cron) with secrets.env.example's variables: loads, and
    names only variables the connector reads."""
    secrets = environment_file(DEPLOY / "secrets.env.example")
    settings = api.load_config(DEPLOY / "config.toml", environ=secrets)
    assert ("/var/lib/oci-images/lake", 35) == (settings.output.uri, settings.output.keep_days)
    check_environment(set(secrets))


def cron_entry() -> tuple[list[str], str, list[str]]:
    """The cron line's schedule, user and command words."""
    lines = (DEPLOY / "cron" / "oci-images").read_text().splitlines()
    (entry,) = [line for line in lines if line[:1].isdigit()]
    command, _, _redirect = entry.partition(" >> ")
    fields = command.split(None, 6)
    return fields[:5], fields[5], shlex.split(fields[6])


def test_the_cron_line_keeps_a_second_run_out(tmp_path: Path) -> None:
    """The line's own command, paths moved into tmp_path: while the lock is held, it exits 75
    at once; free, it runs oci-images with the secrets file's variables (here, a key file that
    does not exist: exit 2 naming it)."""
    schedule, user, words = cron_entry()
    assert (["17", "2", "*", "*", "*"], "oci-images") == (schedule, user)
    assert ["flock", "-n", "-E", "75"] == words[:4]
    lock, script = tmp_path / "run.lock", words[-1]
    secrets = tmp_path / "secrets.env"
    secrets.write_text(
        (DEPLOY / "secrets.env.example")
        .read_text()
        .replace("/etc/oci-images/oci_api_key.pem", str(tmp_path / "absent.pem"))
    )
    (tmp_path / "config.toml").write_text(
        (DEPLOY / "config.toml").read_text().replace("/var/lib/oci-images", str(tmp_path))
    )
    command = shutil.which("oci-images", path=str(Path(sys.executable).parent))
    assert command is not None
    script = (
        script.replace("/etc/oci-images/secrets.env", str(secrets))
        .replace("/opt/oci-images/bin/oci-images", command)
        .replace("/etc/oci-images/config.toml", str(tmp_path / "config.toml"))
    )
    line = [*words[:4], str(lock), *words[5:-1], script]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a run still going: flock(1) locks with flock(2)
        locked = subprocess.run(line, env=env, capture_output=True, text=True, timeout=60)
    free = subprocess.run(line, env=env, capture_output=True, text=True, timeout=120)
    assert 75 == locked.returncode, locked.stderr
    assert 2 == free.returncode, free.stderr
    assert str(tmp_path / "absent.pem") in free.stderr
