#!/usr/bin/env bash
# A private MySQL 9 Group Replication group of three members on loopback (single-primary), from the same
# Debian sid prefix as scripts/mysql9.sh (its group_replication.so plugin), for the cluster tests (issue 31).
#   scripts/mysql-group.sh start    # prints one URL per member (mysql://root@127.0.0.1:PORT/clipwatch_test)
#   scripts/mysql-group.sh status   # each member's state and role (performance_schema.replication_group_members)
#   scripts/mysql-group.sh kill N   # kill -9 member N (1-3): the others elect a new primary
#   scripts/mysql-group.sh revive N # start member N again and let it rejoin the group
#   scripts/mysql-group.sh stop     # shut every member down
# State under $CLIPWATCH_GROUP_DIR (default .mysql-group/ in the repo, git-ignored); SQL ports from
# $CLIPWATCH_GROUP_PORT (default 33169, 33170, 33171), group ports 100 above them.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/mysql9.sh
. "$here/scripts/mysql9.sh"
group_dir=${CLIPWATCH_GROUP_DIR:-$here/.mysql-group}
base=${CLIPWATCH_GROUP_PORT:-33169}
group_name=5c1f3b8e-0d6a-4c3e-9f2a-c11b0a7c0001  # any UUID; fixed so that a restarted member rejoins
members=(1 2 3)

log() { echo "mysql-group: $*" >&2; }
sql_port() { echo $((base + $1 - 1)); }
gr_port() { echo $((base + 100 + $1 - 1)); }
sock() { echo "$group_dir/m$1/mysql.sock"; }
client() { local n=$1; shift; run_bin bin/mysql --no-defaults --socket="$(sock "$n")" -uroot --connect-timeout=5 "$@"; }
alive() { run_bin bin/mysqladmin --no-defaults --socket="$(sock "$1")" -uroot --connect-timeout=2 ping >/dev/null 2>&1; }
seeds() { local s=""; for m in "${members[@]}"; do s+="${s:+,}127.0.0.1:$(gr_port "$m")"; done; echo "$s"; }

launch() {  # start member $1's mysqld (initialising its data directory the first time)
  local n=$1 dir="$group_dir/m$1"
  mkdir -p "$dir"
  if [ ! -d "$dir/data/mysql" ]; then
    rm -rf "$dir/data"
    run_bin sbin/mysqld --no-defaults --initialize-insecure --user="$(id -un)" --datadir="$dir/data" \
      --basedir="$prefix/usr" --lc-messages-dir="$prefix/usr/share/mysql" >"$dir/init.log" 2>&1 \
      || { cat "$dir/init.log" >&2; exit 1; }
  fi
  setsid "$prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
    --library-path "$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu" "$prefix/usr/sbin/mysqld" \
    --no-defaults --user="$(id -un)" --datadir="$dir/data" --basedir="$prefix/usr" \
    --lc-messages-dir="$prefix/usr/share/mysql" --plugin-dir="$prefix/usr/lib/mysql/plugin" \
    --port="$(sql_port "$n")" --bind-address=127.0.0.1 --socket="$(sock "$n")" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --secure-file-priv="" --mysqlx=OFF --innodb-buffer-pool-size=128M \
    --server-id="$n" --gtid-mode=ON --enforce-gtid-consistency=ON --report-host=127.0.0.1 \
    --report-port="$(sql_port "$n")" --plugin-load-add=group_replication.so \
    --group-replication-group-name="$group_name" --group-replication-start-on-boot=OFF \
    --group-replication-local-address="127.0.0.1:$(gr_port "$n")" --group-replication-group-seeds="$(seeds)" \
    </dev/null >/dev/null 2>&1 &
  local deadline=$((SECONDS + 120))
  until alive "$n"; do
    if [ $SECONDS -ge $deadline ]; then log "member $n did not answer within 120 s"; tail -n 30 "$dir/error.log" >&2; exit 1; fi
    sleep 0.5
  done
  client "$n" -e "SET SQL_LOG_BIN = 0;
    CREATE USER IF NOT EXISTS 'recovery'@'%' IDENTIFIED BY 'recovery';
    GRANT REPLICATION SLAVE, BACKUP_ADMIN, CONNECTION_ADMIN, GROUP_REPLICATION_STREAM ON *.* TO 'recovery'@'%';
    SET SQL_LOG_BIN = 1;
    SET GLOBAL group_replication_recovery_get_public_key = ON;
    CHANGE REPLICATION SOURCE TO SOURCE_USER = 'recovery', SOURCE_PASSWORD = 'recovery'
      FOR CHANNEL 'group_replication_recovery';"
}

