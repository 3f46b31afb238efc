#!/usr/bin/env bash
# Makes sure PostgreSQL, MariaDB and Redis answer on loopback, starting the
# ones that are down, and waits until each one is ready. Loopback only.
set -euo pipefail

wait_for() {
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then echo "$name is up"; return 0; fi
    sleep 1
  done
  echo "$name did not come up" >&2
  return 1
}

pg_up() { psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' ; }
if ! pg_up >/dev/null 2>&1; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
wait_for PostgreSQL pg_up
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "select 1 from pg_database where datname = 'test'")" != "1" ]; then
  psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test'
fi

maria_up() { mariadb -h 127.0.0.1 -u root -e 'select 1' ; }
if ! maria_up >/dev/null 2>&1; then
  echo "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_for MariaDB maria_up
mariadb -h 127.0.0.1 -u root -e 'create database if not exists test'

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ] ; }
if ! redis_up >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis redis_up
