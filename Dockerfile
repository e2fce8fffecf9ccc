# syntax=docker/dockerfile:1
#
# archiver: backups to S3, a Parquet cold tier and restore drills for PostgreSQL / TimescaleDB.
# One image for every way of running it: `archiver run NAME TASK` (cron, Kubernetes CronJobs) and
# `archiver worker` (a long-running scheduler). See README.md, "Running it for real".
#
#   docker build -t archiver:0.1.0 .
#   docker build -t archiver:0.1.0 --build-arg PG_SERVER_MAJORS="16" --build-arg TIMESCALEDB_VERSION=2.17.2 .
#
# Build arguments:
#   PG_CLIENT_MAJORS     pg_dump/pg_restore/psql of every supported server major. archiver picks the
#                        copy that matches the server at run time (/usr/lib/postgresql/<major>/bin), so
#                        one image backs up 13 through 17 side by side. About 9 MB each.
#   PG_SERVER_MAJORS     initdb/pg_ctl/postgres for `archiver verify`'s throw-away instance inside the
#                        pod. A drill restores a dump into its own major or a newer one, so the newest
#                        major alone covers every plain-PostgreSQL dump; 15, 16 and 17 are the majors
#                        current TimescaleDB releases are built for, and a TimescaleDB dump needs its
#                        extension version on a server it supports. Each server major costs about
#                        55 MB (plus about 110 MB of LLVM and 35 MB of ICU that they share): trim the
#                        list to the majors your servers run.
#   TIMESCALEDB_VERSION  empty (default): no TimescaleDB. Set it to the extension version your
#                        telemetry database runs (SELECT extversion FROM pg_extension) for drills of
#                        TimescaleDB dumps: the restore needs exactly that version. The packages come
#                        from Timescale's apt repository; its signing key is pinned by fingerprint.

# The base image, pinned by digest: a rebuild gets the same Python and Debian until the pin is moved.
# Moving it (monthly, and for Python or Debian security releases): look up the tag's current digest
#   docker buildx imagetools inspect python:3.11-slim-bookworm      (the "Digest:" line), or
#   skopeo inspect --format '{{.Digest}}' docker://docker.io/library/python:3.11-slim-bookworm
# put it after the @, rebuild, run the tests in the image. This digest was copied from public Dockerfiles
# that pin the same tag and has not been checked against the registry (none is reachable where it was
# written): check it as above before the first release build.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---- stage 1: wheels of archiver and all its dependencies (all ship binary wheels: no compiler)
# requirements.lock pins every dependency, with hashes (pip-compile; README "Packaging" says how to
# refresh it); only archiver's own wheel is built from source.
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY archiver ./archiver
RUN pip wheel --no-cache-dir --wheel-dir /wheels --require-hashes -r requirements.lock \
 && pip wheel --no-cache-dir --wheel-dir /wheels --no-deps .

# ---- stage 2: the runtime image
FROM ${PYTHON_IMAGE}

ARG PG_CLIENT_MAJORS="13 14 15 16 17"
ARG PG_SERVER_MAJORS="15 16 17"
ARG TIMESCALEDB_VERSION=""
ARG TIMESCALEDB_KEY_FINGERPRINT=0641009A8366FDE4444A7B62E7391C94080429FF
ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="archiver" \
      org.opencontainers.image.description="Backups, a Parquet cold tier and restore drills for side-by-side PostgreSQL / TimescaleDB databases" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm" \
      org.opencontainers.image.base.digest="sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The PGDG signing key is not downloaded: it comes inside Debian's own postgresql-common package
# (verified by apt against Debian's archive key), and signed-by limits it to the PGDG source.
# Its fingerprint is B97B 0AFC AA1A 47F0 44F2 44A0 7FCC 7D46 ACCC 4CF8.
# create_main_cluster = false: installing a server package must not create a cluster in the image.
# Versions are not pinned on purpose: PostgreSQL minor releases are security and bug fixes.
# hadolint ignore=DL3008
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates postgresql-common tini; \
    sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf; \
    grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf; \
    . /etc/os-release; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    packages=(); \
    for major in ${PG_CLIENT_MAJORS}; do packages+=("postgresql-client-${major}"); done; \
    for major in ${PG_SERVER_MAJORS}; do packages+=("postgresql-${major}"); done; \
    apt-get install -y --no-install-recommends "${packages[@]}"; \
    for major in ${PG_CLIENT_MAJORS}; do test -x "/usr/lib/postgresql/${major}/bin/pg_dump"; done; \
    for major in ${PG_SERVER_MAJORS}; do test -x "/usr/lib/postgresql/${major}/bin/initdb"; done; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

