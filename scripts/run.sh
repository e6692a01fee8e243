#!/usr/bin/env bash
# Runs the whole system in the foreground: the Kafka broker, token_api and the activator, on
# DATABASE_URL (default: the embedded SQLite file). Ctrl-C stops all three cleanly.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="$here/.venv/bin/python"
pids=()

cleanup() {
  trap - INT TERM EXIT
  trap '' PIPE  # `make run | tee log` loses its reader on Ctrl-C; still stop everything
  if ! { echo; } 2>/dev/null; then exec >/dev/null 2>&1; fi  # nobody reads our output now
  echo "run.sh: stopping the services and the broker..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${started_broker:-0}" = 1 ]; then scripts/kafka.sh stop; fi
  echo "run.sh: stopped."
}
trap cleanup INT TERM EXIT

started_broker=0
if ! scripts/kafka.sh status; then
  scripts/kafka.sh start
  started_broker=1
fi
"$py" -m waiting_core.migrate

# A development credential for the admin API; set your own ADMIN_TOKEN in production.
export ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token}"
"$py" -m token_api &
pids+=($!)
"$py" -m activator &
pids+=($!)

"$py" -m tools.system "127.0.0.1:${TOKEN_API_PORT:-50051}" "127.0.0.1:${ACTIVATOR_PORT:-50052}"

cat <<MSG

The waiting room is up: token_api on :${TOKEN_API_PORT:-50051}, activator on :${ACTIVATOR_PORT:-50052}.
Try it (grpcurl: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3):

  grpcurl -plaintext -d '{"user_id":"u1","schedule_id":1}' localhost:50051 waiting.v1.TokenService/IssueToken
  grpcurl -plaintext -d '{"token_id":"<token_id from above>"}' localhost:50052 waiting.v1.QueueStatusService/GetTokenStatus
  grpcurl -plaintext -d '{"schedule_id":1}' localhost:50052 waiting.v1.QueueStatusService/GetQueueStatus
  grpcurl -plaintext -H "authorization: Bearer ${ADMIN_TOKEN}" -d '{"schedule":{"schedule_id":1,"capacity":10}}' localhost:50051 waiting.v1.ScheduleService/UpsertSchedule
  grpcurl -plaintext localhost:50051 list

Press Ctrl-C to stop.
MSG

wait -n "${pids[@]}"
