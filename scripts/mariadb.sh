#!/usr/bin/env bash
# Provision and start a private MariaDB 11.8 server for tests and development.
#
#   scripts/mariadb.sh start   # prints the URL on stdout (mariadb://root@127.0.0.1:PORT/clipwatch_test)
#   scripts/mariadb.sh stop
#
# Debian bookworm's MariaDB is 10.11 (no VECTOR type), so this takes Debian trixie's 11.8 LTS
# `mariadb-server-core` from the Debian archive and runs it from a private prefix through trixie's own
# dynamic loader, as scripts/mysql9.sh does with sid's MySQL 9: nothing is installed into the system.
# The prefix is cached under $CLIPWATCH_CACHE (default ~/.cache/clipwatch); the data dir and socket live
# under $CLIPWATCH_MARIADB_DIR (default .mariadb/ in the repo, git-ignored).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLIPWATCH_CACHE:-$HOME/.cache/clipwatch}
prefix=$cache/mariadb-prefix
state=${CLIPWATCH_MARIADB_DIR:-$here/.mariadb}
port=${CLIPWATCH_MARIADB_PORT:-}
db=clipwatch_test

log() { echo "mariadb: $*" >&2; }

loader() { echo "$prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"; }
libs() { echo "$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu"; }
run_bin() {  # run a binary of the prefix through trixie's loader and libraries
  local bin=$1; shift
  "$(loader)" --library-path "$(libs)" "$prefix/usr/$bin" "$@"
}

provision() {
  [ -x "$prefix/usr/sbin/mariadbd" ] && return 0
  command -v apt-get >/dev/null || { log "apt-get is needed to fetch Debian trixie's mariadb-server-core"; exit 1; }
  log "fetching Debian trixie's MariaDB 11.8 into $prefix (once; cached)"
  "$here/scripts/fetch-deb.sh" --closure trixie "$prefix" mariadb-server-core mariadb-client-core
  [ -x "$prefix/usr/sbin/mariadbd" ] || { log "mariadbd missing after unpacking"; exit 1; }
}

client() { run_bin bin/mariadb --no-defaults --socket="$state/mariadb.sock" -uroot "$@"; }
ping() { client -e "SELECT 1" >/dev/null 2>&1; }  # (mariadb-admin is not in the -core packages)

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

choose_port() {  # the port this data dir used last time, else 33079, else any free one
  [ -n "$port" ] && return 0
  port=$(cat "$state/port" 2>/dev/null || echo 33079)
  if ! ping && port_in_use "$port"; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  echo "$port" >"$state/port"
}

initialise() {  # mariadb-install-db is a Perl script: bootstrap the system tables directly instead
  rm -rf "$state/data"
  mkdir -p "$state/data"
  log "initialising data dir"
  { echo "CREATE DATABASE mysql;"; echo "use mysql;"
    cat "$prefix/usr/share/mariadb/mariadb_system_tables.sql" "$prefix/usr/share/mariadb/mariadb_system_tables_data.sql"
  } | run_bin sbin/mariadbd --no-defaults --bootstrap --datadir="$state/data" --basedir="$prefix/usr" \
        --lc-messages-dir="$prefix/usr/share/mariadb" --user="$(id -un)" >"$state/init.log" 2>&1 \
    || { cat "$state/init.log" >&2; exit 1; }
  touch "$state/data/.initialised"
}

start() {
  provision
  mkdir -p "$state"
  choose_port
  if ! ping; then
    [ -f "$state/data/.initialised" ] || initialise
    log "starting on 127.0.0.1:$port"
    setsid "$(loader)" --library-path "$(libs)" "$prefix/usr/sbin/mariadbd" \
      --no-defaults --user="$(id -un)" --datadir="$state/data" --basedir="$prefix/usr" \
      --lc-messages-dir="$prefix/usr/share/mariadb" --port="$port" --bind-address=127.0.0.1 \
      --socket="$state/mariadb.sock" --pid-file="$state/mariadbd.pid" --log-error="$state/error.log" \
      --innodb-buffer-pool-size=256M --skip-name-resolve \
      </dev/null >/dev/null 2>&1 &
    local deadline=$((SECONDS + 120))
    until ping; do
      if [ $SECONDS -ge $deadline ]; then log "server did not answer within 120 s"; tail -n 30 "$state/error.log" >&2; exit 1; fi
      sleep 0.5
    done
  fi
  client -e "CREATE DATABASE IF NOT EXISTS $db" >&2
  echo "mariadb://root@127.0.0.1:$port/$db"
}

stop() {
  ping || return 0
  client -e "SHUTDOWN"
  local deadline=$((SECONDS + 60))
  while ping && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
