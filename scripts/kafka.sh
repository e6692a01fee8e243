#!/usr/bin/env bash
# Runs a single-node Apache Kafka 4.x broker in KRaft mode from jars that Maven fetches.
#
#   scripts/kafka.sh fetch            download the broker jars (kafka/pom.xml) into the cache
#   scripts/kafka.sh start            format storage if needed, start in the background, wait
#   scripts/kafka.sh run              the same, in the foreground (Ctrl-C stops it cleanly)
#   scripts/kafka.sh stop             stop the background broker (SIGTERM, then wait)
#   scripts/kafka.sh status           exit 0 when this checkout's broker answers on its port
#
# `start` refuses (exit 3) when something else already listens on the port: another
# checkout's broker, someone else's Kafka, or any other program. Sharing a broker by accident
# mixes topics and consumer groups, so it is never done silently. The broker counts as this
# checkout's when the process in its pid file is alive and runs this data dir's config.
#
# Settings (environment):
#   KAFKA_PORT      PLAINTEXT port on 127.0.0.1 (default 9092); the controller uses PORT+1
#   KAFKA_DATA_DIR  log dirs, config, pid and log file (default .run/kafka-$KAFKA_PORT)
#   KAFKA_CACHE     where the jars live, outside git (default ~/.cache/waiting-room)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
port="${KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
data_dir="${KAFKA_DATA_DIR:-$here/.run/kafka-$port}"
cache="${KAFKA_CACHE:-$HOME/.cache/waiting-room}"
libs="$cache/kafka-$version/libs"
pid_file="$data_dir/kafka.pid"
log_file="$data_dir/kafka.log"

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  echo "kafka.sh: fetching Apache Kafka $version jars from Maven Central into $libs" >&2
  mkdir -p "$libs"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$libs/.complete"
}

write_config() {
  mkdir -p "$data_dir/logs"
  cat >"$data_dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data_dir/logs
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
EOF
  cat >"$data_dir/log4j2.properties" <<EOF
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
EOF
}

java_cmd=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$data_dir/log4j2.properties" -cp "$libs/*")

format_storage() {
  if [ -f "$data_dir/logs/meta.properties" ]; then return 0; fi
  "${java_cmd[@]}" kafka.tools.StorageTool format --standalone \
    -t "$(cat /proc/sys/kernel/random/uuid | tr -d - | head -c 22)" \
    -c "$data_dir/server.properties" >/dev/null
}

is_up() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

is_ours() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid="$(cat "$pid_file")"
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$data_dir/server.properties"
}

refuse_foreign() {
  cat >&2 <<EOF
kafka.sh: 127.0.0.1:$port is already taken by a process this checkout did not start
  (not the broker of $data_dir). Refusing to share it.
  Stop whatever listens there (ss -ltnp 'sport = :$port' shows it), or move this
  checkout's broker to a free port, e.g. KAFKA_PORT=19192 make run
  (the services follow KAFKA_PORT unless KAFKA_BOOTSTRAP_SERVERS is set).
EOF
  exit 3
}

wait_ready() {
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until is_up; do
    if [ -f "$pid_file" ] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      echo "kafka.sh: the broker exited during start; its log:" >&2
      tail -n 60 "$log_file" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka.sh: the broker did not open port $port in time; its log:" >&2
      tail -n 60 "$log_file" >&2
      return 1
    fi
    sleep 0.3
  done
}

prepare() {
  fetch
  write_config
  format_storage
}

case "${1:-}" in
  fetch) fetch ;;
  start)
    if is_ours && is_up; then
      echo "kafka.sh: this checkout's broker already runs on 127.0.0.1:$port"
      exit 0
    fi
    if is_up; then refuse_foreign; fi
    prepare
    nohup "${java_cmd[@]}" kafka.Kafka "$data_dir/server.properties" >"$log_file" 2>&1 &
    echo $! >"$pid_file"
    wait_ready
    echo "kafka.sh: Apache Kafka $version ready on 127.0.0.1:$port (pid $(cat "$pid_file"))"
    ;;
  run)
    prepare
    exec "${java_cmd[@]}" kafka.Kafka "$data_dir/server.properties"
    ;;
  stop)
    if [ ! -f "$pid_file" ]; then exit 0; fi
    pid="$(cat "$pid_file")"
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
    ;;
  status) is_ours && is_up ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
