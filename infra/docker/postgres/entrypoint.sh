#!/bin/sh
# First start: initdb with SCRAM passwords, a `keel` role and database. Later starts: just run.
set -eu
: "${KEEL_PG_PASSWORD:?set KEEL_PG_PASSWORD (an env file, see docs/operations.md)}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\n' "$KEEL_PG_PASSWORD" >"$pwfile"
  initdb --username=postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql -v ON_ERROR_STOP=1 -q --username=postgres -d postgres \
    -v pw="$KEEL_PG_PASSWORD" <<'SQL'
CREATE ROLE keel LOGIN PASSWORD :'pw';
CREATE DATABASE keel OWNER keel;
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -c listen_addresses='*'
