#!/usr/bin/env bash
# The seed tutorial (Docker networking §1-§3) end to end, declaratively,
# inside a throwaway network namespace: it never changes this machine's own
# network. Run as root on Debian/Ubuntu:  bash examples/seed-tutorial.sh
#
# It builds netloom, creates a sandbox "host" (own network and mount
# namespaces) with an "outside" namespace as a remote client, then shows:
#   §1 docker0, veth pairs, `-p 8080:80` reachable from outside and from the
#      host, outbound masquerade;
#   §2 `--link tomcat1:tomcat`: one way, and it follows readdressing;
#   §3 a user-defined network: names both ways, `docker network inspect`,
#      the embedded DNS server of `netloom watch`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

if [ "${1:-}" != "--inside" ]; then
  if [ "$(id -u)" != 0 ]; then echo "run as root" >&2; exit 1; fi
  need=()
  # make and gcc build the allocator (jemalloc) from its C source; protoc
  # and protobuf's well-known types build the etcd client (cluster mode is
  # part of the one binary).
  for pair in nft:nftables ip:iproute2 ping:iputils-ping curl:curl dig:dnsutils python3:python3 unshare:util-linux make:make gcc:gcc protoc:protobuf-compiler; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  (cd "$root" && cargo build --release --locked -q)
  mkdir -p /etc/netns   # a mount point for the sandbox's private /etc/netns
  exec unshare --net --mount --propagation private -- bash "$0" --inside
fi

# ---- inside the sandbox from here on --------------------------------------
N="$root/target/release/netloom"
CFG="$root/examples/docker-tutorial.toml"
work=$(mktemp -d)
export NETLOOM_STATE_DIR="$work/state"
printf 'nameserver 10.99.0.2\noptions timeout:1 attempts:1\n' > "$work/resolv.conf"
mount --bind "$work/resolv.conf" /etc/resolv.conf     # no DNS query leaves the sandbox
mount -t tmpfs tutorial /run && mkdir -p /run/netns
mount -t tmpfs tutorial /etc/netns
ip link set lo up
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then echo "  ok: $what"; else echo "  FAILED: $what"; exit 1; fi; }
check_not() { local what=$1; shift; if "$@" >/dev/null 2>&1; then echo "  FAILED: $what"; exit 1; else echo "  ok: $what"; fi; }
# Until the test server at URL answers from inside namespace NS: up to
# 30 s, as a loaded machine can take seconds to start python.
wait_http() {
  for _ in $(seq 300); do ip netns exec "$1" curl -s -m 1 -o /dev/null "$2" && return 0; sleep 0.1; done
  echo "  FAILED: the test server at $2 did not start"; exit 1
}

step "A remote client: namespace 'outside' (10.99.0.2) on the host's uplink (10.99.0.1)"
ip netns add outside
ip link add uplink0 type veth peer name eth0 netns outside
ip addr add 10.99.0.1/24 dev uplink0 && ip link set uplink0 up
ip -n outside addr add 10.99.0.2/24 dev eth0 && ip -n outside link set eth0 up && ip -n outside link set lo up
ip -n outside route add default via 10.99.0.1

step "The file"
cat "$CFG"
run "$N" validate -c "$CFG"

step "netloom plan (nothing exists yet)"
run "$N" plan -c "$CFG"

step "netloom apply"
run "$N" apply -c "$CFG"

step "§1 docker0 and the veth pairs"
run ip -br addr show docker0
run ip -br link show master docker0
run ip -n web addr show eth0
run ip -n web route

step "§1 -p 8080:80: an HTTP server in 'web'"
ip netns exec web python3 -m http.server 80 --bind 172.17.0.2 > "$work/web.log" 2>&1 &
pids+=($!)
wait_http web http://172.17.0.2/
run ip netns exec outside curl -s -m 5 -o /dev/null -w 'outside -> 10.99.0.1:8080: HTTP %{http_code}\n' http://10.99.0.1:8080/
run curl -s -m 5 -o /dev/null -w 'host -> 127.0.0.1:8080: HTTP %{http_code}\n' http://127.0.0.1:8080/
run ip netns exec tomcat1 curl -s -m 5 -o /dev/null -w 'tomcat1 -> 10.99.0.1:8080 (via a host address): HTTP %{http_code}\n' http://10.99.0.1:8080/
echo "server log (the outside client's own address is preserved):"; cat "$work/web.log"
check "the server saw 10.99.0.2" grep -q '^10.99.0.2 ' "$work/web.log"
check_not "outside cannot reach 172.17.0.2 directly" ip netns exec outside curl -s -m 2 http://172.17.0.2/