# Optional TimescaleDB for drills of TimescaleDB dumps. The key file is fetched over HTTPS, but only
# the key with the pinned fingerprint is exported into the keyring apt uses: a different key
# served there leaves the keyring empty and fails the build.
# hadolint ignore=DL3008
RUN set -eux; \
    if [ -z "${TIMESCALEDB_VERSION}" ]; then exit 0; fi; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends curl gpg; \
    gnupg_home="$(mktemp -d)"; \
    curl -fsSL https://packagecloud.io/timescale/timescaledb/gpgkey -o "${gnupg_home}/timescale.asc"; \
    gpg --batch --homedir "${gnupg_home}" --import "${gnupg_home}/timescale.asc"; \
    gpg --batch --homedir "${gnupg_home}" --export "${TIMESCALEDB_KEY_FINGERPRINT}" > /usr/share/keyrings/timescaledb.gpg; \
    test -s /usr/share/keyrings/timescaledb.gpg; \
    rm -rf "${gnupg_home}"; \
    . /etc/os-release; \
    echo "deb [signed-by=/usr/share/keyrings/timescaledb.gpg] https://packagecloud.io/timescale/timescaledb/debian/ ${VERSION_CODENAME} main" \
        > /etc/apt/sources.list.d/timescaledb.list; \
    apt-get update; \
    packages=(); \
    for major in ${PG_SERVER_MAJORS}; do \
        packages+=("timescaledb-2-postgresql-${major}=${TIMESCALEDB_VERSION}~*" \
                   "timescaledb-2-loader-postgresql-${major}=${TIMESCALEDB_VERSION}~*"); \
    done; \
    apt-get install -y --no-install-recommends "${packages[@]}"; \
    apt-get purge -y --auto-remove curl gpg; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

# A fixed numeric user: Kubernetes' runAsNonRoot can only check a numeric USER, and the pod
# security context (runAsUser/runAsGroup/fsGroup 10001) names the same ids. initdb needs the
# user to exist in /etc/passwd. /scratch is the temp dir (TMPDIR): restore drills put a whole
# scratch cluster there, so it is a volume (emptyDir) in Kubernetes.
RUN set -eux; \
    groupadd --system --gid 10001 archiver; \
    useradd --system --uid 10001 --gid 10001 --home-dir /home/archiver --create-home \
            --shell /usr/sbin/nologin archiver; \
    install -d -o 10001 -g 10001 -m 0750 /scratch; \
    install -d -o root -g root -m 0755 /etc/archiver /etc/archiver/policies

# Installed from the wheels of stage 1, bound in for this step only (they leave no layer behind);
# --no-index: nothing else can be installed, so the wheels' versions are requirements.lock's.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-index --find-links /tmp/wheels pg-archiver \
 && archiver --version

# No secrets here: DSNs, passwords and S3 credentials come from the environment at run time
# (Kubernetes Secrets, a root-only env file for cron, or IRSA / pod identity for S3).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/archiver \
    TMPDIR=/scratch \
    ARCHIVER_POLICIES=/etc/archiver/policies \
    TINI_SUBREAPER=1

WORKDIR /home/archiver
USER 10001:10001
EXPOSE 10187

# No HEALTHCHECK: most runs are one-shot `archiver run` tasks (cron, CronJobs), where a health
# check means nothing. The worker's /healthz is probed by the Kubernetes Deployment and by the
# docker-compose service instead.
#
# tini is PID 1: it forwards SIGTERM to archiver (which aborts cleanly on it) and reaps orphans,
# such as a scratch postmaster that pg_ctl left behind after a drill.
ENTRYPOINT ["/usr/bin/tini", "--", "archiver"]
CMD ["--help"]
