#!/usr/bin/env bash
# Start a private Docker engine for the Compose tests (tests/compose, `pytest -m compose`).
#
# CI machines have no engine running and no registry: this installs Debian's docker.io, starts dockerd
# in the background with its own data and exec roots, and waits until `docker info` answers. No
# iptables rules, no IP forwarding, no masquerading: containers reach each other on the bridge and the
# host reaches them through docker-proxy on 127.0.0.1, nothing else changes on the machine.
#
# Prints the DOCKER_HOST to export. State lives under $KEEL_DOCKER_ROOT (default: .cache/docker-engine
# in the repo); infra/ci/docker-down.sh stops it by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="${KEEL_DOCKER_ROOT:-$PWD/.cache/docker-engine}"
SOCK="$ROOT/docker.sock"
mkdir -p "$ROOT"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  echo "docker-up: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
  }
fi

if [[ -f "$ROOT/dockerd.pid" ]] && kill -0 "$(cat "$ROOT/dockerd.pid")" 2>/dev/null; then
  echo "docker-up: dockerd already running (pid $(cat "$ROOT/dockerd.pid"))" >&2
else
  setsid dockerd \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --data-root "$ROOT/data" --exec-root "$ROOT/exec" \
    --pidfile "$ROOT/dockerd.pid" -H "unix://$SOCK" \
    >"$ROOT/dockerd.log" 2>&1 < /dev/null &
fi

export DOCKER_HOST="unix://$SOCK"
for _ in $(seq 1 150); do
  if docker info >/dev/null 2>&1; then
    echo "docker-up: engine ready" >&2
    echo "DOCKER_HOST=$DOCKER_HOST"
    exit 0
  fi
  sleep 0.2
done
echo "docker-up: dockerd did not answer within 30 s; see $ROOT/dockerd.log" >&2
tail -20 "$ROOT/dockerd.log" >&2 || true
exit 1
