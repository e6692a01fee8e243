#!/usr/bin/env bash
# Runs a private PostgreSQL cluster from Debian's packages, on loopback, for local runs and tests.
#
#   scripts/postgres.sh install   apt-get install postgresql when no server binaries are found
#   scripts/postgres.sh start     initdb if needed, start in the background, wait until ready
#   scripts/postgres.sh stop      fast shutdown
#   scripts/postgres.sh remove    stop, then delete the cluster's files
#   scripts/postgres.sh url       print the asyncpg DATABASE_URL of the cluster
#   scripts/postgres.sh datadir   print where the cluster's files live
#
# Settings (environment):
#   PG_PORT      port on 127.0.0.1 (default 55432, away from a system cluster on 5432)
#   PG_DATA_DIR  the cluster's directory (default: see below)
#   PG_SHARED_BUFFERS  PostgreSQL's page cache (default 2GB: a sale's tokens and their
#                indexes, 1.4 GB after the bench's two 1,000,000-token loads, stay in it)
#
# PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user. That
# user cannot enter a checkout in a private folder (under /root, mode 700), so as root the
# cluster's files live under the postgres user's home, in a folder named after the checkout:
# /var/lib/postgresql/waiting-room/<checkout hash>/postgres-$PG_PORT. Otherwise they live
# in .run/postgres-$PG_PORT.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
port="${PG_PORT:-55432}"

state_root() {
  if [ "$(id -u)" = 0 ]; then
    local owner_home checkout
    owner_home="$(getent passwd postgres | cut -d: -f6)"
    checkout="$(printf '%s' "$here" | sha256sum | head -c 12)"
    echo "${owner_home:-/var/lib/postgresql}/waiting-room/$checkout"
  else
    echo "$here/.run"
  fi
}

data_dir="${PG_DATA_DIR:-$(state_root)/postgres-$port}"
log_file="$data_dir.log"

bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$dir" ] || [ ! -x "$dir/pg_ctl" ]; then
    echo "postgres.sh: no PostgreSQL server found; run 'scripts/postgres.sh install'" >&2
    return 1
  fi
  echo "$dir"
}

as_owner() {
  # From /, so that the owner never tries to enter a folder it cannot (the checkout's).
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}


install() {
  if bin_dir >/dev/null 2>&1; then return 0; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
}

start() {
  local bin
  bin="$(bin_dir)"
  if [ "$(id -u)" = 0 ] && [ -z "${PG_DATA_DIR:-}" ]; then
    # Below the postgres user's home, in folders it owns (whatever root's umask is).
    install -d -o postgres -g postgres "$(dirname "$(state_root)")" "$(state_root)"
  else
    mkdir -p "$(dirname "$data_dir")"
  fi
  if [ ! -f "$data_dir/PG_VERSION" ]; then
    mkdir -p "$data_dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$data_dir"
    as_owner "$bin/initdb" -D "$data_dir" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if as_owner "$bin/pg_ctl" -D "$data_dir" status >/dev/null 2>&1; then
    echo "postgres.sh: already running on 127.0.0.1:$port"
    return 0
  fi
  if psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    # Another checkout's cluster holds the port; it takes the same trusted postgres user.
    echo "postgres.sh: a PostgreSQL server already answers on 127.0.0.1:$port; using it"
    return 0
  fi
  touch "$log_file"
  [ "$(id -u)" = 0 ] && chown postgres: "$log_file"
  if ! as_owner "$bin/pg_ctl" -D "$data_dir" -l "$log_file" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k /tmp -c max_connections=200 \
        -c fsync=${PG_FSYNC:-on} -c synchronous_commit=on -c shared_buffers=${PG_SHARED_BUFFERS:-2GB} \
        -c max_wal_size=8GB -c checkpoint_timeout=15min" >/dev/null; then
    echo "postgres.sh: start failed; its log:" >&2
    tail -n 40 "$log_file" >&2
    return 1
  fi
  echo "postgres.sh: PostgreSQL ready on 127.0.0.1:$port"
}

stop() {
  local bin
  bin="$(bin_dir)" || return 0
  [ -f "$data_dir/PG_VERSION" ] || return 0
  as_owner "$bin/pg_ctl" -D "$data_dir" -m fast stop >/dev/null 2>&1 || true
}

remove() {
  stop
  rm -rf "$data_dir" "$log_file"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  remove) remove ;;
  datadir) echo "$data_dir" ;;
  url) echo "postgresql+asyncpg://postgres@127.0.0.1:$port/postgres" ;;
  *)
    sed -n '2,21p' "$0" >&2
    exit 2
    ;;
esac
