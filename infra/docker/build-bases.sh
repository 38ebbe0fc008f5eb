#!/usr/bin/env bash
# Build Keel's local base images without any registry (image pulls fail on these machines):
#   local/keel-debian-py:bookworm  Debian bookworm minbase + python3, from debootstrap, `docker import`ed
#   local/keel-python:<version>    that + an empty venv at /opt/keel + every wheel Keel needs in /wheels
# `docker compose build` then builds the service, NATS, PostgreSQL and Prometheus images on top of them.
#
# The debootstrap rootfs is cached as a tarball under .cache/docker-build, keyed by suite, package list
# and mirror, and the wheels keyed by uv.lock, so a second run only re-imports (seconds).
# Needs: docker (DOCKER_HOST), debootstrap (root), uv (.tools/bin/uv or PATH), network to the Debian
# mirror and PyPI on a cold cache.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${KEEL_BUILD_CACHE:-$PWD/.cache/docker-build}"
SUITE=bookworm
MIRROR="${KEEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-venv brings ensurepip (a bundled pip wheel), so wheels install offline into a venv.
PACKAGES="python3,python3-venv,ca-certificates"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
UV="${UV:-$(command -v .tools/bin/uv || command -v uv)}"
PIP_PY="${PIP_PY:-$(test -x .tools/bin/python && echo .tools/bin/python || command -v python3)}"
mkdir -p "$CACHE"
t0=$SECONDS

# 1. The Debian base (debootstrap, ~80 s cold).
key="$(printf '%s|%s|%s' "$SUITE" "$PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)"
tarball="$CACHE/rootfs-$SUITE-$key.tar"
if [[ ! -s "$tarball" ]]; then
  echo "build-bases: debootstrap $SUITE ($PACKAGES)" >&2
  work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$work"; exit 1; }
  # Package lists and caches are dead weight in an image; the apt sources stay for derived images.
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
fi
if ! docker image inspect "local/keel-debian-py:$SUITE-$key" >/dev/null 2>&1; then
  docker import - "local/keel-debian-py:$SUITE-$key" <"$tarball" >/dev/null
fi
docker tag "local/keel-debian-py:$SUITE-$key" "local/keel-debian-py:$SUITE"
echo "build-bases: local/keel-debian-py:$SUITE ready ($((SECONDS - t0)) s)" >&2

# 2. Wheels: the workspace packages, and every third-party requirement pinned by uv.lock.
wkey="$(cat uv.lock pyproject.toml */pyproject.toml services/*/pyproject.toml | sha256sum | cut -c1-12)"
wheels="$CACHE/wheels-$wkey"
if [[ ! -f "$wheels/.complete" ]]; then
  echo "build-bases: building wheels" >&2
  rm -rf "$wheels" && mkdir -p "$wheels"
  "$UV" export --frozen --no-dev --all-packages --no-emit-workspace --no-hashes --format requirements.txt \
    -o "$wheels/requirements.txt" >/dev/null
  "$PIP_PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -r "$wheels/requirements.txt" -w "$wheels"
  "$UV" build --all-packages --wheel -o "$wheels" >/dev/null 2>&1
  touch "$wheels/.complete"
fi
context="$CACHE/python-context"
rm -rf "$context" && mkdir -p "$context/wheels"
cp infra/docker/python/Dockerfile "$context/Dockerfile"
cp "$wheels"/*.whl "$context/wheels/"
docker build -q -t "local/keel-python:$VERSION" "$context" >/dev/null
echo "build-bases: local/keel-python:$VERSION ready ($((SECONDS - t0)) s)" >&2
