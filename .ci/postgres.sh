#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL server on 127.0.0.1:55432 (user/password/db: nas) for the tests.
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
DATA=${NAS_PG_DIR:-/tmp/nas-pg}
PORT=55432
case "${1:-start}" in
  start)
    [ -n "$BIN" ] || { echo "postgres.sh: no PostgreSQL binaries found"; exit 1; }
    id postgres >/dev/null 2>&1 || { echo "postgres.sh: no postgres user"; exit 1; }
    if [ -f "$DATA/postmaster.pid" ]; then su postgres -c "$BIN/pg_ctl -D $DATA stop -m fast" >/dev/null 2>&1 || true; fi
    rm -rf "$DATA"; mkdir -p "$DATA"; chown postgres "$DATA"
    su postgres -c "$BIN/initdb -D $DATA -A trust -U postgres" >/dev/null
    su postgres -c "$BIN/pg_ctl -D $DATA -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300' -l $DATA/log -w start" >/dev/null
    su postgres -c "$BIN/psql -h 127.0.0.1 -p $PORT -U postgres -qc \"CREATE USER nas PASSWORD 'nas' CREATEDB\"" >/dev/null
    su postgres -c "$BIN/psql -h 127.0.0.1 -p $PORT -U postgres -qc 'CREATE DATABASE nas OWNER nas'" >/dev/null
    echo "postgres.sh: PostgreSQL running on 127.0.0.1:$PORT";;
  stop)
    [ -f "$DATA/postmaster.pid" ] && su postgres -c "$BIN/pg_ctl -D $DATA stop -m fast" >/dev/null;;
esac
