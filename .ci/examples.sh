#!/usr/bin/env bash
# Starts each example of the README's table against the servers CI runs,
# sends it a few requests with curl, checks the answers, and stops it.
#
#   bash .ci/examples.sh
#
# Reads KEEPSAKE_TEST_POSTGRES_URL and KEEPSAKE_TEST_REDIS_CLUSTER_URLS (set
# by .ci/run); an example whose server is not configured is skipped, or under
# CI=true fails. Every example runs from a temporary directory (so no .env of
# the checkout is read), on free loopback ports, with its output kept in that
# directory and printed when a check fails. Each request has a time limit,
# and every process started here is stopped on exit, failure or not.
set -euo pipefail
cd "$(dirname "$0")/.."

examples_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples"
work="$(mktemp -d "${TMPDIR:-/tmp}/keepsake-examples.XXXXXX")"
pids=()
failed=0

log() { printf 'examples: %s\n' "$*" >&2; }

cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$failed" = 1 ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] && { echo "---- $f"; tail -n 40 "$f"; } >&2
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { failed=1; log "FAILED: $*"; exit 1; }

# True when something accepts connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a port such that it and the next one are free.
next_port=38100
free_port() {
  while port_busy "$next_port" || port_busy $((next_port + 1)); do
    next_port=$((next_port + 2))
  done
  echo "$next_port"
  next_port=$((next_port + 2))
}

# start NAME PORT [PORT2] -- [VAR=VALUE …]: starts examples/NAME with only
# the given variables (and PATH, HOME), waits until each port answers HTTP.
# Sets $pid.
start() {
  local name=$1 log="$work/$1.log" ports=() port
  shift
  while [ "$1" != "--" ]; do ports+=("$1"); shift; done
  shift
  (cd "$work" && exec env -i PATH="$PATH" HOME="${HOME:-/}" RUST_LOG=warn PORT="${ports[0]}" "$@" \
    "$examples_dir/$name") >>"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for port in "${ports[@]}"; do
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || fail "$name exited at start-up"
      curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && continue 2
      sleep 0.1
    done
    fail "$name did not answer on port $port within 30 s"
  done
}

# stop PID: Ctrl-C, as a user would; the example must exit 0.
stop() {
  local pid=$1 status=0
  kill -INT "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && fail "example $pid did not stop within 10 s of Ctrl-C"
  wait "$pid" || status=$?
  [ "$status" = 0 ] || fail "example $pid exited with $status after Ctrl-C"
}

# expect STATUS TEXT -- CURL_ARGS…: the response has that status and its body
# contains TEXT. The body is left in $body, the headers in $headers.
expect() {
  local want_status=$1 want_text=$2 status
  shift 3
  status="$(curl -s --max-time 10 -D "$work/headers" -o "$work/body" -w '%{http_code}' "$@")" ||
    fail "curl $* did not complete"
  body="$(cat "$work/body")"
  headers="$(tr -d '\r' <"$work/headers")"
  [ "$status" = "$want_status" ] || fail "curl $*: status $status, expected $want_status; body: $body"
  case "$body" in
    *"$want_text"*) ;;
    *) fail "curl $*: body '$body' does not contain '$want_text'" ;;
  esac
}

# missing NAME VARIABLE: without its variable the example says what to set
# and exits 2, without a panic.
missing() {
  local name=$1 variable=$2 status=0 out
  out="$(cd "$work" && env -i PATH="$PATH" HOME="${HOME:-/}" "$examples_dir/$name" 2>&1)" || status=$?
  [ "$status" = 2 ] || fail "$name without $variable exited with $status, expected 2: $out"
  case "$out" in *panicked*) fail "$name without $variable panicked: $out" ;; esac
  case "$out" in *"$variable"*) ;; *) fail "$name without $variable does not name it: $out" ;; esac
}

# Two instances sharing a store: a login on one is seen on the other.
check_two_instances() {
  local name=$1 a=$2 b=$3 jar="$work/$1.jar"
  expect 401 "instance a: not signed in" -- -b "$jar" -c "$jar" "$a/me"
  expect 422 "user must be" -- -b "$jar" -c "$jar" -d user= "$a/login"
  expect 200 "instance a: signed in as alice" -- -b "$jar" -c "$jar" -d user=alice "$a/login"
  expect 200 "instance b: signed in as alice (count 0)" -- -b "$jar" -c "$jar" "$b/me"
  expect 200 "instance a: count 1" -- -b "$jar" -c "$jar" -X POST "$a/count"
  expect 200 "instance b: count 2" -- -b "$jar" -c "$jar" -X POST "$b/count"
  expect 200 "instance b: signed out" -- -b "$jar" -c "$jar" -X POST "$b/logout"
  expect 401 "instance a: not signed in" -- -b "$jar" -c "$jar" "$a/me"
}

