#!/usr/bin/env bash
# Runs the whole system in the foreground: the Kafka broker, token_api and the activator, on
# DATABASE_URL (default: the embedded SQLite file). Everything listens on 127.0.0.1 only.
#
#   scripts/run.sh         run until Ctrl-C, SIGINT or SIGTERM to this script, or `make stop`
#   scripts/run.sh stop    stop a running `scripts/run.sh` of this checkout (what `make stop` does)
#
# The admin credential is random per checkout, made on the first run and kept in
# .run/admin-token (mode 600); set ADMIN_TOKEN to use your own.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="$here/.venv/bin/python"
pid_file="$here/.run/run.pid"
token_file="$here/.run/admin-token"
pids=()

if [ "${1:-}" = stop ]; then
  [ -f "$pid_file" ] || exit 0
  pid="$(cat "$pid_file")"
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  exit 0
fi

cleanup() {
  trap - INT TERM EXIT
  trap '' PIPE  # `make run | tee log` loses its reader on Ctrl-C; still stop everything
  if ! { echo; } 2>/dev/null; then exec >/dev/null 2>&1; fi  # nobody reads our output now
  echo "run.sh: stopping the services and the broker..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${started_broker:-0}" = 1 ]; then scripts/kafka.sh stop; fi
  if [ "$(cat "$pid_file" 2>/dev/null)" = $$ ]; then rm -f "$pid_file"; fi
  echo "run.sh: stopped."
}
trap 'cleanup; exit 0' INT TERM  # asked to stop: a clean stop is a success
trap cleanup EXIT

admin_token() {
  if [ ! -s "$token_file" ]; then
    (umask 077 && "$py" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$token_file")
    echo "run.sh: a new admin credential for this checkout is in .run/admin-token:" >&2
    echo "  $(cat "$token_file")" >&2
  fi
  cat "$token_file"
}

mkdir -p "$here/.run"
export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$KAFKA_PORT}"
started_broker=0
if ! scripts/kafka.sh status; then
  scripts/kafka.sh start  # refuses a port that another program holds
  started_broker=1
fi
echo $$ >"$pid_file"  # for `scripts/run.sh stop` (make stop)
"$py" -m waiting_core.migrate

if [ -z "${ADMIN_TOKEN:-}" ]; then
  ADMIN_TOKEN="$(admin_token)"
  export ADMIN_TOKEN
fi
"$py" -m token_api &
pids+=($!)
"$py" -m activator &
pids+=($!)

"$py" -m tools.system "127.0.0.1:${TOKEN_API_PORT:-50051}" "127.0.0.1:${ACTIVATOR_PORT:-50052}"

cat <<MSG

The waiting room is up on 127.0.0.1: token_api on :${TOKEN_API_PORT:-50051}, activator on :${ACTIVATOR_PORT:-50052}.
The admin credential is in .run/admin-token. Try it (README.md has these lines):

  grpcurl -plaintext -d '{"user_id":"u1","schedule_id":1}' localhost:50051 waiting.v1.TokenService/IssueToken
  grpcurl -plaintext -d '{"schedule_id":1}' localhost:50052 waiting.v1.QueueStatusService/GetQueueStatus
  grpcurl -plaintext localhost:50051 list

Ctrl-C (or \`make stop\` from another shell) stops everything.
MSG

wait -n "${pids[@]}"
