"""Deployment artefacts: the Dockerfile, the Kubernetes manifests, cron and the compose trial.

This machine has no Kubernetes cluster and no Docker engine, so nothing here is deployed or
built. Instead every manifest is parsed (PyYAML, multi-document aware) and its settings are
asserted as literal values; the Kubernetes objects are also validated offline against the API
schemas in strict mode (kubernetes-validate: unknown or misspelt fields fail), and rendered with
kubectl's built-in kustomize where kubectl is installed. What can run here runs for real: the
cron wrapper (bash, setpriv, a real environment file), `archiver policy validate` on the compose
trial's policies, and the trial's init SQL against a real PostgreSQL with TimescaleDB.

After editing policies/*.yaml, refresh the Kubernetes ConfigMap that embeds them with
    .venv/bin/python -m tests.test_deploy --write-policies-configmap
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import PROJECT, run_cli

DEPLOY = PROJECT / "deploy"
KUBE = DEPLOY / "kubernetes"
CRON = DEPLOY / "cron"
COMPOSE = DEPLOY / "compose"
POLICIES_CONFIGMAP = KUBE / "base" / "policies-configmap.yaml"

APP_UID = 10001
DSN_VARS = {"identity": "IDENTITY_DSN", "app": "APP_DSN", "telemetry": "TELEMETRY_DSN"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DSN|WEBHOOK|ACCESS_KEY|CREDENTIAL", re.I)
PG_CLIENT_MAJORS = {13, 14, 15, 16, 17}


# -- loading --------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kube_files() -> list[Path]:
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def kube_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in kube_files() for doc in load_docs(path)]


def objects_of(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in kube_objects() if doc["kind"] == kind]


def shipped_schedules() -> dict[tuple[str, str], str]:
    """(policy, task) -> cron expression, exactly as the worker would schedule policies/*.yaml."""
    from archiver.policy.files import load
    from archiver.tasks import task_schedules

    result = load([PROJECT / "policies"], strict_env=False)
    assert not result.issues, result.issues
    return {(policy.name, task): expression for policy in result.policies
            for task, expression in task_schedules(policy).items()}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def workloads() -> list[dict[str, Any]]:
    return objects_of("CronJob") + objects_of("Deployment")


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1 and containers[0]["name"] == "archiver", obj["metadata"]["name"]
    return containers[0]


def env_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(obj).get("env", [])}


def cronjobs_by_task() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for job in objects_of("CronJob"):
        labels = job["metadata"]["labels"]
        key = (labels["archiver/policy"], labels["app.kubernetes.io/component"])
        assert key not in found, f"two CronJobs for {key}"
        found[key] = job
    return found


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (512Mi, 2Gi, 250m, 2) as a number of bytes or cores."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3}
    value = str(text)
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


# -- the policies ConfigMap -----------------------------------------------------------------

def render_policies_configmap() -> str:
    """The ConfigMap embedding every policies/*.yaml verbatim, as a block scalar per file."""
    lines = [
        "# The shipped policies (policies/*.yaml), mounted read-only at /etc/archiver/policies.",
        "# Exact copies, checked by tests/test_deploy.py; after editing policies/, regenerate with",
        "#   .venv/bin/python -m tests.test_deploy --write-policies-configmap",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: archiver-policies",
        "data:",
    ]
    for path in sorted((PROJECT / "policies").glob("*.yaml")):
        text = path.read_text()
        lines.append(f"  {path.name}: |" + ("" if text.endswith("\n") else "-"))
        lines.extend(f"    {line}" if line else "" for line in text.splitlines())
    return "\n".join(lines) + "\n"


def test_policies_configmap_holds_exact_copies_of_the_policy_files() -> None:
    (configmap,) = load_docs(POLICIES_CONFIGMAP)
    files = {path.name: path.read_text() for path in (PROJECT / "policies").glob("*.yaml")}
    assert set(files) == {"app.yaml", "identity.yaml", "telemetry.yaml"}
    assert configmap["metadata"]["name"] == "archiver-policies"
    assert configmap["data"] == files, ("deploy/kubernetes/base/policies-configmap.yaml differs from policies/*.yaml; "
                                        "run: .venv/bin/python -m tests.test_deploy --write-policies-configmap")


# -- Dockerfile -----------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (PROJECT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return args


def test_dockerfile_runs_as_a_fixed_numeric_non_root_user() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users == [f"{APP_UID}:{APP_UID}"]
    runs = " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")
    assert f"--uid {APP_UID}" in runs and f"--gid {APP_UID}" in runs, "the user must exist in /etc/passwd (initdb needs it)"
    assert f"install -d -o {APP_UID} -g {APP_UID} -m 0750 /scratch" in runs


def test_dockerfile_base_env_entrypoint_and_labels() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "${PYTHON_IMAGE}")
    assert dockerfile_args()["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    env = " ".join(rest for keyword, rest in stage if keyword == "ENV")
    assert "TMPDIR=/scratch" in env.split() and "ARCHIVER_POLICIES=/etc/archiver/policies" in env.split()
    entrypoints = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"]
    assert entrypoints == ['["/usr/bin/tini", "--", "archiver"]']
    assert not [keyword for keyword, _ in stage if keyword == "HEALTHCHECK"]
    labels = " ".join(rest for keyword, rest in stage if keyword == "LABEL")
    for label in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in labels
    install = [rest for keyword, rest in stage if keyword == "RUN" and "pip install" in rest]
    assert len(install) == 1 and "--no-index --find-links /tmp/wheels archiver" in install[0]


def test_dockerfile_installs_every_client_major_and_server_majors_from_pgdg() -> None:
    args = dockerfile_args()
    clients = {int(major) for major in args["PG_CLIENT_MAJORS"].split()}
    servers = {int(major) for major in args["PG_SERVER_MAJORS"].split()}
    assert clients == PG_CLIENT_MAJORS
    assert servers and servers <= clients and max(servers) == max(clients)
    runs = [rest for keyword, rest in final_stage() if keyword == "RUN"]
    pgdg = next(run for run in runs if "apt.postgresql.org" in run)
    assert "signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc" in pgdg
    assert 'packages+=("postgresql-client-${major}")' in pgdg and 'packages+=("postgresql-${major}")' in pgdg
    assert "create_main_cluster = false" in pgdg
    assert 'test -x "/usr/lib/postgresql/${major}/bin/pg_dump"' in pgdg


def test_dockerfile_apt_steps_install_no_recommends_and_clean_their_lists() -> None:
    runs = [rest for keyword, rest in final_stage() if keyword == "RUN" and "apt-get" in rest]
    assert len(runs) == 2
    for run in runs:
        installs = re.findall(r"apt-get install [^;]*", run)
        assert installs and all("--no-install-recommends" in install for install in installs)
        assert run.rstrip().endswith("rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*")
    timescale = next(run for run in runs if "packagecloud.io/timescale" in run)
    assert '--export "${TIMESCALEDB_KEY_FINGERPRINT}"' in timescale and "test -s /usr/share/keyrings/timescaledb.gpg" in timescale
    assert re.fullmatch(r"[0-9A-F]{40}", dockerfile_args()["TIMESCALEDB_KEY_FINGERPRINT"])
    assert dockerfile_args()["TIMESCALEDB_VERSION"] == "", "TimescaleDB is opt-in"


def test_dockerfile_bakes_in_no_secrets() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            for assignment in rest.split():
                assert not SECRET_NAME.search(assignment.partition("=")[0]), f"{keyword} {rest}"
        assert "password=" not in rest.lower()
        if keyword == "COPY":
            assert ".env" not in rest


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    rules = [line.strip() for line in (PROJECT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    excluded = False
    for rule in rules:
        negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch(prefix, pattern) and prefix.count("/") == pattern.count("/") for prefix in prefixes)
        if hit:
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_the_build_inputs() -> None:
    for kept in ("pyproject.toml", "README.md", "archiver/__init__.py", "archiver/cli/__init__.py"):
        assert not dockerignore_excludes(kept), kept
    for dropped in ("deploy/compose/.env", ".venv/bin/python", ".git/config", "tests/conftest.py",
                    "archiver/__pycache__/db.cpython-311.pyc", "policies/app.yaml", "bench/out.json"):
        assert dockerignore_excludes(dropped), dropped
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert not dockerignore_excludes(source.rstrip("/")), f"COPY {source} is excluded by .dockerignore"


# -- Kubernetes: schemas and kustomizations -------------------------------------------------

@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_every_kubernetes_object_is_valid_against_the_api_schema(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' installs it")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    objects = kube_objects()
    assert len(objects) >= 11 + 9
    for path, obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(PROJECT)}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def kustomization(directory: str) -> dict[str, Any]:
    (doc,) = load_docs(KUBE / directory / "kustomization.yaml")
    return doc


def test_kustomizations_keep_the_two_alternatives_apart() -> None:
    base = kustomization("base")
    assert base["namespace"] == "archiver"
    assert sorted(base["resources"]) == ["namespace.yaml", "policies-configmap.yaml", "serviceaccount.yaml",
                                         "settings-configmap.yaml"]
    assert "secrets.example.yaml" not in str(base) and (KUBE / "base" / "secrets.example.yaml").exists()
    cronjob_files = sorted(p.name for p in (KUBE / "cronjobs").glob("*.yaml") if p.name != "kustomization.yaml")
    cronjobs = kustomization("cronjobs")
    assert cronjobs["resources"][0] == "../base" and sorted(cronjobs["resources"][1:]) == cronjob_files
    assert kustomization("worker")["resources"] == ["../base", "deployment.yaml", "service.yaml", "wal-spool-pvc.yaml"]
    for name, other in (("cronjobs", "worker"), ("worker", "cronjobs")):
        assert other not in str(kustomization(name)["resources"])
        assert kustomization(name)["namespace"] == "archiver"
        assert kustomization(name)["labels"][0]["pairs"]["archiver/deployment"] == name
    in_base = [doc["kind"] for path, doc in kube_objects() if path.parent.name == "base"]
    assert sorted(in_base) == ["ConfigMap", "ConfigMap", "Namespace", "Secret", "Secret", "Secret", "ServiceAccount"], \
        "the base runs nothing by itself"


def kustomize(directory: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed here (its built-in kustomize renders the overlays)")
    result = subprocess.run([kubectl, "kustomize", str(KUBE / directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay, workload, count, absent",
                         [("cronjobs", "CronJob", 11, "Deployment"), ("worker", "Deployment", 1, "CronJob")])
def test_kustomize_renders_each_alternative_alone(overlay: str, workload: str, count: int, absent: str) -> None:
    rendered = kustomize(overlay)
    kinds = [doc["kind"] for doc in rendered]
    assert kinds.count(workload) == count and absent not in kinds
    assert {"Namespace", "ServiceAccount", "ConfigMap"} <= set(kinds) and "Secret" not in kinds
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "archiver", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "archiver"
        assert doc["metadata"]["labels"]["archiver/deployment"] == overlay


# -- Kubernetes: CronJobs -------------------------------------------------------------------

def test_one_cronjob_per_policy_task_with_the_policy_schedule() -> None:
    expected = shipped_schedules()
    assert len(expected) == 11
    jobs = cronjobs_by_task()
    assert set(jobs) == set(expected)
    for (policy, task), schedule in expected.items():
        job = jobs[(policy, task)]
        assert job["metadata"]["name"] == f"archiver-{policy}-{task}"
        assert job["spec"]["schedule"] == schedule
        assert job["spec"]["timeZone"] == "Etc/UTC"
        assert container(job)["args"] == ["run", policy, task]
        labels = {"app.kubernetes.io/name": "archiver", "app.kubernetes.io/component": task, "archiver/policy": policy}
        for metadata in (job["metadata"], job["spec"]["jobTemplate"]["metadata"],
                         job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]):
            assert metadata["labels"] == labels
        assert (KUBE / "cronjobs" / f"{policy}-{task}.yaml").exists()


def test_cronjobs_never_overlap_and_have_deadlines_sized_to_the_task() -> None:
    backoff = {"backup": 1, "archive": 1, "prune": 0, "retention": 0, "verify": 0}
    for (policy, task), job in cronjobs_by_task().items():
        spec, job_spec = job["spec"], job["spec"]["jobTemplate"]["spec"]
        where = f"{policy}-{task}"
        assert spec["concurrencyPolicy"] == "Forbid", where
        assert spec["startingDeadlineSeconds"] in (3600, 14400), where
        assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3, where
        assert job_spec["backoffLimit"] == backoff[task], where
        assert job_spec["ttlSecondsAfterFinished"] == 8 * 86400, where
        assert pod_spec(job)["restartPolicy"] == "Never", where
        fail_fast = job_spec["podFailurePolicy"]["rules"][0]
        assert fail_fast == {"action": "FailJob", "onExitCodes": {"containerName": "archiver", "operator": "In",
                                                                   "values": [2, 3, 4, 5]}}, where
        assert 1800 <= job_spec["activeDeadlineSeconds"] <= 8 * 3600, where
    jobs = cronjobs_by_task()
    deadline = {key: job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] for key, job in jobs.items()}
    for policy in ("identity", "app", "telemetry"):
        assert deadline[(policy, "verify")] > deadline[(policy, "backup")] > deadline[(policy, "prune")]
    assert deadline[("telemetry", "backup")] > deadline[("identity", "backup")]


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    assert len(workloads()) == 12
    for obj in workloads():
        spec, where = pod_spec(obj), obj["metadata"]["name"]
        assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID,
                                           "fsGroup": APP_UID, "seccompProfile": {"type": "RuntimeDefault"}}, where
        assert spec["serviceAccountName"] == "archiver" and spec["automountServiceAccountToken"] is False, where
        for item in spec["containers"] + spec.get("initContainers", []):
            assert item["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                               "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}, where
        assert "hostNetwork" not in spec and "hostPID" not in spec, where
    (namespace,) = objects_of("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pods_write_only_to_size_limited_emptydirs() -> None:
    for obj in workloads():
        spec, where = pod_spec(obj), obj["metadata"]["name"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container(obj)["volumeMounts"]}
        assert mounts["/etc/archiver/policies"]["readOnly"] is True, where
        assert volumes[mounts["/etc/archiver/policies"]["name"]]["configMap"]["name"] == "archiver-policies", where
        for path in ("/scratch", "/tmp"):
            assert quantity(volumes[mounts[path]["name"]]["emptyDir"]["sizeLimit"]) > 0, (where, path)
        writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
        spool = {WAL_SPOOL} if obj["kind"] == "Deployment" else set()  # the worker's WAL receivers (a PVC)
        assert writable <= {"/scratch", "/tmp", "/dev/shm"} | spool, where
        env = env_of(obj)
        assert env["TMPDIR"]["value"] == "/scratch" and env["ARCHIVER_POLICIES"]["value"] == "/etc/archiver/policies"
    jobs = cronjobs_by_task()

    def scratch(key: tuple[str, str]) -> float:
        volumes = {v["name"]: v for v in pod_spec(jobs[key])["volumes"]}
        return quantity(volumes["scratch"]["emptyDir"]["sizeLimit"])

    for policy in ("identity", "app", "telemetry"):
        assert scratch((policy, "verify")) >= 10 * scratch((policy, "backup")), "a drill restores the whole database"
        shm = [v for v in pod_spec(jobs[(policy, "verify")])["volumes"] if v["name"] == "shm"]
        assert shm and shm[0]["emptyDir"]["medium"] == "Memory"


def test_secrets_reach_pods_only_by_reference() -> None:
    for obj in workloads():
        where = obj["metadata"]["name"]
        for name, entry in env_of(obj).items():
            if "value" in entry:
                assert not SECRET_NAME.search(name), f"{where}: {name} has a literal value"
                assert "password" not in str(entry["value"]).lower(), where
            elif name in DSN_VARS.values() or name == "ARCHIVER_WEBHOOK_URL":
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["key"] == name and ref["name"] in ("archiver-db", "archiver-notify"), where
        assert container(obj)["envFrom"] == [{"secretRef": {"name": "archiver-s3", "optional": True}}], where
    for (policy, task), job in cronjobs_by_task().items():
        dsns = {name for name in env_of(job) if name.endswith("_DSN")}
        assert dsns == {DSN_VARS[policy]}, f"{policy}-{task} must get its own DSN only"
        assert env_of(job)[DSN_VARS[policy]]["valueFrom"]["secretKeyRef"] == {"name": "archiver-db", "key": DSN_VARS[policy]}
        assert env_of(job)["ARCHIVER_PUSHGATEWAY"]["valueFrom"]["configMapKeyRef"]["name"] == "archiver-settings"


def test_resources_are_requested_and_limited_by_task() -> None:
    limits: dict[tuple[str, str], float] = {}
    for (policy, task), job in cronjobs_by_task().items():
        resources = container(job)["resources"]
        for kind in ("cpu", "memory"):
            assert quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind]), (policy, task, kind)
        limits[(policy, task)] = quantity(resources["limits"]["memory"])
        if task in ("backup", "archive"):
            assert 200 * 2**20 <= quantity(resources["requests"]["memory"]) <= 512 * 2**20, (policy, task)
            assert limits[(policy, task)] <= 2**30, (policy, task)
    for policy in ("identity", "app", "telemetry"):
        assert limits[(policy, "verify")] >= 2 * limits[(policy, "backup")], "a drill runs a PostgreSQL"


def test_secrets_example_shows_every_secret_the_pods_reference() -> None:
    secrets = {doc["metadata"]["name"]: doc for doc in load_docs(KUBE / "base" / "secrets.example.yaml")}
    referenced: dict[str, set[str]] = {}
    for obj in workloads():
        for entry in env_of(obj).values():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.setdefault(ref["name"], set()).add(ref["key"])
    assert referenced == {"archiver-db": set(DSN_VARS.values()), "archiver-notify": {"ARCHIVER_WEBHOOK_URL"}}
    assert set(secrets) == {"archiver-db", "archiver-notify", "archiver-s3"}
    for name, keys in referenced.items():
        assert set(secrets[name]["stringData"]) == keys
    assert set(secrets["archiver-s3"]["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for secret in secrets.values():
        assert secret["type"] == "Opaque"
        assert all("REPLACE_ME" in value for value in secret["stringData"].values()), "placeholders only"


# -- Kubernetes: the worker alternative -----------------------------------------------------

def test_worker_deployment_is_a_single_recreated_scheduler_with_probes() -> None:
    (deployment,) = objects_of("Deployment")
    spec, pod = deployment["spec"], pod_spec(deployment)
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    args = container(deployment)["args"]
    assert args[0] == "worker"
    options = dict(zip(args[1::2], args[2::2]))
    assert set(options) == {"--max-parallel", "--listen", "--port", "--grace-period", "--misfire-grace"}
    assert pod["terminationGracePeriodSeconds"] > int(options["--grace-period"]) + 60
    ports = {port["name"]: port["containerPort"] for port in container(deployment)["ports"]}
    assert ports == {"metrics": int(options["--port"])} == {"metrics": 9187}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container(deployment)[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert set(DSN_VARS.values()) <= set(env_of(deployment))
    assert "ARCHIVER_PUSHGATEWAY" not in env_of(deployment), "the worker serves /metrics; children must not push"
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/component"] == "worker"
    (service,) = objects_of("Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9187, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9187"


WAL_SPOOL = "/var/lib/archiver/wal-spool"


def test_the_worker_hosts_wal_receivers_on_a_persistent_spool() -> None:
    """CronJobs cannot run a WAL receiver (it never ends): the worker does, spooling on a PVC that
    outlives the pod (pg_receivewal's slot lets the server drop WAL once it is in the spool)."""
    (deployment,) = objects_of("Deployment")
    assert env_of(deployment)["ARCHIVER_WAL_SPOOL"]["value"] == WAL_SPOOL
    mounts = {mount["mountPath"]: mount for mount in container(deployment)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    claim = volumes[mounts[WAL_SPOOL]["name"]]["persistentVolumeClaim"]["claimName"]
    (pvc,) = objects_of("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert quantity(pvc["spec"]["resources"]["requests"]["storage"]) >= 10 * 2**30
    assert pod_spec(deployment)["securityContext"]["fsGroup"] == APP_UID, "the volume must be writable by uid 10001"
    for job in objects_of("CronJob"):
        assert "ARCHIVER_WAL_SPOOL" not in env_of(job)


# -- cron -----------------------------------------------------------------------------------

def crontab_entries() -> tuple[dict[str, str], list[list[str]]]:
    variables: dict[str, str] = {}
    entries: list[list[str]] = []
    for line in (CRON / "archiver.crontab").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            name, _, value = line.partition("=")
            variables[name] = value
        else:
            entries.append(line.split())
    return variables, entries


def test_crontab_runs_every_policy_task_on_its_schedule_in_utc() -> None:
    variables, entries = crontab_entries()
    assert variables["CRON_TZ"] == "UTC"
    assert variables["PATH"].startswith("/usr/local/bin:")
    scheduled = {}
    for fields in entries:
        assert len(fields) == 9, fields
        assert fields[5:7] == ["root", "/usr/local/bin/archiver-cron"], fields
        scheduled[(fields[7], fields[8])] = " ".join(fields[:5])
    assert scheduled == shipped_schedules()


@pytest.fixture
def cron_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="archiver-cron-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def write_stand_in(directory: Path) -> Path:
    """A stand-in for `archiver`: `archiver run` is not on this branch yet, and exit codes 3-5 need
    a held lock, a failed drill or a held-back chunk. The wrapper's job is what it does with them."""
    stand_in = directory / "archiver"
    stand_in.write_text('#!/bin/sh\necho "args: $*"\necho "uid=$(id -u) home=$HOME dsn=${IDENTITY_DSN:-unset}" >&2\n'
                        'exit "${STAND_IN_EXIT:-0}"\n')
    stand_in.chmod(0o755)
    return stand_in


def write_env_file(directory: Path, lines: list[str], mode: int = 0o600) -> Path:
    env_file = directory / "env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(mode)
    return env_file


def run_wrapper(env_file: Path, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "ARCHIVER_ENV_FILE": str(env_file), "ARCHIVER_CRON_USER": "",
                   "ARCHIVER_CRON_LOG": str(env_file.parent / "cron.log"), **(extra or {})}
    return subprocess.run(["bash", str(CRON / "archiver-cron"), *args], capture_output=True, text=True,
                          env=environment, timeout=120)


@pytest.mark.parametrize("code, mailed, wrapper_exit, logged", [
    (0, False, 0, "done (exit 0)"),
    (3, False, 0, "skipped: another run holds the lock (exit 3); not a failure"),
    (1, True, 1, "failed (exit 1)"),
    (4, True, 4, "verification failed: the data does not match (exit 4)"),
    (5, True, 5, "finished, but something was held back for safety and needs a look (exit 5)"),
])
def test_cron_wrapper_mails_only_what_needs_a_look(cron_dir: Path, code: int, mailed: bool, wrapper_exit: int,
                                                   logged: str) -> None:
    stand_in = write_stand_in(cron_dir)
    env_file = write_env_file(cron_dir, ["IDENTITY_DSN='host=db.internal dbname=identity user=archiver'",
                                         f"ARCHIVER_BIN={stand_in}"])
    result = run_wrapper(env_file, "identity", "backup", extra={"STAND_IN_EXIT": str(code)})
    assert result.returncode == wrapper_exit
    assert result.stdout == ""
    log = (cron_dir / "cron.log").read_text().splitlines()
    assert log[-1].endswith(f"archiver [identity/backup] {logged}")
    assert any(line.endswith("args: run identity backup") for line in log)
    assert any("dsn=host=db.internal dbname=identity user=archiver" in line for line in log), "env file was sourced"
    if mailed:
        assert result.stderr.startswith(f"archiver identity backup: {logged}")
        assert "args: run identity backup" in result.stderr
    else:
        assert result.stderr == ""


def test_cron_wrapper_refuses_an_env_file_others_can_read(cron_dir: Path) -> None:
    env_file = write_env_file(cron_dir, [f"ARCHIVER_BIN={write_stand_in(cron_dir)}"], mode=0o640)
    result = run_wrapper(env_file, "identity", "backup")
    assert result.returncode == 2
    assert f"{env_file} is readable by group or others (mode 640); run: chmod 600 {env_file}" in result.stderr
    assert not (cron_dir / "cron.log").exists(), "nothing may run"


def test_cron_wrapper_refuses_bad_arguments(cron_dir: Path) -> None:
    env_file = write_env_file(cron_dir, [])
    for args in (("identity",), ("identity", "drop-everything")):
        result = run_wrapper(env_file, *args)
        assert result.returncode == 2 and result.stderr.startswith("usage: archiver-cron POLICY TASK")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_cron_wrapper_started_as_root_runs_archiver_unprivileged(cron_dir: Path) -> None:
    try:
        user = pwd.getpwnam("postgres")  # any unprivileged account; the scratch instance needs this one here
    except KeyError:
        pytest.skip("no unprivileged 'postgres' user on this machine")
    env_file = write_env_file(cron_dir, [f"ARCHIVER_BIN={write_stand_in(cron_dir)}"])
    result = run_wrapper(env_file, "identity", "backup", extra={"ARCHIVER_CRON_USER": "postgres"})
    assert result.returncode == 0, result.stderr
    assert f"uid={user.pw_uid} home={user.pw_dir} " in (cron_dir / "cron.log").read_text()
    missing = run_wrapper(env_file, "identity", "backup", extra={"ARCHIVER_CRON_USER": "no-such-user-here"})
    assert missing.returncode == 2 and "no user no-such-user-here to run archiver as" in missing.stderr


def test_cron_wrapper_reports_a_policy_error_of_the_real_archiver(cron_dir: Path) -> None:
    """The real program, without the DSN its policy needs: exit 2, mailed with archiver's message."""
    real = Path(sys.executable).with_name("archiver")
    assert real.exists(), "the archiver console script of this venv"
    env_file = write_env_file(cron_dir, [f"ARCHIVER_BIN={real}", f"ARCHIVER_POLICIES={PROJECT / 'policies'}"])
    result = run_wrapper(env_file, "identity", "backup")
    assert result.returncode == 2
    assert result.stderr.startswith("archiver identity backup: usage or policy error (exit 2)")
    assert "error:" in result.stderr


def test_cron_env_example_holds_placeholders_only() -> None:
    assignments = dict(line.split("=", 1) for line in (CRON / "env.example").read_text().splitlines()
                       if line and not line.startswith("#"))
    assert set(DSN_VARS.values()) <= set(assignments)
    for name, value in assignments.items():
        if SECRET_NAME.search(name):
            assert "REPLACE_ME" in value, name
    assert assignments["TMPDIR"] == "/var/lib/archiver/tmp"


def test_cron_wrapper_is_executable() -> None:
    mode = (CRON / "archiver-cron").stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXOTH


# -- docker-compose trial -------------------------------------------------------------------

def compose() -> dict[str, Any]:
    (doc,) = load_docs(COMPOSE / "docker-compose.yml")
    return doc


ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


def test_compose_services_start_in_order_with_health_checks() -> None:
    services = compose()["services"]
    assert set(services) == {"timescaledb", "minio", "createbucket", "archiver"}
    assert services["timescaledb"]["image"] == "timescale/timescaledb:2.17.2-pg16"
    assert services["timescaledb"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert services["createbucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert services["createbucket"]["command"] == ["mb", "--ignore-existing", "trial/archiver-trial"]
    archiver = services["archiver"]
    assert archiver["depends_on"] == {"timescaledb": {"condition": "service_healthy"},
                                      "createbucket": {"condition": "service_completed_successfully"}}
    assert "/healthz" in " ".join(archiver["healthcheck"]["test"])
    assert archiver["command"][0] == "worker"
    assert archiver["user"] == f"{APP_UID}:{APP_UID}" and archiver["read_only"] is True
    assert archiver["cap_drop"] == ["ALL"]
    assert "./policies:/etc/archiver/policies:ro" in archiver["volumes"]
    mounted_sql = services["timescaledb"]["volumes"][1].split(":")[0]
    assert (COMPOSE / mounted_sql).is_file()


def test_compose_builds_the_repository_image_matching_the_trial_server() -> None:
    build = compose()["services"]["archiver"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == PROJECT / "Dockerfile"
    image = compose()["services"]["timescaledb"]["image"]
    version, major = re.fullmatch(r"timescale/timescaledb:([\d.]+)-pg(\d+)", image).groups()  # type: ignore[union-attr]
    assert build["args"] == {"PG_CLIENT_MAJORS": major, "PG_SERVER_MAJORS": major, "TIMESCALEDB_VERSION": version}


def test_compose_has_no_inline_secrets_and_env_example_defines_them() -> None:
    text = (COMPOSE / "docker-compose.yml").read_text()
    example = dict(line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for service, definition in compose()["services"].items():
        for name, value in definition.get("environment", {}).items():
            if SECRET_NAME.search(name) and not name.endswith("_DSN"):
                assert ENV_REF.fullmatch(str(value)), f"{service}.{name} must be a ${{VAR}} reference"
            assert "password" not in str(value).lower() or ENV_REF.search(str(value)), f"{service}.{name}"
    required = {match.group(1) for match in ENV_REF.finditer(text) if ":?" in match.group(0)}
    assert required == {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} == set(example)
    assert {match.group(1) for match in ENV_REF.finditer(text)} <= set(example)
    assert (COMPOSE / ".gitignore").read_text().splitlines()[-1] == ".env"
    assert dockerignore_excludes("deploy/compose/.env")


def compose_environment() -> dict[str, str]:
    environment = compose()["services"]["archiver"]["environment"]
    example = dict(line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    return {name: ENV_REF.sub(lambda m: example[m.group(1)], str(value)) for name, value in environment.items()}


def test_compose_policies_validate_with_the_compose_environment() -> None:
    environment = compose_environment()
    result = run_cli("policy", "validate", "--check-env", str(COMPOSE / "policies"),
                     env={name: environment[name] for name in (*DSN_VARS.values(), "ARCHIVER_S3_ENDPOINT")})
    assert result.code == 0, result.output
    assert "3 policies valid: app, identity, telemetry" in result.output
    for name in DSN_VARS:
        text = (COMPOSE / "policies" / f"{name}.yaml").read_text()
        assert f"url: s3://archiver-trial/{name}\n" in text and "endpoint_url: ${ARCHIVER_S3_ENDPOINT}\n" in text
        assert text != (PROJECT / "policies" / f"{name}.yaml").read_text()
    assert environment["ARCHIVER_S3_ENDPOINT"] == "http://minio:9000"


@pytest.mark.timescaledb
def test_compose_init_sql_builds_databases_the_trial_policies_can_work_on() -> None:
    """The trial's init SQL on a real PostgreSQL with TimescaleDB: then the trial policies' own
    verify checks hold, and there are chunks old enough to archive and to drop."""
    from archiver.pg.scratch import LocalPostgres
    from archiver.policy.expect import parse_expectation
    from archiver.policy.files import load

    policies = {p.name: p for p in load([COMPOSE / "policies"], environ=compose_environment(), strict_env=True).policies}
    with LocalPostgres(timescaledb=True) as server:
        psql = str(server.bindir / "psql")
        result = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.dsn("postgres"),
                                 "-f", str(COMPOSE / "initdb" / "010_archiver_trial.sql")],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        for name, policy in policies.items():
            assert policy.verify and policy.verify.checks
            for check in policy.verify.checks:
                value = int(server.psql(check.sql, name))
                assert parse_expectation(check.expect).holds(value), (name, check.name, value)
        counts = server.psql("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM api_keys), "
                             "(SELECT count(*) FROM audit_logs)", "identity")
        assert counts == "50|100|2000"
        assert server.psql("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'", "app") == "0"
        telemetry = policies["telemetry"]
        assert telemetry.archive is not None
        hypertables = server.psql("SELECT string_agg(hypertable_name, ',' ORDER BY hypertable_name) "
                                  "FROM timescaledb_information.hypertables", "telemetry")
        assert hypertables.split(",") == sorted(t.table.split(".")[1] for t in telemetry.archive.tables)
        for table in telemetry.archive.tables:
            assert table.drop_after is not None
            old = server.psql("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = "
                              f"'{table.table.split('.')[1]}' AND range_end < now() - interval "
                              f"'{int(table.drop_after.total_seconds())} seconds'", "telemetry")
            assert int(old) >= 10, (table.table, old)


def test_compose_trial_streams_the_app_databases_wal_through_the_worker() -> None:
    services = compose()["services"]
    command = services["timescaledb"]["command"]
    settings = dict(item.split("=", 1) for item in command[2::2])
    assert command[0] == "postgres" and set(command[1::2]) == {"-c"}
    assert settings["wal_level"] == "replica" and int(settings["max_wal_senders"]) >= 2
    assert int(settings["archive_timeout"]) <= 300
    mounted = {volume.split(":")[1]: COMPOSE / volume.split(":")[0] for volume in services["timescaledb"]["volumes"]
               if volume.startswith("./")}
    script = mounted["/docker-entrypoint-initdb.d/020_replication.sh"].read_text()
    assert 'echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"' in script
    from archiver.policy.files import load

    policies = {p.name: p for p in load([COMPOSE / "policies"], environ=compose_environment(), strict_env=True).policies}
    app = policies["app"]
    assert app.pitr is not None and app.pitr.wal.method == "stream" and app.pitr.wal.slot
    assert app.pitr.wal.spool_dir and app.pitr.wal.spool_dir.startswith("/scratch/"), "the persistent volume"
    assert "scratch:/scratch" in services["archiver"]["volumes"]
    assert "basebackup" in services["archiver"]["command"]
    assert all(policies[name].pitr is None for name in ("identity", "telemetry"))


# -- README -----------------------------------------------------------------------------------

def test_readme_documents_running_it_for_real_before_the_tests() -> None:
    text = (PROJECT / "README.md").read_text()
    assert text.index("## Running it for real") < text.index("## Tests")
    section = text[text.index("## Running it for real"):text.index("## Tests")]
    for heading in ("### Worker", "### Cron", "### Kubernetes", "### docker-compose trial", "### Exit codes",
                    "### Metrics"):
        assert heading in section, heading
    for needle in ("kubectl apply -k deploy/kubernetes/cronjobs", "kubectl apply -k deploy/kubernetes/worker",
                   "archiver-db", "archiver-s3", "ARCHIVER_PUSHGATEWAY", "/healthz", "/metrics",
                   "cp .env.example .env", "IRSA"):
        assert needle in section, needle


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-policies-configmap"]:
        POLICIES_CONFIGMAP.write_text(render_policies_configmap())
        print(f"wrote {POLICIES_CONFIGMAP.relative_to(PROJECT)}")
    else:
        sys.exit("usage: python -m tests.test_deploy --write-policies-configmap")
