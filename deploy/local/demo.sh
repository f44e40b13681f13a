#!/usr/bin/env bash
# make demo: the local stack, topics, two workers, live generated traffic with a CPO spike
# on one campaign after a few minutes, and `kpistream top`. Ctrl-C stops everything this
# script started (the stack too, unless it was already running before).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
KPI="$ROOT/.venv/bin/kpistream"
STACK="$ROOT/deploy/local/stack.sh"
LOGS="$ROOT/.local/demo"
DURATION="${DEMO_DURATION:-2h}"
BACKFILL="${DEMO_BACKFILL:-30m}"
SPIKE_AFTER="${DEMO_SPIKE_AFTER:-33m}"   # backfill + 3 minutes of live traffic
mkdir -p "$LOGS"

stack_was_up=0
status="$(PY="$PY" "$STACK" status 2>/dev/null || true)"
if [[ "$status" == *"kafka: up"* && "$status" == *"redis: up"* ]]; then stack_was_up=1; fi
PY="$PY" "$STACK" up

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "[demo] stopping workers and generator"
  for pid in "${pids[@]}"; do kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$stack_was_up" = 0 ]; then PY="$PY" "$STACK" down; fi
  echo "[demo] stopped"
}
trap cleanup INT TERM EXIT

export KPISTREAM_APP_ID="${KPISTREAM_APP_ID:-kpistream-demo}"
"$KPI" topics create
for port in ${DEMO_PORTS:-6066 6067}; do
  # one data directory per worker (its on-disk customer store), as on separate machines
  KPISTREAM_WEB_PORT=$port KPISTREAM_DATA_DIR="${KPISTREAM_DATA_DIR:-.local/worker-data}/demo-$port" \
    setsid "$KPI" worker > "$LOGS/worker-$port.log" 2>&1 &
  pids+=($!)
done
setsid "$KPI" generate --live --backfill "$BACKFILL" --duration "$DURATION" \
  --orders-per-hour "${DEMO_ORDERS_PER_HOUR:-3000}" --campaigns 12 --seed "${DEMO_SEED:-1}" \
  --anomaly "cmp-003:stop:$SPIKE_AFTER" > "$LOGS/generator.log" 2>&1 &
pids+=($!)

ports=(${DEMO_PORTS:-6066 6067})
cat <<INFO
[demo] workers: http://127.0.0.1:${ports[0]}/metrics and http://127.0.0.1:${ports[1]}/metrics
[demo] Redis:   redis-cli hgetall kpi:1h:all:all   |  redis-cli smembers kpi:index:campaign
[demo] Kafka:   topic kpi-updates (compacted, one message per row change), alerts on kpi-alerts
[demo] logs:    $LOGS   — campaign cmp-003 stops converting ${SPIKE_AFTER} after the start
[demo] Ctrl-C stops everything the demo started
INFO
sleep "${DEMO_TOP_DELAY:-5}"
if [ -n "${DEMO_SECONDS:-}" ]; then
  # non-interactive runs (tests): let it run, print one snapshot, then stop
  sleep "$DEMO_SECONDS"
  "$KPI" top --once --limit "${DEMO_TOP_LIMIT:-20}"
else
  "$KPI" top --limit 40
fi
