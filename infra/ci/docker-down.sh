#!/usr/bin/env bash
# Stop the engine infra/ci/docker-up.sh started (by its pid, nothing else) and remove what dockerd
# leaves behind on the host: the docker0 bridge and the network namespace mount.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="${KEEL_DOCKER_ROOT:-$PWD/.cache/docker-engine}"
PIDFILE="$ROOT/dockerd.pid"
export DOCKER_HOST="unix://$ROOT/docker.sock"

if [[ -f "$PIDFILE" ]]; then
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    # Containers first, so nothing is left running in a namespace we are about to unmount.
    ids="$(docker ps -q 2>/dev/null || true)"
    [[ -n "$ids" ]] && docker kill $ids >/dev/null 2>&1 || true
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
  fi
  rm -f "$PIDFILE"
fi
ip link show docker0 >/dev/null 2>&1 && ip link del docker0 || true
for mnt in $(awk -v root="$ROOT" '$2 ~ "^"root {print $2}' /proc/mounts | sort -r); do
  umount -l "$mnt" 2>/dev/null || true
done
echo "docker-down: stopped" >&2
