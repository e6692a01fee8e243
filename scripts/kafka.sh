#!/usr/bin/env bash
# Runs Apache Kafka 4.x in KRaft mode from jars that Maven fetches: one node, or with
# KAFKA_NODES=3 a replicated cluster on loopback (replication factor 3, min.insync.replicas=2).
#
#   scripts/kafka.sh fetch            download the broker jars (kafka/pom.xml) into the cache
#   scripts/kafka.sh start            format storage if needed, start in the background, wait
#   scripts/kafka.sh run              the same, in the foreground (Ctrl-C stops it cleanly)
#   scripts/kafka.sh stop             stop the background broker (SIGTERM, then wait)
#   scripts/kafka.sh status           exit 0 when this checkout's broker answers on its port
#   scripts/kafka.sh bootstrap        print the bootstrap servers (every node's address)
#   scripts/kafka.sh pid N            print the pid of node N (1-based), e.g. to kill -9 it
#   scripts/kafka.sh start-node N     start node N again after it was stopped or killed
#
# `start` refuses (exit 3) when something else already listens on the port: another
# checkout's broker, someone else's Kafka, or any other program. Sharing a broker by accident
# mixes topics and consumer groups, so it is never done silently. The broker counts as this
# checkout's when the process in its pid file is alive and runs this data dir's config.
#
# Settings (environment):
#   KAFKA_PORT      PLAINTEXT port on 127.0.0.1 (default 9092); the controller uses PORT+1.
#                   With KAFKA_NODES=3, node N listens on PORT+2(N-1) and PORT+2(N-1)+1.
#   KAFKA_NODES     1 (default) or 3: all nodes are brokers and KRaft controllers
#   KAFKA_DATA_DIR  log dirs, config, pid and log file (default .run/kafka-$KAFKA_PORT;
#                   node N of a cluster uses its node-N folder)
#   KAFKA_CACHE     where the jars live, outside git (default ~/.cache/waiting-room)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
base_port="${KAFKA_PORT:-9092}"
nodes="${KAFKA_NODES:-1}"
base_dir="${KAFKA_DATA_DIR:-$here/.run/kafka-$base_port}"
cache="${KAFKA_CACHE:-$HOME/.cache/waiting-room}"
libs="$cache/kafka-$version/libs"
case "$nodes" in 1 | 3) ;; *) echo "kafka.sh: KAFKA_NODES must be 1 or 3" >&2; exit 2 ;; esac
replicas=$((nodes == 3 ? 3 : 1))
min_isr=$((nodes == 3 ? 2 : 1))

# Select node $1: its ports and files (a single node keeps the folder layout it always had).
use_node() {
  node="$1"
  port=$((base_port + 2 * (node - 1)))
  controller_port=$((port + 1))
  if [ "$nodes" = 1 ]; then data_dir="$base_dir"; else data_dir="$base_dir/node-$node"; fi
  pid_file="$data_dir/kafka.pid"
  log_file="$data_dir/kafka.log"
  set_java_cmd
}

# Every node's address, comma separated: brokers (offset 0) or controllers (offset 1),
# the latter as KRaft voters ("N@host:port") when $2 is "voters".
addresses() {
  local offset="$1" voters="${2:-}" list="" n
  for n in $(seq 1 "$nodes"); do
    list="$list${list:+,}${voters:+$n@}127.0.0.1:$((base_port + 2 * (n - 1) + offset))"
  done
  echo "$list"
}

quorum() {
  if [ "$nodes" = 1 ]; then
    echo "controller.quorum.bootstrap.servers=$(addresses 1)"
  else
    echo "controller.quorum.voters=$(addresses 1 voters)"
  fi
}

bootstrap() { addresses 0; }

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
node.id=$node
$(quorum)
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data_dir/logs
num.partitions=6
auto.create.topics.enable=false
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
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

# The java command line of the selected node, in the array java_cmd.
set_java_cmd() {
  local heap=768m
  if [ "$nodes" = 3 ]; then heap=512m; fi
  java_cmd=(java -Xms256m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$data_dir/log4j2.properties" -cp "$libs/*")
}

cluster_id() {
  local file="$base_dir/cluster.id"
  mkdir -p "$base_dir"
  if [ ! -f "$file" ]; then
    cat /proc/sys/kernel/random/uuid | tr -d - | head -c 22 >"$file"
  fi
  cat "$file"
}

format_storage() {
  if [ -f "$data_dir/logs/meta.properties" ]; then return 0; fi
  local standalone=()
  if [ "$nodes" = 1 ]; then standalone=(--standalone); fi
  "${java_cmd[@]}" kafka.tools.StorageTool format "${standalone[@]}" \
    -t "$(cluster_id)" -c "$data_dir/server.properties" >/dev/null
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
  write_config
  format_storage
}

# Start the selected node in the background; refuse a foreign listener on its port.
launch() {
  if is_ours && is_up; then return 0; fi
  if is_up; then refuse_foreign; fi
  prepare
  nohup "${java_cmd[@]}" kafka.Kafka "$data_dir/server.properties" >"$log_file" 2>&1 &
  echo $! >"$pid_file"
}

halt() {
  if [ ! -f "$pid_file" ]; then return 0; fi
  local pid
  pid="$(cat "$pid_file")"
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
}

all_nodes() { seq 1 "$nodes"; }

case "${1:-}" in
  fetch) fetch ;;
  start)
    fetch
    for n in $(all_nodes); do use_node "$n"; launch; done
    for n in $(all_nodes); do use_node "$n"; wait_ready; done
    if [ "$nodes" = 1 ]; then
      echo "kafka.sh: Apache Kafka $version ready on 127.0.0.1:$port (pid $(cat "$pid_file"))"
    else
      echo "kafka.sh: Apache Kafka $version ready on $(bootstrap) ($nodes nodes)"
    fi
    ;;
  start-node)
    fetch
    use_node "${2:?node number}"
    launch
    wait_ready
    ;;
  run)
    fetch
    use_node 1
    prepare
    exec "${java_cmd[@]}" kafka.Kafka "$data_dir/server.properties"
    ;;
  stop)
    for n in $(all_nodes); do use_node "$n"; halt; done
    ;;
  status)
    for n in $(all_nodes); do use_node "$n"; is_ours && is_up || exit 1; done
    ;;
  bootstrap) bootstrap ;;
  pid)
    use_node "${2:?node number}"
    cat "$pid_file"
    ;;
  *)
    sed -n '2,26p' "$0" >&2
    exit 2
    ;;
esac
