"""``archiver render kubernetes``: the Kubernetes manifests, generated from the policies.

One CronJob per (policy, task) on the policy's schedule (``task_schedules``, the same the worker uses),
each pod with only its own database's DSN; the CronJobs' kustomization; the worker alternative
(Deployment and Service, every policy's DSN); and the ConfigMap that mounts the policy files. Every
setting is written literally, so a manifest reads and lints without rendering kustomize. Pod sizes come
from a policy's ``kubernetes:`` section, else from ``TASK_DEFAULTS`` below.

The manifests need Kubernetes 1.29 or newer (MIN_KUBERNETES; tests/test_deploy.py validates them against
that version's API schemas and the latest): CronJob ``timeZone`` is stable from 1.27, and before 1.29 the
API schema of a ``podFailurePolicy`` rule requires ``onPodConditions`` even next to ``onExitCodes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path

from ..common.cron import cron_interval
from ..common.timeutil import utcnow
from ..errors import UsageError
from ..policy.fields import ENV_REF
from ..policy.kubernetes import KubernetesTask
from ..policy.schema import Policy
from ..tasks import task_schedules
from .defaults import METRICS_PORT
from .render_worker import container_hardening, kustomization, policies_configmap, worker_deployment, worker_service

MIN_KUBERNETES = "1.29"
DEFAULT_IMAGE = "registry.example.com/platform/archiver:0.1.0"

# Sized for a database of a few GiB; a policy's kubernetes: section overrides any of them.
TASK_DEFAULTS = {
    "backup": KubernetesTask(deadline=timedelta(hours=2), cpu="250m", memory="256Mi", cpu_limit="2",
                             memory_limit="512Mi", scratch="2Gi"),
    "basebackup": KubernetesTask(deadline=timedelta(hours=2), cpu="250m", memory="256Mi", cpu_limit="2",
                                 memory_limit="512Mi", scratch="1Gi"),
    "prune": KubernetesTask(deadline=timedelta(minutes=30), cpu="100m", memory="128Mi", cpu_limit="1",
                            memory_limit="256Mi", scratch="256Mi"),
    "archive": KubernetesTask(deadline=timedelta(hours=4), cpu="500m", memory="384Mi", cpu_limit="2",
                              memory_limit="1Gi", scratch="10Gi"),
    "retention": KubernetesTask(deadline=timedelta(hours=1), cpu="100m", memory="256Mi", cpu_limit="1",
                                memory_limit="512Mi", scratch="1Gi"),
    "verify": KubernetesTask(deadline=timedelta(hours=2), cpu="500m", memory="1Gi", cpu_limit="2",
                             memory_limit="2Gi", scratch="20Gi"),
}


@dataclass(frozen=True)
class TaskText:
    summary: str  # what the task does, for the file's first line
    backoff: int
    why_backoff: str  # two comment lines, without the leading "# "
    why_deadline: str


TASK_TEXT = {
    "backup": TaskText("pg_dump of the database to storage, manifest last.", 1,
                       "a failed backup wrote no manifest, so one blind retry is safe and may\n"
                       "still give today's backup. Exit codes 2-5 are answers, not glitches: they fail the Job at once.",
                       "well above a normal backup; a hung pg_dump is killed."),
    "basebackup": TaskText("pg_basebackup of the server to storage (point-in-time recovery), manifest last.", 1,
                           "a failed base backup wrote no manifest, so one blind retry is safe. The WAL\n"
                           "receiver is not here: it never ends, so the worker runs it (deploy/kubernetes/worker).",
                           "well above a normal base backup; a hung pg_basebackup is killed."),
    "prune": TaskText("backup retention (keep_* rules); never deletes the newest good backup.", 0,
                      "prune deletes backups. If it failed (say the listing failed), a person looks\n"
                      "before anything is deleted; the next scheduled run tries again.",
                      "prune only lists and deletes objects."),
    "archive": TaskText("aged chunks to Parquet (cold tier), checked, manifest last.", 1,
                        "archive carries on where a failed or killed run stopped (manifests are\n"
                        "written last), so one retry is safe. Exit codes 2-5 fail the Job at once.",
                        "a day's chunks take minutes; a backlog carries on next run."),
    "retention": TaskText("drops archived chunks past drop_after; expires cold files.", 0,
                          "retention drops chunks from the database. A failure must alert, not\n"
                          "loop; the next scheduled run tries again.",
                          "re-checks archives and drops chunks."),
    "verify": TaskText("restore drill of the newest backup in a throw-away PostgreSQL.", 0,
                       "a failed restore drill must alert. A retry could hide a flaky restore and\n"
                       "would double the cost of restoring the whole database.",
                       "download, restore, index builds and checks of the whole database."),
}


@dataclass(frozen=True)
class EnvRef:
    name: str
    source: str  # "archiver-db" / "archiver-notify" (Secrets) or "archiver-settings" (ConfigMap)
    optional: bool


def env_refs(policy: Policy) -> list[EnvRef]:
    """The environment variables the policy file names, each from where the pods get it: its DSN from
    the archiver-db Secret, its webhook from archiver-notify, anything else from archiver-settings."""
    found: dict[str, EnvRef] = {}
    for line in Path(policy.source).read_text(encoding="utf-8").splitlines():
        code = line.split(" #", 1)[0]
        for match in ENV_REF.finditer(code):
            name, default = match.group(1), match.group(2)
            key = code.strip().split(":", 1)[0].strip("- {")
            if key in ("dsn", "dsn_file"):
                found.setdefault(name, EnvRef(name, "archiver-db", default is not None))
            elif key == "webhook_url":
                found.setdefault(name, EnvRef(name, "archiver-notify", True))
            else:
                found.setdefault(name, EnvRef(name, "archiver-settings", True))
    order = {"archiver-db": 0, "archiver-notify": 1, "archiver-settings": 2}
    return sorted(found.values(), key=lambda ref: order[ref.source])  # stable: file order within each


def sizes(policy: Policy, task: str) -> KubernetesTask:
    own = policy.kubernetes.task(task) if policy.kubernetes else KubernetesTask()
    chosen = {f.name: getattr(own, f.name) for f in fields(KubernetesTask) if getattr(own, f.name) is not None}
    return replace(TASK_DEFAULTS[task], **chosen)


def env_entry(ref: EnvRef, indent: str) -> str:
    kind = "secretKeyRef" if ref.source != "archiver-settings" else "configMapKeyRef"
    text = (f"{indent}- name: {ref.name}\n{indent}  valueFrom:\n{indent}    {kind}:\n"
            f"{indent}      name: {ref.source}\n{indent}      key: {ref.name}\n")
    return text + (f"{indent}      optional: true\n" if ref.optional else "")


def _quantity(value: str | None) -> str:
    return str(value)


def _cpu(value: str | None) -> str:
    return f'"{value}"'


def cronjob(policy: Policy, task: str, schedule: str, image: str) -> str:
    name = policy.name or ""
    text, size = TASK_TEXT[task], sizes(policy, task)
    assert size.deadline is not None
    late_hours = 1 if cron_interval(schedule, now=utcnow()) <= timedelta(days=1) else 4
    labels = (f"app.kubernetes.io/name: archiver\n{{i}}app.kubernetes.io/component: {task}\n"
              f"{{i}}archiver/policy: {name}\n")
    refs = env_refs(policy)
    dsns = [ref for ref in refs if ref.source == "archiver-db"]
    settings = [ref for ref in refs if ref.source != "archiver-db"]
    pushgateway = EnvRef("ARCHIVER_PUSHGATEWAY", "archiver-settings", True)
    ordered = dsns + [ref for ref in settings if ref.source == "archiver-notify"] + [pushgateway] + \
        [ref for ref in settings if ref.source == "archiver-settings" and ref.name != pushgateway.name]
    env = "".join(env_entry(ref, " " * 16) for ref in ordered)
    if dsns:
        env = " " * 16 + "# Only this policy's own database: the other DSNs never reach this pod.\n" + env
    drill = task == "verify"
    why_backoff = text.why_backoff.replace("\n", "\n      # ")
    deadline = int(size.deadline.total_seconds())
    shards = policy.archive.shards if task == "archive" and policy.archive is not None else 1
    args = f'"run", "{name}", "{task}"' + (f', "--shard", "$(ARCHIVER_SHARD)/{shards}"' if shards > 1 else "")
    return f"""# archiver `run {name} {task}`: {text.summary}
