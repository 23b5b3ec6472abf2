#!/usr/bin/env bash
# A private PostgreSQL for the tests of the shared (multi-node) back end: Debian's `postgresql`
# package, installed if missing, with a fresh data directory and a port of its own, so it never
# touches a system cluster. Run as root, the server runs as the unprivileged `postgres` user.
#
# It speaks TLS only, like a production database on another host: a CA made for the run signs
# its certificate (for 127.0.0.1 and localhost), every TCP connection without TLS is
# rejected, and the URL it prints asks for `sslmode=verify-full` against that CA. So every
# test of the shared back end goes through the evaluator's verified-TLS path.
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
    tls=$dir/tls
    mkdir -p "$tls"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -days 7 -subj "/CN=HEXray test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -new "${ec[@]}" -subj "/CN=localhost" -keyout "$tls/server.key" \
      -out "$tls/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
      -CAcreateserial -days 7 -extfile "$tls/server.ext" -out "$tls/server.crt" 2>/dev/null
    [[ $(id -u) == 0 ]] && chown -R postgres "$tls"
    chmod 600 "$tls/server.key" "$tls/ca.key"
    # Sockets for the scripts' own use; over TCP, TLS or nothing.
    printf '%s\n' "local all all trust" "hostssl all all 127.0.0.1/32 trust" \
      "hostnossl all all 0.0.0.0/0 reject" >"$dir/data/pg_hba.conf"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
          -c ssl_cert_file=$tls/server.crt -c ssl_key_file=$tls/server.key" start >&2
    echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=verify-full&sslrootcert=$tls/ca.crt"
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
