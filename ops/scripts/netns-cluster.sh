#!/usr/bin/env bash
# Test hosts as Linux network namespaces on this machine, for multi-host runs without multi-host hardware.
#
#   netns-cluster.sh up N              make hosts PREFIX-h0 … PREFIX-hN (h0 for the coordinator), each with one
#                                      veth into a bridge that lives in its own namespace PREFIX-hub;
#                                      host i gets 10.77.0.(10+i)/24. Nothing is added to the root namespace.
#   netns-cluster.sh start N MODEL     start `conclave worker` in h1 … hN on tcp://10.77.0.(10+i):7070
#                                      (logs and pids in /tmp/PREFIX-*); writes /tmp/PREFIX-cluster.yaml
#   netns-cluster.sh exec I CMD …      run CMD inside host I (e.g. exec 0 conclave serve … --insecure: test hosts, no keys)
#   netns-cluster.sh down N            stop the workers and delete every namespace (idempotent)
#
# PREFIX is $CONCLAVE_NETNS_PREFIX (default "cv"); CONCLAVE_BIN names the conclave binary (default
# .build/release/conclave). Needs root (CAP_NET_ADMIN) and iproute2.
set -euo pipefail
P=${CONCLAVE_NETNS_PREFIX:-cv}
BIN=${CONCLAVE_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/conclave}
cmd=${1:-}; shift || true

addr() { echo "10.77.0.$((10 + $1))"; }

up() {
  local n=$1
  ip netns add "$P-hub"
  ip -n "$P-hub" link add br0 type bridge
  ip -n "$P-hub" link set br0 up
  ip -n "$P-hub" link set lo up
  for i in $(seq 0 "$n"); do
    ip netns add "$P-h$i"
    ip -n "$P-h$i" link set lo up
    # The pair is created inside the host namespace, then one end moves to the hub.
    ip -n "$P-h$i" link add eth0 type veth peer name "p$i"
    ip -n "$P-h$i" link set "p$i" netns "$P-hub"
    ip -n "$P-hub" link set "p$i" master br0
    ip -n "$P-hub" link set "p$i" up
    ip -n "$P-h$i" addr add "$(addr "$i")/24" dev eth0
    ip -n "$P-h$i" link set eth0 up
  done
  echo "netns-cluster: hosts $P-h0..$P-h$n at $(addr 0)..$(addr "$n")" >&2
}

start() {
  local n=$1 model=$2
  {
    echo "coordinator: tcp://$(addr 0):7000"
    echo "workers:"
    for i in $(seq 1 "$n"); do
      echo "  - name: host-$i"
      echo "    endpoint: tcp://$(addr "$i"):7070"
      echo "    memory: 1GiB"
    done
  } > "/tmp/$P-cluster.yaml"
  for i in $(seq 1 "$n"); do
    ip netns exec "$P-h$i" "$BIN" worker --listen "tcp://$(addr "$i"):7070" --model "$model" --name "host-$i" --insecure \
      >"/tmp/$P-h$i.log" 2>&1 &
    echo $! > "/tmp/$P-h$i.pid"
  done
  echo "netns-cluster: $n workers started; cluster file /tmp/$P-cluster.yaml" >&2
}

down() {
  local n=$1
  for i in $(seq 0 "$n"); do
    if [ -f "/tmp/$P-h$i.pid" ]; then kill "$(cat "/tmp/$P-h$i.pid")" 2>/dev/null || true; rm -f "/tmp/$P-h$i.pid"; fi
    # Anything still running inside the namespace goes too.
    for pid in $(ip netns pids "$P-h$i" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$P-h$i" 2>/dev/null || true
  done
  ip netns del "$P-hub" 2>/dev/null || true
  rm -f "/tmp/$P-cluster.yaml"
}

case "$cmd" in
  up) up "${1:?N}" ;;
  start) start "${1:?N}" "${2:?MODEL}" ;;
  exec) i=${1:?I}; shift; exec ip netns exec "$P-h$i" "$@" ;;
  down) down "${1:?N}" ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
