#!/usr/bin/env bash
# A throwaway three-master Redis Cluster on loopback, for the tests of
# keepsake-redis.
#
#   bash .ci/redis-cluster.sh start    # prints KEEPSAKE_TEST_REDIS_CLUSTER_URLS=...
#   bash .ci/redis-cluster.sh status   # the same line if it is running, else exit 1
#   bash .ci/redis-cluster.sh stop     # shuts the nodes down, removes their files
#
# `start` writes exactly one line to stdout, so a caller can do:
#
#   eval "$(bash .ci/redis-cluster.sh start)"
#   export KEEPSAKE_TEST_REDIS_CLUSTER_URLS
#
# Everything else goes to stderr. The nodes keep no data (no RDB, no AOF);
# their config files and logs live in a temporary directory that `stop`
# removes. `start` on a running, healthy cluster only prints its line again.
#
# Environment:
#   KEEPSAKE_REDIS_CLUSTER_STATE       state file (default: $TMPDIR/keepsake-redis-cluster.state)
#   KEEPSAKE_REDIS_CLUSTER_FIRST_PORT  first port to try (default: 7101)
#   REDIS_SERVER, REDIS_CLI            binaries (default: redis-server, redis-cli)

set -euo pipefail

tmp_root="${TMPDIR:-/tmp}"
state_file="${KEEPSAKE_REDIS_CLUSTER_STATE:-$tmp_root/keepsake-redis-cluster.state}"
first_port="${KEEPSAKE_REDIS_CLUSTER_FIRST_PORT:-7101}"
redis_server="${REDIS_SERVER:-redis-server}"
redis_cli="${REDIS_CLI:-redis-cli}"
nodes=3
wait_seconds=30

log() { printf 'redis-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# True when something accepts connections on 127.0.0.1:$1.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

answers_ping() {
    [ "$("$redis_cli" -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]
}

cluster_ok() {
    "$redis_cli" -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'
}

# Reads the state file into $dir and $ports; false when there is none.
read_state() {
    [ -f "$state_file" ] || return 1
    dir="" ports=""
    while IFS='=' read -r name value; do
        case "$name" in
            dir) dir="$value" ;;
            ports) ports="$value" ;;
        esac
    done <"$state_file"
    [ -n "$dir" ] && [ -n "$ports" ]
}

urls_line() {
    local urls="" port
    for port in $ports; do
        urls="${urls:+$urls,}redis://127.0.0.1:$port"
    done
    printf 'KEEPSAKE_TEST_REDIS_CLUSTER_URLS=%s\n' "$urls"
}

healthy() {
    local port
    for port in $ports; do
        answers_ping "$port" && cluster_ok "$port" || return 1
    done
}

show_logs() {
    local log_file
    for log_file in "$dir"/redis-*.log; do
        [ -f "$log_file" ] || continue
        log "--- last lines of $log_file"
        tail -n 20 "$log_file" >&2 || true
    done
}

stop() {
    if ! read_state; then
        log "no cluster recorded in $state_file; nothing to stop"
        rm -f "$state_file"
        return 0
    fi
    local port pid_file pid i
    for port in $ports; do
        "$redis_cli" -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    for port in $ports; do
        pid_file="$dir/redis-$port.pid"
        for ((i = 0; i < 50; i++)); do
            answers_ping "$port" || break
            sleep 0.1
        done
        # A node that ignored SHUTDOWN: stop the process this script started.
        if answers_ping "$port" && [ -f "$pid_file" ]; then
            pid="$(cat "$pid_file")"
            log "node $port did not shut down; sending SIGTERM to $pid"
            kill "$pid" 2>/dev/null || true
        fi
    done
    # Only ever remove a directory this script created.
    case "$dir" in
        "$tmp_root"/keepsake-redis-cluster.*) rm -rf -- "$dir" ;;
        *) log "not removing unexpected directory $dir" ;;
    esac
    rm -f "$state_file"
    log "stopped the cluster on ports $ports"
}

start() {
    command -v "$redis_server" >/dev/null || die "$redis_server not found (install redis-server)"
    command -v "$redis_cli" >/dev/null || die "$redis_cli not found (install redis-tools)"

    if read_state; then
        if healthy; then
            log "cluster already running on ports $ports"
            urls_line
            return 0
        fi
        log "recorded cluster on ports $ports is not healthy; replacing it"
        stop
    fi

    # Free ports: nothing answering on the client port nor on the cluster
    # bus port (client port + 10000).
    ports=""
    local port=$first_port count=0
    while [ "$count" -lt "$nodes" ]; do
        [ "$port" -le 55535 ] || die "no free ports found from $first_port"
        if ! answers_ping "$port" && ! port_busy "$port" && ! port_busy $((port + 10000)); then
            ports="${ports:+$ports }$port"
            count=$((count + 1))
        fi
        port=$((port + 1))
    done

    dir="$(mktemp -d "$tmp_root/keepsake-redis-cluster.XXXXXX")"
    printf 'dir=%s\nports=%s\n' "$dir" "$ports" >"$state_file"
    # From here on, a failure tears down whatever was started.
    trap 'show_logs; stop' ERR

    for port in $ports; do
        "$redis_server" \
            --cluster-enabled yes \
            --cluster-config-file "$dir/nodes-$port.conf" \
            --port "$port" \
            --bind 127.0.0.1 \
            --save "" \
            --appendonly no \
            --daemonize yes \
            --dir "$dir" \
            --pidfile "$dir/redis-$port.pid" \
            --logfile "$dir/redis-$port.log" >&2
    done

    local i
    for port in $ports; do
        for ((i = 0; i < wait_seconds * 10; i++)); do
            answers_ping "$port" && break
            sleep 0.1
        done
        answers_ping "$port" || { log "node $port did not come up within ${wait_seconds}s"; false; }
    done

    local addresses=()
    for port in $ports; do
        addresses+=("127.0.0.1:$port")
    done
    log "creating the cluster on ${addresses[*]}"
    "$redis_cli" --cluster create "${addresses[@]}" --cluster-replicas 0 --cluster-yes >&2

    for port in $ports; do
        for ((i = 0; i < wait_seconds * 10; i++)); do
            cluster_ok "$port" && break
            sleep 0.1
        done
        cluster_ok "$port" || { log "node $port did not report cluster_state:ok within ${wait_seconds}s"; false; }
    done

    trap - ERR
    log "cluster ready on ports $ports (files in $dir)"
    urls_line
}

status() {
    if read_state && healthy; then
        urls_line
    else
        log "no healthy cluster recorded in $state_file"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
