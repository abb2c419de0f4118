#!/usr/bin/env bash
# Provision and start a private MySQL 9 server for tests and development.
#
#   scripts/mysql9.sh start   # prints the URL on stdout (mysql://root@127.0.0.1:PORT/clipwatch_test)
#   scripts/mysql9.sh stop
#
# Debian bookworm ships no MySQL server, so this takes Debian sid's `mysql-server-core` from the Debian
# archive and runs it from a private prefix through sid's own dynamic loader: nothing is installed into
# the system and the machine's apt state is untouched (see docs/mysql9.md for why).
# The unpacked prefix is cached under $CLIPWATCH_CACHE (default ~/.cache/clipwatch); the data dir and
# socket live under $CLIPWATCH_MYSQL_DIR (default .mysql9/ in the repo, git-ignored).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLIPWATCH_CACHE:-$HOME/.cache/clipwatch}
prefix=$cache/mysql9-prefix
state=${CLIPWATCH_MYSQL_DIR:-$here/.mysql9}
port=${CLIPWATCH_MYSQL_PORT:-}
db=clipwatch_test

log() { echo "mysql9: $*" >&2; }

run_bin() {  # run a binary of the prefix through sid's loader and libraries
  local bin=$1; shift
  "$prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu" "$prefix/usr/$bin" "$@"
}

provision() {
  [ -x "$prefix/usr/sbin/mysqld" ] && return 0
  command -v apt-get >/dev/null || { log "apt-get is needed to fetch Debian sid's mysql-server-core"; exit 1; }
  log "fetching Debian sid's MySQL 9 into $prefix (once; cached)"
  "$here/scripts/fetch-deb.sh" --closure sid "$prefix" mysql-server-core mysql-client-core
  [ -x "$prefix/usr/sbin/mysqld" ] || { log "mysqld missing after unpacking"; exit 1; }
}

ping() { run_bin bin/mysqladmin --no-defaults --socket="$state/mysql.sock" -uroot ping >/dev/null 2>&1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

choose_port() {  # the port this data dir used last time, else 33069, else any free one
  [ -n "$port" ] && return 0
  port=$(cat "$state/port" 2>/dev/null || echo 33069)
  if ! ping && port_in_use "$port"; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  echo "$port" >"$state/port"
}

start() {
  provision
  mkdir -p "$state"
  choose_port
  if ! ping; then
    if [ ! -d "$state/data/mysql" ]; then
      rm -rf "$state/data"
      log "initialising data dir"
      run_bin sbin/mysqld --no-defaults --initialize-insecure --user="$(id -un)" --datadir="$state/data" \
        --basedir="$prefix/usr" --lc-messages-dir="$prefix/usr/share/mysql" >"$state/init.log" 2>&1 \
        || { cat "$state/init.log" >&2; exit 1; }
    fi
    log "starting on 127.0.0.1:$port"
    setsid "$prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
      --library-path "$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu" "$prefix/usr/sbin/mysqld" \
      --no-defaults --user="$(id -un)" --datadir="$state/data" --basedir="$prefix/usr" \
      --lc-messages-dir="$prefix/usr/share/mysql" --port="$port" --bind-address=127.0.0.1 \
      --socket="$state/mysql.sock" --pid-file="$state/mysqld.pid" --log-error="$state/error.log" \
      --secure-file-priv="" --mysqlx=OFF --skip-log-bin --innodb-buffer-pool-size=256M \
      </dev/null >/dev/null 2>&1 &
    local deadline=$((SECONDS + 120))
    until ping; do
      if [ $SECONDS -ge $deadline ]; then log "server did not answer within 120 s"; tail -n 30 "$state/error.log" >&2; exit 1; fi
      sleep 0.5
    done
  fi
  run_bin bin/mysql --no-defaults --socket="$state/mysql.sock" -uroot -e "CREATE DATABASE IF NOT EXISTS $db" >&2
  echo "mysql://root@127.0.0.1:$port/$db"
}

stop() {
  ping || return 0
  run_bin bin/mysqladmin --no-defaults --socket="$state/mysql.sock" -uroot shutdown
}

# Sourced (scripts/mysql-group.sh), it only defines the prefix and its helpers.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0
case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
