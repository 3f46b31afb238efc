#!/usr/bin/env bash
# A throwaway memcached on 127.0.0.1 for the keepsake-memcached tests.
#
#   .ci/memcached.sh start   installs Debian's memcached if it is missing,
#                            starts it on a free port (11311 and up) and prints
#                            KEEPSAKE_TEST_MEMCACHED_URL=memcache://127.0.0.1:PORT
#                            on stdout (everything else goes to stderr), so
#                            `export "$(.ci/memcached.sh start)"` works.
#                            A server this script already started is reused.
#   .ci/memcached.sh stop    stops the server started by `start`.
#
# State (pid, port, log) lives in $KEEPSAKE_MEMCACHED_DIR, by default
# ${TMPDIR:-/tmp}/keepsake-memcached.
set -euo pipefail

state=${KEEPSAKE_MEMCACHED_DIR:-${TMPDIR:-/tmp}/keepsake-memcached}
pidfile=$state/memcached.pid
portfile=$state/memcached.port
logfile=$state/memcached.log

log() { printf 'memcached.sh: %s\n' "$*" >&2; }

# True when a memcached answers `version` on 127.0.0.1:$1.
answers() {
    local port=$1 reply=""
    {
        exec 3<>"/dev/tcp/127.0.0.1/$port"
        printf 'version\r\n' >&3
        IFS= read -r -t 2 reply <&3 || true
        exec 3<&- 3>&-
    } 2>/dev/null || return 1
    [[ $reply == VERSION* ]]
}

# True when something accepts connections on 127.0.0.1:$1.
port_taken() {
    { exec 3<>"/dev/tcp/127.0.0.1/$1" && exec 3<&- 3>&-; } 2>/dev/null
}

running_pid() {
    [[ -s $pidfile ]] || return 1
    local pid
    pid=$(<"$pidfile")
    kill -0 "$pid" 2>/dev/null || return 1
    # Never signal a process that merely reused the pid.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == memcached ]] || return 1
    printf '%s' "$pid"
}

install() {
    command -v memcached >/dev/null 2>&1 && return 0
    log "installing memcached from Debian's packages"
    if [[ $EUID -eq 0 ]]; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >&2
    else
        sudo apt-get update -qq >&2
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >&2
    fi
    command -v memcached >/dev/null 2>&1 || { log "memcached is still not installed"; exit 1; }
}

start() {
    mkdir -p "$state"
    if pid=$(running_pid) && [[ -s $portfile ]] && answers "$(<"$portfile")"; then
        log "reusing memcached (pid $pid)"
        echo "KEEPSAKE_TEST_MEMCACHED_URL=memcache://127.0.0.1:$(<"$portfile")"
        return 0
    fi
    install
    local user=()
    # memcached refuses to run as root unless told which user to run as.
    [[ $EUID -eq 0 ]] && user=(-u root)
    local port
    for port in $(seq 11311 11411); do
        port_taken "$port" && continue
        # Not daemonized (-d), so a failed bind is seen here; every stream is
        # redirected so no caller waiting on our stdout hangs on the server.
        memcached -l 127.0.0.1 -p "$port" -U 0 -m 64 -c 1024 "${user[@]}" \
            </dev/null >>"$logfile" 2>&1 &
        local pid=$!
        disown "$pid" 2>/dev/null || true
        local _
        for _ in $(seq 1 50); do
            if answers "$port"; then
                echo "$pid" >"$pidfile"
                echo "$port" >"$portfile"
                log "memcached (pid $pid) listening on 127.0.0.1:$port"
                echo "KEEPSAKE_TEST_MEMCACHED_URL=memcache://127.0.0.1:$port"
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
        log "memcached did not come up on port $port, trying the next one"
    done
    log "no free port for memcached in 11311-11411 (see $logfile)"
    exit 1
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        log "no memcached started by this script is running"
        rm -f "$pidfile" "$portfile"
        return 0
    fi
    kill "$pid"
    local _
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$pidfile" "$portfile"
    log "stopped memcached (pid $pid)"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
