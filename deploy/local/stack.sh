#!/usr/bin/env bash
# Local real-services stack for kpistream: Apache Kafka 3.9 (KRaft, jars from Maven Central)
# and Redis (Debian's redis-server). Idempotent: `up` reuses what already answers, `down`
# stops only what `up` started. Everything lives under .local/ in the repository.
#
#   stack.sh deps     fetch Kafka jars, install redis-server/prometheus (apt, as root)
#   stack.sh up       start (or reuse) Kafka and Redis, wait until each answers a request
#   stack.sh down     stop what `up` started
#   stack.sh status   show what runs
#   stack.sh secure-env   print KPISTREAM_* settings that reach the secured listeners
#
# Besides the development listeners (Kafka PLAINTEXT, Redis without a password), `up` serves
# the secured variants a managed service would (SPEC §9): Kafka SASL_SSL with PLAIN and SCRAM
# user `kpistream` and SSL with required client certificates, and a Redis with TLS whose
# default user has a password. The CA, certificates (one client certificate already expired,
# and a second CA that signed nothing the servers trust) and passwords are made here once with
# openssl, under $KPISTREAM_LOCAL_DIR/tls and /secrets.
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_SASL_SSL_PORT (9094),
# KAFKA_SSL_PORT (9095), REDIS_PORT (6379), REDIS_TLS_PORT (6380),
# KPISTREAM_LOCAL_DIR (.local), PY (.venv/bin/python, needs aiokafka), KAFKA_HEAP.
# Concurrent invocations (parallel test sessions) are serialised with a lock file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/local"
DATA="${KPISTREAM_LOCAL_DIR:-$ROOT/.local}"
PY="${PY:-$ROOT/.venv/bin/python}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9094}"
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-9095}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_TLS_PORT="${REDIS_TLS_PORT:-6380}"
TLS="$DATA/tls"
SECRETS="$DATA/secrets"
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
  apt_install openssl openssl  # makes the local CA and certificates
}

secret() {  # secret <name>: a random password kept in $SECRETS/<name> (made once)
  mkdir -p "$SECRETS"; chmod 700 "$SECRETS"
  [ -s "$SECRETS/$1" ] || { openssl rand -hex 16 > "$SECRETS/$1"; chmod 600 "$SECRETS/$1"; }
  cat "$SECRETS/$1"
}

issue_cert() {  # issue_cert <name> <CN> <days> <ca> [SAN]: key + certificate signed by <ca>
  local name="$1" cn="$2" days="$3" ca="$4" san="${5:-}"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$TLS/$name.key" -out "$TLS/$name.csr" \
    -subj "/CN=$cn" 2>/dev/null || die "openssl could not make a key for $name"
  printf 'subjectAltName=%s\n' "${san:-DNS:$cn}" > "$TLS/$name.ext"
  openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/$ca.pem" -CAkey "$TLS/$ca.key" \
    -CAcreateserial -out "$TLS/$name.pem" -days "$days" -extfile "$TLS/$name.ext" 2>/dev/null \
    || die "openssl could not sign the certificate $name"
  rm -f "$TLS/$name.csr" "$TLS/$name.ext"; chmod 600 "$TLS/$name.key"
}

