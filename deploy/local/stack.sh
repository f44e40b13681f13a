#!/usr/bin/env bash
# Local real-services stack for kpistream: Apache Kafka 3.9 (KRaft, jars from Maven Central)
# and Redis (Debian's redis-server). Idempotent: `up` reuses what already answers, `down`
# stops only what `up` started. Everything lives under .local/ in the repository.
#
#   stack.sh deps     fetch Kafka jars, install redis-server/prometheus (apt, as root)
#   stack.sh up       start (or reuse) Kafka and Redis, wait until each answers a request
#   stack.sh down     stop what `up` started
#   stack.sh status   show what runs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/local"
DATA="${KPISTREAM_LOCAL_DIR:-$ROOT/.local}"
PY="${PY:-$ROOT/.venv/bin/python}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx1g}"
LIBS="$DATA/kafka/libs"

log() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is required: $2"
}

apt_install() {
  # apt_install <command> <package>...: install Debian packages when the command is missing
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    die "$cmd is missing; install the Debian package(s) $* (e.g. sudo apt-get install -y $*)"
  fi
  need apt-get "a Debian system with apt, or install $* yourself"
  if [ ! -f "$DATA/.apt-updated" ]; then
    log "apt-get update"
    apt-get update -q >/dev/null
    mkdir -p "$DATA" && touch "$DATA/.apt-updated"
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

deps() {
  need java "install a Java 17+ runtime (Debian: openjdk-17-jre-headless)"
  if ! ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
    need mvn "install Maven (Debian: maven) to fetch the Kafka jars from Maven Central"
    log "fetching Kafka jars with mvn into $LIBS"
    mkdir -p "$LIBS"
    mvn -q -B -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS" || die "mvn could not fetch the Kafka jars"
  fi
  apt_install redis-server redis-server redis-tools
  apt_install promtool prometheus
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_ping() { [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

kafka_ready() { "$PY" "$HERE/wait_kafka.py" "127.0.0.1:$KAFKA_PORT" "${1:-3}" 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

render() {  # render <template> <output>
  sed -e "s#@DATA_DIR@#$DATA#g" -e "s#@KAFKA_PORT@#$KAFKA_PORT#g" \
      -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" "$1" > "$2"
}

up_redis() {
  if redis_ping; then
    if pid_alive "$DATA/redis/redis.pid"; then log "redis: running (started by stack.sh)"
    else log "redis: reusing the server already answering on port $REDIS_PORT"; fi
    return 0
  fi
  mkdir -p "$DATA/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --pidfile "$DATA/redis/redis.pid" --dir "$DATA/redis" --logfile "$DATA/redis/redis.log" \
    --save '' --appendonly no >/dev/null
  for _ in $(seq 1 50); do redis_ping && { log "redis: started on port $REDIS_PORT"; return 0; }
    sleep 0.2; done
  die "redis did not answer PING; see $DATA/redis/redis.log"
}

up_kafka() {
  if kafka_ready 2; then
    if pid_alive "$DATA/kafka/kafka.pid"; then log "kafka: running (started by stack.sh)"
    else log "kafka: reusing the broker already answering on port $KAFKA_PORT"; fi
    return 0
  fi
  if pid_alive "$DATA/kafka/kafka.pid"; then
    log "kafka: process $(cat "$DATA/kafka/kafka.pid") is starting; waiting"
  else
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something that is not Kafka"
    mkdir -p "$DATA/kafka"
    render "$HERE/kafka/server.properties.in" "$DATA/kafka/server.properties"
    render "$HERE/kafka/log4j.properties.in" "$DATA/kafka/log4j.properties"
    if [ ! -f "$DATA/kafka/data/meta.properties" ]; then
      local cluster_id
      cluster_id="$("$PY" -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
      java -cp "$LIBS/*" -Dlog4j.configuration="file:$DATA/kafka/log4j.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$DATA/kafka/server.properties" \
        >/dev/null || die "kafka storage format failed"
    fi
    # shellcheck disable=SC2086
    nohup java $KAFKA_HEAP -XX:+UseG1GC -cp "$LIBS/*" \
      -Dlog4j.configuration="file:$DATA/kafka/log4j.properties" \
      kafka.Kafka "$DATA/kafka/server.properties" > "$DATA/kafka/stdout.log" 2>&1 &
    echo $! > "$DATA/kafka/kafka.pid"
  fi
  if kafka_ready 90; then log "kafka: started on port $KAFKA_PORT"; return 0; fi
  tail -n 30 "$DATA/kafka/server.log" "$DATA/kafka/stdout.log" >&2 || true
  die "kafka did not answer a metadata request within 90 s"
}

stop_pid() {  # stop_pid <name> <pidfile>
  local pidfile="$2"
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; log "$1: not started by stack.sh"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "$1: stopped"
}

status() {
  if redis_ping; then log "redis: up on port $REDIS_PORT"; else log "redis: down"; fi
  if kafka_ready 2; then log "kafka: up on port $KAFKA_PORT"; else log "kafka: down"; fi
}

case "${1:-}" in
  deps) deps ;;
  up) deps; [ -x "$PY" ] || die "no virtualenv at $PY (run: make venv)"; up_redis; up_kafka ;;
  down) stop_pid kafka "$DATA/kafka/kafka.pid"; stop_pid redis "$DATA/redis/redis.pid" ;;
  status) status ;;
  *) echo "usage: $0 deps|up|down|status" >&2; exit 2 ;;
esac