# Same schedule as {_shown_source(policy)} (`task_schedules`), in UTC. Part of the cronjobs alternative:
# deploy with `kubectl apply -k deploy/kubernetes/cronjobs`, never together with deploy/kubernetes/worker.
apiVersion: batch/v1
kind: CronJob
metadata:
  name: archiver-{name}-{task}
  labels:
    {labels.format(i="    ")}spec:
  schedule: "{schedule}"
  timeZone: Etc/UTC
  # A run never overlaps the previous one (archiver's own lock would answer exit 3 anyway).
  concurrencyPolicy: Forbid
  # Started up to {late_hours} h late (controller down, cluster busy), else skipped until the next run.
  startingDeadlineSeconds: {late_hours * 3600}
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 3
  jobTemplate:
    metadata:
      labels:
        {labels.format(i="        ")}    spec:
{_indexed(shards, text.backoff)}      # backoffLimit {text.backoff}{" per shard" if shards > 1 else ""}: {why_backoff}
      backoffLimit: {text.backoff * shards}
      podFailurePolicy:
        rules:
          # 2 usage/policy error, 3 lock busy, 4 verification failed, 5 held back: retrying cannot help.
          - action: FailJob
            onExitCodes:
              containerName: archiver
              operator: In
              values: [2, 3, 4, 5]
          # A pod evicted by a node drain was interrupted, not failed: it does not count as a try.
          - action: Ignore
            onPodConditions:
              - type: DisruptionTarget
                status: "True"
      # activeDeadlineSeconds {deadline}: {text.why_deadline}
      activeDeadlineSeconds: {deadline}
      # Finished Jobs (and their logs) are kept 8 days: a weekly task's last run stays visible.
      ttlSecondsAfterFinished: 691200
      template:
        metadata:
          labels:
            {labels.format(i="            ")}        spec:
          restartPolicy: Never
          serviceAccountName: archiver
          automountServiceAccountToken: false
          enableServiceLinks: false
          # SIGTERM makes archiver abort cleanly (uploads aborted, no manifest written, scratch stopped).
          terminationGracePeriodSeconds: 120
          securityContext:
            runAsNonRoot: true
            runAsUser: 10001
            runAsGroup: 10001
            fsGroup: 10001
            seccompProfile:
              type: RuntimeDefault
          containers:
            - name: archiver
              image: {image}
              imagePullPolicy: IfNotPresent
              args: [{args}]
              env:
{env}{_shard_env() if shards > 1 else ""}                - name: ARCHIVER_POLICIES
                  value: /etc/archiver/policies
                - name: TMPDIR
                  value: /scratch
              # S3 keys, if any; optional so that IRSA / EKS pod identity (no keys at all) works.
              envFrom:
                - secretRef:
                    name: archiver-s3
                    optional: true
              resources:
                requests:
                  cpu: {_cpu(size.cpu)}
                  memory: {_quantity(size.memory)}
                limits:
                  cpu: {_cpu(size.cpu_limit)}
                  memory: {_quantity(size.memory_limit)}
{container_hardening(14)}{_shm_mount() if drill else ""}          volumes:
            - name: policies
              configMap:
                name: archiver-policies
{_drill_scratch_comment() if drill else ""}            - name: scratch
              emptyDir:
                sizeLimit: {size.scratch}
            - name: tmp
              emptyDir:
                sizeLimit: 256Mi
{_shm_volume() if drill else ""}"""


def _indexed(shards: int, backoff: int) -> str:
    """An Indexed Job of ``shards`` pods, each archiving its own share of the ranges."""
    if shards == 1:
        return ""
    return (f"      # archive.shards {shards}: pod K of this Indexed Job runs `archive --shard K/{shards}`; the shards\n"
            "      # split the ranges between them (disjoint, covering) and run side by side; retention waits for all.\n"
            f"      completionMode: Indexed\n      completions: {shards}\n      parallelism: {shards}\n"
            "      # Each shard retries on its own; backoffLimit below is then the sum over the shards.\n"
            f"      backoffLimitPerIndex: {backoff}\n")


def _shard_env() -> str:
    return ("                # This pod's index in the Indexed Job: the K of --shard K/N.\n"
            "                - name: ARCHIVER_SHARD\n                  valueFrom:\n                    fieldRef:\n"
            "                      fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']\n")


def _shown_source(policy: Policy) -> str:
    return f"policies/{Path(policy.source).name}"


def _shm_mount() -> str:
    return "                - name: shm\n                  mountPath: /dev/shm\n"


def _drill_scratch_comment() -> str:
    return ("            # The scratch PostgreSQL and the restored database live here: room for the whole database.\n"
            "            # Larger than a node's free disk? Use a generic ephemeral volume (volumeClaimTemplate) instead.\n")


def _shm_volume() -> str:
    return ("            # PostgreSQL's dynamic shared memory; the runtime's default /dev/shm is only 64 MiB.\n"
            "            - name: shm\n              emptyDir:\n                medium: Memory\n"
            "                sizeLimit: 256Mi\n")


def render_kubernetes(policies: list[Policy], *, image: str = DEFAULT_IMAGE,
                      port: int = METRICS_PORT) -> dict[str, str]:
    """Relative path (under deploy/kubernetes/) -> file text."""
    if not policies:
        raise UsageError("no policy to render (is --policies right?)")
    if not re.fullmatch(r"[\w./:@-]+", image):
        raise UsageError(f"--image: {image!r} is not an image reference (e.g. ghcr.io/acme/archiver:0.1.0)")
    files: dict[str, str] = {}
    ordered = sorted(policies, key=lambda policy: policy.name or "")
    for policy in ordered:
        for task, schedule in task_schedules(policy).items():
            files[f"cronjobs/{policy.name}-{task}.yaml"] = cronjob(policy, task, schedule, image)
    files["cronjobs/kustomization.yaml"] = kustomization(sorted(Path(path).name for path in files))
    dsns = [ref for policy in ordered for ref in env_refs(policy) if ref.source == "archiver-db"]
    settings: dict[str, EnvRef] = {}
    for policy in ordered:
        for ref in env_refs(policy):
            if ref.source != "archiver-db":
                settings.setdefault(ref.name, ref)
    files["worker/deployment.yaml"] = worker_deployment(
        image, port, "".join(env_entry(ref, " " * 12) for ref in [*dsns, *settings.values()]))
    files["worker/service.yaml"] = worker_service(port)
    files["base/policies-configmap.yaml"] = policies_configmap({Path(policy.source).name: Path(policy.source).read_text(
        encoding="utf-8") for policy in ordered})
    return files


def write_files(directory: Path, files: dict[str, str]) -> list[Path]:
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
