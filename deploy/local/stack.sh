#!/usr/bin/env bash
# Local real-services stack for kpistream: Apache Kafka 3.9 (KRaft, jars from Maven Central)
# and Redis (Debian's redis-server). Idempotent: `up` reuses what already answers, `down`
# stops only what `up` started. Everything lives under .local/ in the repository.
#
#   stack.sh deps     fetch Kafka jars, install redis-server/prometheus (apt, as root)
#   stack.sh up       start (or reuse) Kafka and Redis, wait until each answers a request
#   stack.sh down     stop what `up` started
#   stack.sh status   show what runs
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), REDIS_PORT (6379),
# KPISTREAM_LOCAL_DIR (.local), PY (.venv/bin/python, needs aiokafka), KAFKA_HEAP.
# Concurrent invocations (parallel test sessions) are serialised with a lock file.
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
  log "apt-get update"
  apt-get update -q >/dev/null || die "apt-get update failed"
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing after installing $*"
}

deps() {
  need java "install a Java 17+ runtime (Debian: openjdk-17-jre-headless)"
  if ! ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
    need mvn "install Maven (Debian: maven) to fetch the Kafka jars from Maven Central"
    log "fetching Kafka jars with mvn into $LIBS"
    mkdir -p "$LIBS"
    mvn -q -B -Dstyle.color=never -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIBS" || die "mvn could not fetch the Kafka jars"
  fi
  apt_install redis-server redis-server redis-tools
  apt_install redis-cli redis-tools
  apt_install promtool prometheus
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_ping() { [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

kafka_ready() { "$PY" "$HERE/wait_kafka.py" "127.0.0.1:$KAFKA_PORT" "${1:-3}" 2>/dev/null; }

# pid_alive <pidfile> <pattern>: the recorded process still runs and is the one we started
# (its command line contains <pattern>), not an unrelated process that reused the pid.
pid_alive() {
  [ -f "$1" ] || return 1
  local pid; pid="$(cat "$1" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}
KAFKA_MATCH="kafka.Kafka"
REDIS_MATCH="redis-server"

lock() {  # serialise up/down across concurrent callers; children must not inherit fd 9
  mkdir -p "$DATA"
  exec 9>"$DATA/stack.lock"
  flock -w 600 9 || die "another stack.sh has held $DATA/stack.lock for 10 minutes"
}

render() {  # render <template> <output>
  sed -e "s#@DATA_DIR@#$DATA#g" -e "s#@KAFKA_PORT@#$KAFKA_PORT#g" \
      -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" "$1" > "$2"
}

up_redis() {
  if redis_ping; then
    if pid_alive "$DATA/redis/redis.pid" "$REDIS_MATCH"; then
      log "redis: already up on port $REDIS_PORT (started by stack.sh), reusing it"
    else log "redis: reusing the server already answering on port $REDIS_PORT (left running by down)"; fi
    return 0
  fi
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by something that does not answer Redis PING"
  mkdir -p "$DATA/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --pidfile "$DATA/redis/redis.pid" --dir "$DATA/redis" --logfile "$DATA/redis/redis.log" \
    --save '' --appendonly no >/dev/null 9>&- || die "redis-server failed; see $DATA/redis/redis.log"
  for _ in $(seq 1 50); do redis_ping && { log "redis: started on port $REDIS_PORT"; return 0; }
    sleep 0.2; done
  die "redis did not answer PING; see $DATA/redis/redis.log"
}

up_kafka() {
  if kafka_ready 2; then
    if pid_alive "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"; then
      log "kafka: already up on port $KAFKA_PORT (started by stack.sh), reusing it"
    else log "kafka: reusing the broker already answering on port $KAFKA_PORT (left running by down)"; fi
    return 0
  fi
  if pid_alive "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"; then
    log "kafka: process $(cat "$DATA/kafka/kafka.pid") is starting; waiting"
  else
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something that is not Kafka"
    rm -f "$DATA/kafka/kafka.pid"
    mkdir -p "$DATA/kafka"
    render "$HERE/kafka/server.properties.in" "$DATA/kafka/server.properties"
    render "$HERE/kafka/log4j.properties.in" "$DATA/kafka/log4j.properties"
    if [ ! -f "$DATA/kafka/data/meta.properties" ]; then
      local cluster_id
      cluster_id="$("$PY" -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
      java -cp "$LIBS/*" -Dlog4j.configuration="file:$DATA/kafka/log4j.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$DATA/kafka/server.properties" \
        >/dev/null 9>&- || die "kafka storage format failed"
      log "kafka: formatted storage in $DATA/kafka/data (cluster id $cluster_id)"
    fi
    # shellcheck disable=SC2086
    nohup java $KAFKA_HEAP -XX:+UseG1GC -cp "$LIBS/*" \
      -Dlog4j.configuration="file:$DATA/kafka/log4j.properties" \
      kafka.Kafka "$DATA/kafka/server.properties" > "$DATA/kafka/stdout.log" 2>&1 9>&- &
    echo $! > "$DATA/kafka/kafka.pid"
    log "kafka: starting (pid $!), waiting for a metadata response"
  fi
  if "$PY" "$HERE/wait_kafka.py" "127.0.0.1:$KAFKA_PORT" 90 --pid "$(cat "$DATA/kafka/kafka.pid")" \
      --log "$DATA/kafka/server.log" --log "$DATA/kafka/stdout.log"; then
    log "kafka: started on port $KAFKA_PORT"; return 0
  fi
  die "kafka did not become ready; logs in $DATA/kafka (stack.sh down stops it)"
}

stop_pid() {  # stop_pid <name> <pidfile> <pattern>
  local pidfile="$2"
  if ! pid_alive "$pidfile" "$3"; then
    rm -f "$pidfile"; log "$1: nothing to stop (not running, or not started by stack.sh)"; return 0
  fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$1: still running after 30 s, sending SIGKILL"; kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  log "$1: stopped"
}

owner() {  # owner <pidfile> <pattern>
  if pid_alive "$1" "$2"; then echo "started by stack.sh, pid $(cat "$1")"; else echo "not started by stack.sh"; fi
}

status() {
  if redis_ping; then log "redis: up on port $REDIS_PORT ($(owner "$DATA/redis/redis.pid" "$REDIS_MATCH"))"
  else log "redis: down (port $REDIS_PORT)"; fi
  if kafka_ready 2; then log "kafka: up on port $KAFKA_PORT ($(owner "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"))"
  else log "kafka: down (port $KAFKA_PORT)"; fi
}

case "${1:-}" in
  deps) lock; deps ;;
  up)
    [ -x "$PY" ] || die "no virtualenv python at $PY (run: make venv)"
    lock; deps; up_redis; up_kafka ;;
  down)
    lock
    stop_pid kafka "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"
    stop_pid redis "$DATA/redis/redis.pid" "$REDIS_MATCH" ;;
  status) status ;;
  *) echo "usage: $0 deps|up|down|status" >&2; exit 2 ;;
esac
