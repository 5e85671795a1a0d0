#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller in one JVM) on 127.0.0.1.
#
#   deploy/kafka/kafka.sh start [--port N]   download jars once, format, start, wait until a topic can be created
#   deploy/kafka/kafka.sh stop               stop the broker by its recorded PID
#   deploy/kafka/kafka.sh status             exit 0 and print the bootstrap address if running
#   deploy/kafka/kafka.sh bootstrap          print the bootstrap address (KAIROS_KAFKA_BOOTSTRAP wins)
#   deploy/kafka/kafka.sh fetch              only download the jars
#   deploy/kafka/kafka.sh config             print the server.properties start writes (ports 9092/9093)
#
# Needs Java 17+ and Maven. When KAIROS_KAFKA_BOOTSTRAP is set, that broker is used and nothing is started.
# Environment:
#   KAIROS_KAFKA_CACHE    where the jars go (default ~/.cache/kairos/kafka-<version>)
#   KAIROS_KAFKA_RUN_DIR  PID, port, logs and data of the running broker (default <repo>/.run/kafka)
#   KAIROS_KAFKA_HEAP     JVM heap (default 2g; see below)
#   KAIROS_KAFKA_GC       the broker's garbage collector: zgc (default; see below) or g1
#   KAIROS_KAFKA_PROPERTIES  extra server.properties lines, whitespace separated key=value pairs
#                         (e.g. "num.io.threads=4"); they come last, so they win
# The broker's GC pauses go to <run dir>/gc.log (one line per pause).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pom="$here/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
cache="${KAIROS_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kairos/kafka-$version}"
run_dir="${KAIROS_KAFKA_RUN_DIR:-$repo/.run/kafka}"
# 2g, not 512m: the broker keeps ~175 MB live, so a 512m heap leaves G1 ~280 MB of eden: at
# 1,000 decisions/s a 10-20 ms young pause every ~2.5 s (5-6 in a 15 s latency step; with 2g, 2).
# Each pause stops every record in flight (bench/latency.py, "Where the tail comes from").
heap="${KAIROS_KAFKA_HEAP:-2g}"
# zgc, not g1: G1's young pauses (15-20 ms, 1-4 per 15 s latency step) stop every record in flight
# and were the broker's share of the p99; ZGC's pauses are under 0.1 ms at the same broker CPU
# (2026-12-06, alternating brokers, bench/latency.py: Kairos p99 at 1,000 triggers/s 8.6 and
# 7.1 ms with zgc, 11.5 and 7.8 ms with g1; the bare loop's 2.4/2.2 against 2.5/1.7 ms).
gc="${KAIROS_KAFKA_GC:-zgc}"
pid_file="$run_dir/kafka.pid"
port_file="$run_dir/kafka.port"
cport_file="$run_dir/controller.port"

log() { printf '[kafka] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

java_ok() {
  command -v java >/dev/null || die "java not found: install Java 17 or newer"
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = //p')"
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "Java 17+ is required, found specification version '$v'"
}

fetch() {
  if [ -f "$cache/.complete" ] && [ "$(cat "$cache/.complete")" = "$(sha256sum "$pom" | cut -d' ' -f1)" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: install Maven"
  log "resolving Apache Kafka $version from Maven Central into $cache"
  rm -rf "$cache/libs"
  mkdir -p "$cache"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$cache/libs" >"$cache/mvn.log" 2>&1 \
    || { cat "$cache/mvn.log" >&2; die "maven could not resolve the Kafka jars"; }
  sha256sum "$pom" | cut -d' ' -f1 >"$cache/.complete"
}

classpath() { printf '%s' "$cache/libs/*"; }

running_pid() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid="$(cat "$pid_file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Make sure the PID is still our broker, not a recycled number.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka.Kafka' || return 1
  printf '%s' "$pid"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

write_config() {
  local port="$1" cport="$2"
  # Request threads sized to the machine: Kafka's defaults (3 network, 8 I/O threads) are for a
  # server. On 2 cores, where this broker shares the CPUs with the clients, each request then
  # hops between 11 threads that wait for a core. bench/latency.py --only paired, 2026-12-06
  # 20:43-21:07, a fresh broker per run, configurations alternating: with 1 network + 2 I/O
  # threads the broker used 62-69% of a core over the run (5 runs) against 73-75% with the
  # defaults (3 runs); the Kairos/bare-loop p99 ratio was 1.9, 2.0, 3.4 against 5.1, 3.1, 4.6x
  # in the interleaved pairs, in a slow hour. 1 network + 1 I/O thread: 63-67%, no better.
  # One network thread per 2 cores and one I/O thread per core, at most Kafka's defaults.
  local cores network_threads io_threads
  cores="$(nproc 2>/dev/null || echo 2)"
  network_threads=$(( cores / 2 )); (( network_threads >= 1 )) || network_threads=1
  (( network_threads <= 3 )) || network_threads=3
  io_threads=$(( cores <= 8 ? cores : 8 ))
  cat >"$run_dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$run_dir/data
num.partitions=1
default.replication.factor=1
# Single node: internal topics and transactions (exactly-once) with one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumer groups form at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
num.network.threads=$network_threads
num.io.threads=$io_threads
EOF
  local pair pairs
  read -r -a pairs <<<"${KAIROS_KAFKA_PROPERTIES:-}"  # split on whitespace, no glob expansion
  for pair in "${pairs[@]}"; do
    case "$pair" in
      *=*) printf '%s\n' "$pair" >>"$run_dir/server.properties" ;;
      *) die "KAIROS_KAFKA_PROPERTIES: '$pair' is not key=value" ;;
    esac
  done
  cat >"$run_dir/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$run_dir/server.log"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: kafka.server.BrokerServer
        level: INFO
EOF
}

