#!/usr/bin/env bash
# A private PostgreSQL for the tests of the shared (multi-node) back end: Debian's `postgresql`
# package, installed if missing, with a fresh data directory and a port of its own, so it never
# touches a system cluster. Run as root, the server runs as the unprivileged `postgres` user.
#
#   bash scripts/postgres.sh start DIR PORT   # prints the connection URL
#   bash scripts/postgres.sh restart DIR      # a database restart, for the reconnection test
#   bash scripts/postgres.sh stop DIR
set -euo pipefail

bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

command=$1 dir=$2
case $command in
  start)
    port=$3
    if [[ -z $(bin_dir) ]]; then
      sudo=$([[ $(id -u) == 0 ]] || echo sudo)
      $sudo apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    fi
    bin=$(bin_dir)
    mkdir -p "$dir"
    [[ $(id -u) == 0 ]] && chown postgres "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >&2
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  restart)
    as_owner "$(bin_dir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w restart >&2
    ;;
  stop)
    if [[ -d $dir/data ]]; then
      as_owner "$(bin_dir)/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    ;;
  *)
    echo "usage: $0 start DIR PORT | restart DIR | stop DIR" >&2
    exit 2
    ;;
esac
