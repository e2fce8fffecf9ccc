#!/usr/bin/env bash
# Builds a local PostgreSQL container image for restore drills with `verify.scratch.kind: container`
# on machines that cannot pull images (the test machine: podman with runc, no registry access).
# It behaves like the official postgres images: an entrypoint that runs initdb on first start
# (POSTGRES_PASSWORD / POSTGRES_HOST_AUTH_METHOD) and then execs the given `postgres ...` command.
#
# Usage: scripts/build-scratch-image.sh [IMAGE] [PG_MAJOR]   (default archiver-scratch:pg15 15)
# Idempotent: does nothing when the image exists. Needs root, podman, debootstrap.
set -euo pipefail
IMAGE=${1:-archiver-scratch:pg15}
MAJOR=${2:-15}
export DEBIAN_FRONTEND=noninteractive

exec 9>/var/lock/archiver-scratch-image.lock
flock 9
if podman image exists "$IMAGE"; then
  echo "scratch image $IMAGE exists"
  exit 0
fi

MIRROR=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
           | tr ' ' '\n' | grep -E '/debian/?$' | head -n1 || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' \
           /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -E '/debian/?$' | head -n1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /var/tmp/archiver-scratch-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "building $IMAGE from Debian bookworm (postgresql-$MAJOR) via $MIRROR"
debootstrap --variant=minbase --include="postgresql-$MAJOR" bookworm "$ROOTFS" "$MIRROR" \
  >/var/tmp/archiver-scratch-debootstrap.log 2>&1 \
  || { tail -n 30 /var/tmp/archiver-scratch-debootstrap.log >&2; exit 1; }

cat > "$ROOTFS/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# First start: create the cluster the way the official postgres image does, then run the command.
set -e
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "$1" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" -E UTF8 --locale=C.UTF-8 --no-sync \
      --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" --pwfile="$pwfile" >/dev/null
    rm -f "$pwfile"
  else
    initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" -E UTF8 --locale=C.UTF-8 --no-sync \
      --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-trust}" >/dev/null
  fi
  echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >> "$PGDATA/pg_hba.conf"
fi
exec "$@"
ENTRYPOINT
chmod 755 "$ROOTFS/usr/local/bin/docker-entrypoint.sh"
install -d -o "$(chroot "$ROOTFS" id -u postgres)" -g "$(chroot "$ROOTFS" id -g postgres)" "$ROOTFS/var/lib/postgresql/data"

tar -C "$ROOTFS" \
    --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*_*' \
    --exclude="./var/lib/postgresql/$MAJOR/main" --exclude='./usr/share/locale/*' \
    --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
    -c . | podman import -q \
      --change "ENV PATH=/usr/lib/postgresql/$MAJOR/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --change "ENV PGDATA=/var/lib/postgresql/data" \
      --change "ENV LANG=C.UTF-8" \
      --change "USER postgres" \
      --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
      --change 'CMD ["postgres"]' \
      - "$IMAGE" >/dev/null
echo "built $IMAGE"