step "§1 outbound: a container's request leaves from the host's address (masquerade)"
ip netns exec outside python3 -m http.server 8000 --bind 10.99.0.2 > "$work/outside.log" 2>&1 &
pids+=($!)
wait_http outside http://10.99.0.2:8000/
run ip netns exec web curl -s -m 5 -o /dev/null -w 'web -> 10.99.0.2:8000: HTTP %{http_code}\n' http://10.99.0.2:8000/
check "the outside server saw the host's uplink address" grep -q '^10.99.0.1 ' "$work/outside.log"

step "§2 --link tomcat1:tomcat is one way"
run cat /etc/netns/tomcat2/hosts
run ip netns exec tomcat2 getent hosts tomcat1
run ip netns exec tomcat2 getent hosts tomcat
run ip netns exec tomcat2 ping -c1 -W2 tomcat1
check_not "tomcat1 does not resolve tomcat2" ip netns exec tomcat1 getent hosts tomcat2

step "§2 ... and, unlike Docker, it follows tomcat1 when its address changes"
sed 's/^\[containers.tomcat1\]$/[containers.tomcat1]\nnetworks = { bridge = { ip = "172.17.0.50" } }/' "$CFG" > "$work/readdressed.toml"
run "$N" apply -c "$work/readdressed.toml"
run ip netns exec tomcat2 getent hosts tomcat1
check "tomcat2 resolves tomcat1 to its new address" sh -c "ip netns exec tomcat2 getent hosts tomcat1 | grep -q 172.17.0.50"
run ip netns exec tomcat2 ping -c1 -W2 tomcat

step "§3 mynetwork: names both ways"
run ip netns exec tomcat4 ping -c1 -W2 tomcat5
run ip netns exec tomcat5 ping -c1 -W2 tomcat4
run ip netns exec tomcat4 ping -c1 -W2 tomcat6.mynetwork
check_not "web (default bridge) does not resolve tomcat5" ip netns exec web getent hosts tomcat5
check_not "web cannot reach mynetwork" ip netns exec web ping -c1 -W1 192.168.0.3

step "§3 docker network inspect mynetwork"
run "$N" inspect mynetwork -c "$work/readdressed.toml"

step "§3 the agent's embedded DNS on the gateway of mynetwork"
"$N" watch -c "$work/readdressed.toml" > "$work/agent.log" 2>&1 &
agent=$!; pids+=($agent)
# Its first reconcile (up to 30 s on a loaded machine) puts DNS in place.
for _ in $(seq 300); do grep -q 'reconciled' "$work/agent.log" && break; sleep 0.1; done
run ip netns exec tomcat4 dig +short +time=2 +tries=1 @192.168.0.1 tomcat5
run ip netns exec tomcat4 dig +short +tcp +time=2 +tries=1 @192.168.0.1 tomcat6.mynetwork
run ip netns exec tomcat4 dig +short +time=2 +tries=1 @192.168.0.1 -x 192.168.0.3
check "dig tomcat5 answers 192.168.0.3" sh -c "ip netns exec tomcat4 dig +short +time=2 +tries=1 @192.168.0.1 tomcat5 | grep -qx 192.168.0.3"
kill -TERM "$agent"; wait "$agent" || true

step "netloom status (with the port counters, like iptables -nvL)"
run "$N" status -c "$work/readdressed.toml" || true

step "netloom down: everything netloom made is gone, 'outside' (not netloom's) stays"
run "$N" down -c "$work/readdressed.toml"
run ip netns list
run ip -br link
printf '\nThe seed tutorial ran end to end.\n'
