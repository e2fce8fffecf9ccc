"""The worker alternative's manifests and the files both alternatives share, for ``archiver render kubernetes``."""

from __future__ import annotations

# Every archiver container, CronJob or worker: no privilege, a read-only root filesystem, the
# policies mounted read-only, writes only to /scratch and /tmp.
_CONTAINER_HARDENING = """\
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
volumeMounts:
  - name: policies
    mountPath: /etc/archiver/policies
    readOnly: true
  - name: scratch
    mountPath: /scratch
  - name: tmp
    mountPath: /tmp
"""


def container_hardening(indent: int) -> str:
    """The container's securityContext and its three volume mounts, at ``indent`` spaces."""
    return "".join(" " * indent + line + "\n" for line in _CONTAINER_HARDENING.splitlines())


WORKER_DEPLOYMENT = """\
# `archiver worker`: every policy's tasks on their cron schedules (UTC), each run a child
# `archiver run NAME TASK` in this pod. Serves /metrics and /healthz on port {port}.
# Changed policies: a ConfigMap update reaches the mounted files within a minute or so; then
#   kubectl -n archiver exec deploy/archiver-worker -- sh -c 'kill -HUP 1'
# makes the worker reload them (tini passes SIGHUP on; an invalid file keeps its old policy).
# Point-in-time recovery: the worker also keeps one WAL receiver (archiver wal-receive) per policy
# with pitr.wal.method: stream - CronJobs cannot, a receiver never ends - spooling on the
# archiver-wal-spool PersistentVolumeClaim.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: archiver-worker
  labels:
    app.kubernetes.io/name: archiver
    app.kubernetes.io/component: worker
spec:
  # Exactly one worker, and never two at once during a rollout (Recreate): two schedulers would
  # start every task twice and race for its lock.
  replicas: 1
  strategy:
    type: Recreate
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      app.kubernetes.io/name: archiver
      app.kubernetes.io/component: worker
  template:
    metadata:
      labels:
        app.kubernetes.io/name: archiver
        app.kubernetes.io/component: worker
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "{port}"
        prometheus.io/path: /metrics
    spec:
      serviceAccountName: archiver
      automountServiceAccountToken: false
      enableServiceLinks: false
      # On SIGTERM the worker stops taking work, lets running tasks finish for --grace-period
      # (300 s), then aborts them cleanly (up to 60 s more). The pod must outlast both.
      terminationGracePeriodSeconds: 420
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
          args:
            - worker
            - --max-parallel
            - "2"
            - --listen
            - 0.0.0.0
            - --port
            - "{port}"
            - --grace-period
            - "300"
            - --misfire-grace
            - "3600"
          ports:
            - name: metrics
              containerPort: {port}
              protocol: TCP
          env:
            # The worker runs every policy, so it gets every DSN.
{env}            - name: ARCHIVER_POLICIES
              value: /etc/archiver/policies
            - name: TMPDIR
              value: /scratch
            - name: ARCHIVER_WAL_SPOOL
              value: /var/lib/archiver/wal-spool
          # S3 keys, if any; optional so that IRSA / EKS pod identity (no keys at all) works.
          envFrom:
            - secretRef:
                name: archiver-s3
                optional: true
          # Ready while it schedules; 503 from the moment it stops taking work.
          readinessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          # Restarts a wedged worker. Kubernetes stops liveness probes once a pod is terminating, so
          # the 503 during the grace period cannot cut running tasks short.
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            initialDelaySeconds: 30
            periodSeconds: 30
            timeoutSeconds: 5
            failureThreshold: 4
          # Up to --max-parallel 2 tasks at once: a restore drill (a PostgreSQL, up to 4 GiB) next
          # to a streaming backup or archive (about 300 MiB each).
          resources:
            requests:
              cpu: "500m"
              memory: 1Gi
            limits:
              cpu: "2"
              memory: 5Gi
{hardening}            - name: shm
              mountPath: /dev/shm
            - name: wal-spool
              mountPath: /var/lib/archiver/wal-spool
      volumes:
        - name: policies
          configMap:
            name: archiver-policies
        # Restore drills of every policy run here: room for the largest restored database.
        # Larger than a node's free disk? Use a generic ephemeral volume (volumeClaimTemplate) instead.
        - name: scratch
          emptyDir:
            sizeLimit: 150Gi
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        # PostgreSQL's dynamic shared memory; the runtime's default /dev/shm is only 64 MiB.
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: 256Mi
        - name: wal-spool
          persistentVolumeClaim:
            claimName: archiver-wal-spool
"""

WORKER_SERVICE = """\
# The worker's /metrics for Prometheus (scrape annotations; with the Prometheus Operator, point a
# ServiceMonitor at the port named "metrics" instead).
apiVersion: v1
kind: Service
metadata:
  name: archiver-worker
  labels:
    app.kubernetes.io/name: archiver
    app.kubernetes.io/component: worker
  annotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: "{port}"
    prometheus.io/path: /metrics
spec:
  type: ClusterIP
  selector:
    app.kubernetes.io/name: archiver
    app.kubernetes.io/component: worker
  ports:
    - name: metrics
      port: {port}
      targetPort: metrics
      protocol: TCP
"""

CRONJOBS_KUSTOMIZATION = """\
# archiver as Kubernetes CronJobs: one CronJob per (policy, task), each on the policy's own
# schedule, each pod with only its own database's DSN. Metrics go to a Pushgateway.
#   kubectl apply -k deploy/kubernetes/cronjobs
# The alternative is deploy/kubernetes/worker. Never run both: every task would run twice on
# schedule (archiver's locks keep them from overlapping: the loser exits 3, "lock busy").
# Switching: kubectl delete -k deploy/kubernetes/worker, then apply this one.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: archiver
labels:
  - pairs:
      app.kubernetes.io/part-of: archiver
      archiver/deployment: cronjobs
    includeSelectors: false
resources:
  - ../base
{resources}# Your registry and tag, without editing the CronJob files:
# images:
#   - name: registry.example.com/platform/archiver
#     newName: ghcr.io/acme/archiver
#     newTag: 0.1.0
"""

POLICIES_CONFIGMAP_HEAD = (
    "# The shipped policies (policies/*.yaml), mounted read-only at /etc/archiver/policies.\n"
    "# Exact copies, written by `archiver render kubernetes` (tests/test_deploy.py checks them).\n"
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: archiver-policies\ndata:\n")


def worker_deployment(image: str, port: int, env: str) -> str:
    return WORKER_DEPLOYMENT.format(image=image, port=port, env=env, hardening=container_hardening(10))


def worker_service(port: int) -> str:
    return WORKER_SERVICE.format(port=port)


def kustomization(files: list[str]) -> str:
    return CRONJOBS_KUSTOMIZATION.format(resources="".join(f"  - {name}\n" for name in files))


def policies_configmap(files: dict[str, str]) -> str:
    """Every policy file verbatim, as a block scalar per file."""
    lines = []
    for name, text in sorted(files.items()):
        lines.append(f"  {name}: |" + ("" if text.endswith("\n") else "-"))
        lines.extend(f"    {line}" if line else "" for line in text.splitlines())
    return POLICIES_CONFIGMAP_HEAD + "\n".join(lines) + "\n"
