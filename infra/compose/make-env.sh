#!/usr/bin/env bash
# Write the Compose project's `.env` (next to docker-compose.yml) with a fresh PostgreSQL password,
# readable by its owner only. Keeps an existing file: the password is already in the database volume.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -f .env ]] && grep -q '^KEEL_PG_PASSWORD=' .env; then
  echo "make-env: .env already has KEEL_PG_PASSWORD; keeping it" >&2
  exit 0
fi
umask 077
password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
printf 'KEEL_PG_PASSWORD=%s\n' "$password" >>.env
chmod 600 .env
echo "make-env: wrote .env (0600)" >&2