state_of() {  # member $1's own view of itself: ONLINE, RECOVERING, OFFLINE, ERROR... (empty when down)
  client "$1" -N -e "SELECT MEMBER_STATE FROM performance_schema.replication_group_members
    WHERE MEMBER_PORT = $(sql_port "$1")" 2>/dev/null || true
}

online() {  # wait until member $1 is ONLINE in the group
  local deadline=$((SECONDS + 120))
  until [ "$(state_of "$1")" = ONLINE ]; do
    if [ $SECONDS -ge $deadline ]; then log "member $1 is not ONLINE after 120 s"; tail -n 20 "$group_dir/m$1/error.log" >&2; exit 1; fi
    sleep 0.5
  done
}

join() {  # member $1 joins the running group (or bootstraps it when no member is ONLINE)
  local n=$1 others=0
  for m in "${members[@]}"; do [ "$m" != "$n" ] && [ "$(state_of "$m")" = ONLINE ] && others=1; done
  if [ "$others" = 0 ]; then
    client "$n" -e "SET GLOBAL group_replication_bootstrap_group = ON; START GROUP_REPLICATION;
      SET GLOBAL group_replication_bootstrap_group = OFF;"
  else
    client "$n" -e "START GROUP_REPLICATION;"
  fi
  online "$n"
}

start() {
  provision
  mkdir -p "$group_dir"
  for n in "${members[@]}"; do
    if [ "$(state_of "$n")" = ONLINE ]; then continue; fi
    alive "$n" || { log "starting member $n on 127.0.0.1:$(sql_port "$n")"; launch "$n"; }
    join "$n"
  done
  local primary
  primary=$(primary_member)
  client "$primary" -e "CREATE DATABASE IF NOT EXISTS $db" >&2
  for n in "${members[@]}"; do echo "mysql://root@127.0.0.1:$(sql_port "$n")/$db"; done
}

primary_member() {  # the number of the member the group elected primary
  local port
  for m in "${members[@]}"; do
    port=$(client "$m" -N -e "SELECT MEMBER_PORT FROM performance_schema.replication_group_members
      WHERE MEMBER_ROLE = 'PRIMARY' AND MEMBER_STATE = 'ONLINE'" 2>/dev/null || true)
    [ -n "$port" ] && { echo $((port - base + 1)); return 0; }
  done
  log "no member names a primary"; exit 1
}

status() {
  for n in "${members[@]}"; do
    if alive "$n"; then
      client "$n" -N -e "SELECT CONCAT('member $n (127.0.0.1:', $(sql_port "$n"), '): ', MEMBER_STATE, ' ', MEMBER_ROLE)
        FROM performance_schema.replication_group_members WHERE MEMBER_PORT = $(sql_port "$n")" 2>/dev/null \
        || echo "member $n: answering, not in the group"
    else
      echo "member $n (127.0.0.1:$(sql_port "$n")): down"
    fi
  done
}

kill_member() {
  local pid
  pid=$(cat "$group_dir/m$1/mysqld.pid" 2>/dev/null) || { log "member $1 has no pid file"; exit 1; }
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$group_dir/m$1/mysqld.pid"
}

stop() {
  for n in "${members[@]}"; do
    alive "$n" && run_bin bin/mysqladmin --no-defaults --socket="$(sock "$n")" -uroot shutdown || true
  done
}

member() { [[ "${1:-}" =~ ^[123]$ ]] || { echo "usage: $0 kill|revive 1|2|3" >&2; exit 2; }; }

case "${1:-start}" in
  start) start ;;
  status) status ;;
  kill) member "${2:-}"; kill_member "$2" ;;
  revive) member "${2:-}"; provision; alive "$2" || launch "$2"; join "$2" ;;
  stop) stop ;;
  *) echo "usage: $0 start|status|kill N|revive N|stop" >&2; exit 2 ;;
esac