wait_ready() {
  local port="$1" pid="$2" deadline=$((SECONDS + 90))
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -30 "$run_dir/server.log" "$run_dir/stdout.log" >&2 || true; die "broker exited during start-up"; }
    [ $SECONDS -lt $deadline ] || die "broker did not open port $port within 90 s"
    sleep 0.2
  done
  # Listening is not enough: wait until the controller accepts a topic creation.
  until java -Xshare:auto -cp "$(classpath)" -Dlog4j2.configurationFile="$run_dir/log4j2.yaml" \
      org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
      --create --if-not-exists --topic __kairos_ready --partitions 1 --replication-factor 1 >/dev/null 2>"$run_dir/ready.err"; do
    kill -0 "$pid" 2>/dev/null || die "broker exited during start-up"
    [ $SECONDS -lt $deadline ] || { cat "$run_dir/ready.err" >&2; die "broker could not create a topic within 90 s"; }
    sleep 0.5
  done
}

start() {
  local port=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --port=*) port="${1#--port=}"; shift ;;
      *) die "unknown option $1" ;;
    esac
  done
  if [ -n "${KAIROS_KAFKA_BOOTSTRAP:-}" ]; then
    log "KAIROS_KAFKA_BOOTSTRAP is set: using $KAIROS_KAFKA_BOOTSTRAP, not starting a broker"
    echo "$KAIROS_KAFKA_BOOTSTRAP"
    return 0
  fi
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid) on 127.0.0.1:$(cat "$port_file")"
    echo "127.0.0.1:$(cat "$port_file")"
    return 0
  fi
  java_ok
  fetch
  mkdir -p "$run_dir"
  # Port reuse: keep the port of an earlier run so clients configured with it keep working.
  if [ -z "$port" ] && [ -f "$port_file" ]; then port="$(cat "$port_file")"; fi
  if [ -z "$port" ] || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then port="$(free_port)"; fi
  local cport=""
  [ -f "$cport_file" ] && cport="$(cat "$cport_file")"
  if [ -z "$cport" ] || (exec 3<>"/dev/tcp/127.0.0.1/$cport") 2>/dev/null; then cport="$(free_port)"; fi
  # Data survive a broker restart while the ports (and so the quorum) stay the same; otherwise start clean.
  if [ "$(cat "$run_dir/ports" 2>/dev/null)" != "$port $cport" ]; then rm -rf "$run_dir/data"; fi
  echo "$port $cport" >"$run_dir/ports"
  echo "$cport" >"$cport_file"
  write_config "$port" "$cport"
  local started=$SECONDS
  local gc_opts=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20) gc_log=gc
  # ZGC names its (sub-millisecond) pauses in the gc+phases log.
  case "$gc" in
    zgc) gc_opts=(-XX:+UseZGC); gc_log=gc,gc+phases ;;
    g1) ;;
    *) die "KAIROS_KAFKA_GC must be zgc or g1, not '$gc'" ;;
  esac
  local jvm=(java "-Xmx$heap" "-Xms$heap" "${gc_opts[@]}" -Xshare:auto
             -Djava.awt.headless=true "-Dlog4j2.configurationFile=$run_dir/log4j2.yaml" -cp "$(classpath)")
  if [ ! -f "$run_dir/data/meta.properties" ]; then
    local cluster_id
    # A random base64 id; never one that starts with "-", which the storage tool would read as
    # an option (a CI run failed so: "argument --cluster-id/-t: expected one argument").
    cluster_id="$(python3 -c 'import base64,uuid
while True:
    i = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not i.startswith("-"):
        break
print(i)')"
    "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$run_dir/server.properties" \
        >"$run_dir/format.log" 2>&1 || { cat "$run_dir/format.log" >&2; die "could not format KRaft storage"; }
  fi
  # One line per GC pause, wall-clock stamped: bench/latency.py lines broker pauses up with latency.
  nohup "${jvm[@]}" "-Xlog:$gc_log:file=$run_dir/gc.log:time,uptime:filecount=3,filesize=20m" \
      kafka.Kafka "$run_dir/server.properties" >"$run_dir/stdout.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pid_file"
  echo "$port" >"$port_file"
  wait_ready "$port" "$pid"
  log "started pid $pid on 127.0.0.1:$port in $((SECONDS - started)) s"
  echo "127.0.0.1:$port"
}

stop() {
  if [ -n "${KAIROS_KAFKA_BOOTSTRAP:-}" ] && [ ! -f "$pid_file" ]; then
    log "KAIROS_KAFKA_BOOTSTRAP is set: nothing of ours to stop"
    return 0
  fi
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$pid_file"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; log "stopped pid $pid"; return 0; }
    sleep 0.2
  done
  log "pid $pid did not stop in 30 s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

status() {
  if [ -n "${KAIROS_KAFKA_BOOTSTRAP:-}" ]; then echo "$KAIROS_KAFKA_BOOTSTRAP"; return 0; fi
  local pid
  if pid="$(running_pid)"; then echo "127.0.0.1:$(cat "$port_file")"; return 0; fi
  log "not running"
  return 1
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status | bootstrap) status ;;
  fetch) java_ok; fetch ;;
  config) run_dir="$(mktemp -d)"; write_config 9092 9093; cat "$run_dir/server.properties"; rm -rf "$run_dir" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
