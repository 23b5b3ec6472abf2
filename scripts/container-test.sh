#!/usr/bin/env bash
# The container image, built from the Dockerfile and run as an operator runs it: as uid 10001
# on a read-only root file system with a tokens file. It checks health, runs one encrypted job
# through it with `hexray analyze`, then runs two containers on the test PostgreSQL (over
# verified TLS) and checks that a job submitted to one is answered by the other.
#
#   bash scripts/container-test.sh
#
# Needs the host's release build (`target/release/hexray`) and the built page (`web/pkg`), which
# go into the image as they are (the Dockerfile's ARTEFACTS), so TFHE is not compiled twice; and
# for the two-container part, the test PostgreSQL that scripts/test.sh starts
# (HEXRAY_TEST_DATABASE_URL, HEXRAY_TEST_POSTGRES_DIR). No container registry is needed: the
# Debian base image is made here with debootstrap from the host's own Debian mirror, once, and
# kept in podman's store for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

missing=()
for tool in podman runc debootstrap curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  sudo=$([[ $(id -u) == 0 ]] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
: "${HEXRAY_TEST_DATABASE_URL:?run by scripts/test.sh, which starts PostgreSQL}"
: "${HEXRAY_TEST_POSTGRES_DIR:?run by scripts/test.sh, which starts PostgreSQL}"
[[ -x target/release/hexray && -f web/pkg/hexray_wasm_bg.wasm ]] || {
  echo "build first: cargo build --release -p hexray-evaluator && bash scripts/build-web.sh" >&2
  exit 1
}

work=$(mktemp -d /tmp/hexray-container-XXXXXX)
# runc without cgroup limits, as this kind of machine allows; the rest is podman's defaults.
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
names=(hexray-test-solo hexray-test-a hexray-test-b)
database=hexray_container_$$
pg_url=${HEXRAY_TEST_DATABASE_URL%%\?*}
pg_port=$(sed 's|.*:\([0-9]*\)/.*|\1|' <<<"$pg_url")
psql_() { psql -q -h "$HEXRAY_TEST_POSTGRES_DIR" -p "$pg_port" -U postgres -c "$1" postgres; }
cleanup() {
  for name in "${names[@]}"; do podman rm -f "$name" >/dev/null 2>&1 || true; done
  psql_ "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
run() { podman --runtime runc run -d --network=host --read-only --user 10001:10001 "$@" >/dev/null; }

# The base: Debian's minimal system, the host's release, from the mirror the host's apt uses.
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
base=localhost/hexray-debian:$codename
if ! podman image exists "$base"; then
  sources=$(find /etc/apt/sources.list /etc/apt/sources.list.d -maxdepth 1 -type f \
    \( -name '*.sources' -o -name '*.list' \) 2>/dev/null || true)
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p; s/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' \
    $sources | grep -v security | head -n 1)
  [[ -n $mirror ]] || { echo "no Debian mirror in the host's apt sources" >&2; exit 1; }
  debootstrap --variant=minbase "$codename" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

# The host's build, laid out as the Dockerfile's build stage leaves it.
mkdir -p "$work/artefacts/src/target/release"
cp target/release/hexray "$work/artefacts/src/target/release/"
cp -r web "$work/artefacts/src/web"
tar -C "$work/artefacts" -c src | podman import - localhost/hexray-artefacts:test >/dev/null
podman build --runtime runc --isolation chroot --network host --pull=never -q \
  --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" \
  --build-arg ARTEFACTS=localhost/hexray-artefacts:test -t localhost/hexray:test . >/dev/null
echo "image built in $(($(date +%s) - started)) s"

# A tokens file, as an operator makes one, readable by the container's user.
token=$(target/release/hexray token new --label container-test --tokens-file "$work/tokens" 2>/dev/null)
chmod 644 "$work/tokens"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
healthy() {
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$1/api/v1/health" >/dev/null 2>&1 && return 0
    sleep 0.3
  done
  echo "the container on port $1 did not answer health" >&2
  podman logs "$2" >&2 || true
  return 1
}
analyze() {
  HEXRAY_TOKEN=$token target/release/hexray analyze --server "http://127.0.0.1:$1" \
    --keys-dir "$work/keys" --image samples/covid-cxr-actualmed/covid-1.png
}
secure=(-v "$work/tokens:/etc/hexray/tokens:ro" -e HEXRAY_TOKENS_FILE=/etc/hexray/tokens)

# One container, alone: uid 10001, nothing writable but its data directory.
solo=$(port)
mkdir -p "$work/solo" && chown 10001:10001 "$work/solo"
run --name hexray-test-solo "${secure[@]}" -v "$work/solo:/var/lib/hexray/data" \
  -e HEXRAY_BIND="127.0.0.1:$solo" -e HEXRAY_THREADS=2 localhost/hexray:test
healthy "$solo" hexray-test-solo
grep -q '^Uid:.*10001' <(podman exec hexray-test-solo cat /proc/1/status) \
  || { echo "the server does not run as uid 10001" >&2; exit 1; }
if podman exec hexray-test-solo touch /usr/local/bin/hexray 2>/dev/null; then
  echo "the container's root file system is writable" >&2
  exit 1
fi
analyze "$solo" | tee "$work/solo.txt"
grep -q '^samples/covid-cxr-actualmed/covid-1.png: .*%' "$work/solo.txt"
echo "one encrypted job through the container: done"

# Two containers on one database, over verified TLS: a job submitted to A is answered by B.
psql_ "CREATE DATABASE $database"
url="${pg_url%/*}/$database?sslmode=verify-full"
ca=$HEXRAY_TEST_POSTGRES_DIR/tls/ca.crt
ports=()
for node in a b; do
  p=$(port)
  ports+=("$p")
  mkdir -p "$work/$node" && chown 10001:10001 "$work/$node"
  run --name "hexray-test-$node" "${secure[@]}" -v "$work/$node:/var/lib/hexray/data" \
    -v "$ca:/etc/hexray/database-ca.pem:ro" -e HEXRAY_DATABASE_CA_FILE=/etc/hexray/database-ca.pem \
    -e HEXRAY_DATABASE_URL="$url" -e HEXRAY_NODE_NAME="$node" -e HEXRAY_BIND="127.0.0.1:$p" \
    -e HEXRAY_THREADS=1 localhost/hexray:test
  healthy "$p" "hexray-test-$node"
done
analyze "${ports[0]}" 2>"$work/a.err" | tee "$work/a.txt"
job=$(sed -n 's/^job \([0-9a-f]*\): [0-9]* image.*/\1/p' "$work/a.err" | tail -n1)
[[ -n $job ]] || { cat "$work/a.err" >&2; exit 1; }
answer() { curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$1/api/v1/jobs/$job$2"; }
status=$(answer "${ports[1]}" "")
grep -q '"state":"done"' <<<"$status" || { echo "B does not know A's job: $status" >&2; exit 1; }
cmp <(answer "${ports[0]}" /outputs) <(answer "${ports[1]}" /outputs) \
  || { echo "A and B answer different outputs" >&2; exit 1; }
echo "job $job, submitted to A: B answers it ($status)"
echo "container test passed in $(($(date +%s) - started)) s"