certs() {  # the local CA and every certificate the secured listeners and tests use (once)
  [ -f "$TLS/.complete" ] && return 0
  mkdir -p "$TLS"
  local ca
  for ca in ca other-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TLS/$ca.key" -out "$TLS/$ca.pem" \
      -subj "/CN=kpistream local $ca" -days 3650 2>/dev/null || die "openssl could not make $ca"
  done
  issue_cert broker localhost 3650 ca "DNS:localhost,IP:127.0.0.1"
  issue_cert redis localhost 3650 ca "DNS:localhost,IP:127.0.0.1"
  issue_cert web localhost 3650 ca "DNS:localhost,IP:127.0.0.1"
  issue_cert client kpistream 3650 ca
  issue_cert client-expired kpistream 0 ca  # notAfter = now: expired from the first second
  issue_cert client-other kpistream 3650 other-ca
  openssl pkcs12 -export -in "$TLS/broker.pem" -inkey "$TLS/broker.key" -name broker \
    -out "$TLS/broker.p12" -passout "pass:$(secret keystore)" \
    || die "openssl could not write the broker keystore"
  touch "$TLS/.complete"
  log "tls: made a CA and certificates in $TLS"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_ping() { [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

redis_tls_ping() {
  [ "$(REDISCLI_AUTH="$(cat "$SECRETS/redis-admin" 2>/dev/null)" redis-cli --tls \
      --cacert "$TLS/ca.pem" -p "$REDIS_TLS_PORT" ping 2>/dev/null)" = "PONG" ]
}

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
      -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
      -e "s#@SASL_SSL_PORT@#$KAFKA_SASL_SSL_PORT#g" -e "s#@SSL_PORT@#$KAFKA_SSL_PORT#g" \
      -e "s#@SASL_PASSWORD@#$(secret kafka-kpistream)#g" \
      -e "s#@KEYSTORE_PASSWORD@#$(secret keystore)#g" "$1" > "$2"
  chmod 600 "$2"
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

up_redis_tls() {  # the secured Redis: TLS only, the default user needs a password
  if redis_tls_ping; then log "redis (tls): already up on port $REDIS_TLS_PORT, reusing it"; return 0; fi
  port_open "$REDIS_TLS_PORT" && die "port $REDIS_TLS_PORT is taken by something that does not answer Redis over TLS"
  mkdir -p "$DATA/redis-tls"
  local conf="$DATA/redis-tls/redis.conf"
  printf 'requirepass %s\n' "$(secret redis-admin)" > "$conf"; chmod 600 "$conf"
  redis-server "$conf" --port 0 --tls-port "$REDIS_TLS_PORT" --bind 127.0.0.1 \
    --tls-cert-file "$TLS/redis.pem" --tls-key-file "$TLS/redis.key" \
    --tls-ca-cert-file "$TLS/ca.pem" --tls-auth-clients optional --daemonize yes \
    --pidfile "$DATA/redis-tls/redis.pid" --dir "$DATA/redis-tls" \
    --logfile "$DATA/redis-tls/redis.log" --save '' --appendonly no >/dev/null 9>&- \
    || die "redis-server (tls) failed; see $DATA/redis-tls/redis.log"
  for _ in $(seq 1 50); do redis_tls_ping && { log "redis (tls): started on port $REDIS_TLS_PORT"; return 0; }
    sleep 0.2; done
  die "redis (tls) did not answer PING; see $DATA/redis-tls/redis.log"
}

kafka_users() {  # SCRAM credentials of user kpistream (once per broker data directory)
  local marker="$DATA/kafka/data/.kpistream-scram"
  [ -f "$marker" ] && return 0
  local pw mechanism; pw="$(secret kafka-kpistream)"
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do  # one per request: the broker refuses two
    java -cp "$LIBS/*" -Dlog4j.configuration="file:$DATA/kafka/log4j.properties" \
      kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
      --add-config "$mechanism=[password=$pw]" \
      --entity-type users --entity-name kpistream >/dev/null 9>&- \
      || die "could not create the $mechanism user kpistream"
  done
  touch "$marker"; log "kafka: SCRAM user kpistream created"
}

up_kafka() {
  if kafka_ready 2; then
    if pid_alive "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"; then
      log "kafka: already up on port $KAFKA_PORT (started by stack.sh), reusing it"
    else log "kafka: reusing the broker already answering on port $KAFKA_PORT (left running by down)"; fi
    port_open "$KAFKA_SASL_SSL_PORT" || log "kafka: warning: no SASL_SSL listener on port $KAFKA_SASL_SSL_PORT (a broker from an older stack.sh; make down && make up restarts it)"
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
    log "kafka: started on port $KAFKA_PORT (SASL_SSL $KAFKA_SASL_SSL_PORT, SSL $KAFKA_SSL_PORT)"; return 0
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
  if redis_tls_ping; then log "redis (tls): up on port $REDIS_TLS_PORT"
  else log "redis (tls): down (port $REDIS_TLS_PORT)"; fi
  if kafka_ready 2; then log "kafka: up on port $KAFKA_PORT ($(owner "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"))"
  else log "kafka: down (port $KAFKA_PORT)"; fi
}

secure_env() {  # settings of a kpistream that uses only the secured listeners
  cat <<ENV
KPISTREAM_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_SASL_SSL_PORT
KPISTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL
KPISTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KPISTREAM_KAFKA_SASL_USERNAME=kpistream
KPISTREAM_KAFKA_SASL_PASSWORD_FILE=$SECRETS/kafka-kpistream
KPISTREAM_KAFKA_SSL_CAFILE=$TLS/ca.pem
KPISTREAM_REDIS_URL=rediss://127.0.0.1:$REDIS_TLS_PORT/0
KPISTREAM_REDIS_USERNAME=default
KPISTREAM_REDIS_PASSWORD_FILE=$SECRETS/redis-admin
KPISTREAM_REDIS_SSL_CAFILE=$TLS/ca.pem
ENV
}

case "${1:-}" in
  deps) lock; deps ;;
  up)
    [ -x "$PY" ] || die "no virtualenv python at $PY (run: make venv)"
    lock; deps; certs; up_redis; up_redis_tls; up_kafka; kafka_users ;;
  down)
    lock
    stop_pid kafka "$DATA/kafka/kafka.pid" "$KAFKA_MATCH"
    stop_pid "redis (tls)" "$DATA/redis-tls/redis.pid" "$REDIS_MATCH"
    stop_pid redis "$DATA/redis/redis.pid" "$REDIS_MATCH" ;;
  status) status ;;
  secure-env) secure_env ;;
  *) echo "usage: $0 deps|up|down|status|secure-env" >&2; exit 2 ;;
esac