require() {
  if [ -z "${!1:-}" ]; then
    [ "${CI:-}" = true ] && fail "$1 is not set"
    log "skipping $2: $1 is not set"
    return 1
  fi
}

log "building the examples"
cargo build -p keepsake --examples --all-features --quiet

# postgres
missing postgres SESSION_CONNECTION
if require KEEPSAKE_TEST_POSTGRES_URL postgres; then
  port="$(free_port)"
  start postgres "$port" $((port + 1)) -- SESSION_CONNECTION="$KEEPSAKE_TEST_POSTGRES_URL" \
    SESSION_TABLE=keepsake_example_sessions
  check_two_instances postgres "http://127.0.0.1:$port" "http://127.0.0.1:$((port + 1))"
  stop "$pid"
  log "postgres: ok"
fi

# redis_cluster
missing redis_cluster SESSION_REDIS_URL
if require KEEPSAKE_TEST_REDIS_CLUSTER_URLS redis_cluster; then
  port="$(free_port)"
  start redis_cluster "$port" $((port + 1)) -- SESSION_REDIS_URL="$KEEPSAKE_TEST_REDIS_CLUSTER_URLS" \
    SESSION_PREFIX=keepsake-example:
  check_two_instances redis_cluster "http://127.0.0.1:$port" "http://127.0.0.1:$((port + 1))"
  stop "$pid"
  log "redis_cluster: ok"
fi

# api_token: the id in a header, never a cookie.
port="$(free_port)"
api="http://127.0.0.1:$port/api"
json=(-H 'content-type: application/json')
start api_token "$port" --
expect 200 '"user":"alice"' -- -X POST "${json[@]}" -d '{"user":"alice"}' "$api/login"
token="$(printf '%s\n' "$headers" | sed -n 's/^x-session-token: *//Ip' | head -n1)"
[ "${#token}" = 43 ] || fail "api_token: login sent no 43-character x-session-token: $headers"
printf '%s\n' "$headers" | grep -qi '^set-cookie:' && fail "api_token: login set a cookie: $headers"
expect 201 '"notes":["buy milk"]' -- -X POST "${json[@]}" -H "x-session-token: $token" \
  -d '{"text":"buy milk"}' "$api/notes"
expect 200 '"user":"alice"' -- -H "x-session-token: $token" "$api/me"
expect 401 '"error":"not signed in"' -- -H 'x-session-token: not-a-token' "$api/me"
expect 400 '"error"' -- -X POST "${json[@]}" -H "x-session-token: $token" -d '{"text":' "$api/notes"
expect 200 '"signed_out":true' -- -X POST -H "x-session-token: $token" "$api/logout"
printf '%s\n' "$headers" | grep -qix 'x-session-token: *' || fail "api_token: logout did not empty the header: $headers"
expect 401 '"error":"not signed in"' -- -H "x-session-token: $token" "$api/me"
stop "$pid"
log "api_token: ok"

# cookie_only: the session in the cookie, and a key rotation.
missing cookie_only SESSION_KEY
old_key="base64:$(head -c 32 /dev/urandom | base64)"
new_key="base64:$(head -c 32 /dev/urandom | base64)"
jar="$work/cookie_only.jar"
port="$(free_port)"
site="http://127.0.0.1:$port"
start cookie_only "$port" -- SESSION_KEY="$old_key"
expect 200 "cart: apple" -- -b "$jar" -c "$jar" -d item=apple "$site/cart"
expect 422 "item must be" -- -b "$jar" -c "$jar" -d 'item=<b>' "$site/cart"
stop "$pid"
start cookie_only "$port" -- SESSION_KEY="$new_key,$old_key"
expect 200 "cart: apple" -- -b "$jar" -c "$jar" "$site/"
expect 200 "cart: apple, pear" -- -b "$jar" -c "$jar" -d item=pear "$site/cart"
stop "$pid"
cp "$jar" "$work/resealed.jar"
start cookie_only "$port" -- SESSION_KEY="$new_key"
expect 200 "cart: apple, pear" -- -b "$jar" -c "$jar" "$site/"
stop "$pid"
start cookie_only "$port" -- SESSION_KEY="$old_key"
expect 200 "cart: empty" -- -b "$work/resealed.jar" "$site/"
stop "$pid"
log "cookie_only: ok"

log "all examples answered as expected"
