#!/usr/bin/env bash
# Benchmark of the embedded DNS of the real agent, driven by dnsperf from a
# container's namespace, in a throwaway host (own network and mount
# namespaces; nothing touches the machine's network).
#
#   sudo NETLOOM=target/release/netloom bash examples/dns-perf.sh
#
# Builds N containers (default 1000) on one network with `netloom apply`,
# starts `netloom watch` pinned to CPU 0, and runs dnsperf pinned to CPU 1
# inside the namespace of container c0, asking for the A records of 100
# member names (c0..c99). Prints queries per second and latency (average
# from dnsperf; p50/p99/max from a separate run with per-query output),
# the median of RUNS runs, the server's CPU time per answered query (user
# + system, from /proc/PID/stat; it shows the server's cost when the
# client is what limits the rate), and the server's RSS (VmRSS) afterwards.
#
# With AARDVARK_DNS=/path/to/aardvark-dns set, the same network is served
# by aardvark-dns (from a config dir with the same names and addresses,
# pinned to CPU 0) and measured the same way, for a side-by-side figure;
# without it that column is skipped.
#
# Environment: NETLOOM (binary, default target/release/netloom),
# CONTAINERS (1000), RUNS (5), SECONDS_PER_RUN (10), CLIENTS (4),
# OUTSTANDING (200), AARDVARK_DNS (unset), PERF_OUT (unset: with a path,
# `perf record -g` samples each server during its first run into
# PERF_OUT.<server>).
set -euo pipefail

NETLOOM=$(realpath "${NETLOOM:-target/release/netloom}")
CONTAINERS=${CONTAINERS:-1000}
RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
AARDVARK_DNS=${AARDVARK_DNS:-}
PERF_OUT=${PERF_OUT:-}
[ -n "$AARDVARK_DNS" ] && AARDVARK_DNS=$(realpath "$AARDVARK_DNS")

for tool in dnsperf taskset unshare ip dig; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (Debian: apt-get install dnsperf dnsutils util-linux iproute2)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (it makes namespaces)" >&2; exit 1; }
[ -x "$NETLOOM" ] || { echo "no netloom binary at $NETLOOM (cargo build --release)" >&2; exit 1; }

if [ -z "${DNS_PERF_INSIDE:-}" ]; then
  # Re-run inside a private network and mount namespace: fresh /run/netns,
  # /etc/netns and resolv.conf; everything goes away with the namespaces.
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  DNS_PERF_INSIDE=$work NETLOOM=$NETLOOM AARDVARK_DNS=$AARDVARK_DNS PERF_OUT=$PERF_OUT \
    unshare --net --mount --propagation private -- bash "$0"
  exit $?
fi

work=$DNS_PERF_INSIDE
mount -t tmpfs dns-perf /run && mkdir -p /run/netns
mount -t tmpfs dns-perf /etc/netns
printf 'nameserver 192.0.2.53\noptions timeout:1 attempts:1\n' > "$work/resolv.conf"
mount --bind "$work/resolv.conf" /etc/resolv.conf
ip link set lo up
export NETLOOM_STATE_DIR=$work/state

cfg=$work/netloom.toml
{
  printf '[settings]\nupstream_dns = ["192.0.2.53"]\n\n'
  printf '[networks.bench]\nsubnet = "10.80.0.0/16"\ngateway = "10.80.0.1"\n\n'
  for i in $(seq 0 $((CONTAINERS - 1))); do
    printf '[containers.c%d]\nnetworks = ["bench"]\n\n' "$i"
  done
} > "$cfg"

queries=$work/queries.txt
for i in $(seq 0 99); do echo "c$i A"; done > "$queries"

echo "# netloom $("$NETLOOM" --version 2>/dev/null || echo) — $CONTAINERS containers, 100 names, dnsperf -c $CLIENTS -q $OUTSTANDING -l $SECONDS_PER_RUN, $RUNS runs"
echo "# server on CPU 0, dnsperf on CPU 1; kernel $(uname -r); $(nproc) CPUs"
start=$(date +%s.%N)
"$NETLOOM" -c "$cfg" apply >/dev/null 2>&1
echo "# apply of $CONTAINERS containers: $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "n/a" } else { print a[int((NR + 1) / 2)] } }'; }

# One measured server at 10.80.0.1:53: q/s and average latency per run
# (medians printed), then percentiles from one run with per-query output.
measure() {
  local label=$1 pid=$2
  local qps=() avg=() total=0
  # CPU time of the server (user + system, clock ticks) over the runs:
  # per query answered, it says what the server costs even when the
  # client, not the server, is what limits the rate.
  local hz cpu0
  hz=$(getconf CLK_TCK)
  cpu0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  for r in $(seq 1 "$RUNS"); do
    if [ "$r" = 1 ] && [ -n "$PERF_OUT" ]; then
      perf record -q -F 499 -g -p "$pid" -o "$PERF_OUT.$label" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
    fi
    out=$(taskset -c 1 ip netns exec c0 dnsperf -s 10.80.0.1 -d "$queries" \
      -c "$CLIENTS" -q "$OUTSTANDING" -l "$SECONDS_PER_RUN" 2>&1)
    q=$(echo "$out" | awk '/Queries per second:/ { print $4 }')
    a=$(echo "$out" | awk '/Average Latency/ { print $4 }')
    lost=$(echo "$out" | awk '/Queries lost:/ { print $3 }')
    done_q=$(echo "$out" | awk '/Queries completed:/ { print $3 }')
    echo "  run $r: $q q/s, avg $a s, lost $lost"
    qps+=("$q"); avg+=("$a"); total=$((total + done_q))
  done
  local cpu1 per_query
  cpu1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  per_query=$(awk -v c=$((cpu1 - cpu0)) -v hz="$hz" -v n="$total" 'BEGIN { if (n) printf "%.2f", c / hz / n * 1e6; else print "n/a" }')
  # Per-query latencies (dnsperf -v prints each): a separate run, since
  # printing costs the client time.
  lat=$(taskset -c 1 ip netns exec c0 dnsperf -v -s 10.80.0.1 -d "$queries" \
    -c "$CLIENTS" -q "$OUTSTANDING" -l "$SECONDS_PER_RUN" 2>/dev/null |
    awk '/^> / { print $NF * 1000 }' | sort -g |
    awk '{ a[NR] = $1 } END { if (NR) printf "p50 %.3f ms, p99 %.3f ms, max %.3f ms (%d queries)", a[int(NR*0.5)], a[int(NR*0.99)], a[NR], NR }')
  rss=$(awk '/VmRSS/ { print $2 / 1024 " MiB" }' "/proc/$pid/status")
  echo "$label: median $(printf '%s\n' "${qps[@]}" | median) q/s, median avg latency $(printf '%s\n' "${avg[@]}" | median) s; $lat; server CPU $per_query us/query; RSS $rss"
}

wait_answer() {
  for _ in $(seq 1 300); do
    if ip netns exec c0 dig +time=1 +tries=1 +short @10.80.0.1 c1 2>/dev/null | grep -q '^10\.80\.'; then
      return 0
    fi
    sleep 0.1
  done
  echo "server did not answer" >&2
  return 1
}

taskset -c 0 "$NETLOOM" -c "$cfg" watch --resync 3600 >"$work/agent.log" 2>&1 &
agent=$!
wait_answer
measure "netloom" "$agent"
kill -TERM "$agent"
wait "$agent" || true

if [ -n "$AARDVARK_DNS" ]; then
  conf=$work/aardvark
  mkdir -p "$conf"
  {
    echo "10.80.0.1"
    for i in $(seq 0 $((CONTAINERS - 1))); do
      ip=$(awk -v n="c$i" '$0 ~ "\t"n"( |$)" { print $1; exit }' "/etc/netns/c0/hosts")
      [ "$i" = 0 ] && ip=$(ip -n c0 -4 -o addr show dev eth0 | awk '{ split($4, a, "/"); print a[1] }')
      printf '%064x %s  c%d\n' "$i" "$ip" "$i"
    done
  } > "$conf/bench"
  taskset -c 0 "$AARDVARK_DNS" --config "$conf" -p 53 run >"$work/aardvark.log" 2>&1
  apid=$(cat "$conf/aardvark.pid")
  wait_answer
  measure "aardvark-dns" "$apid"
  kill -TERM "$apid" || true
else
  echo "aardvark-dns: skipped (set AARDVARK_DNS=/path/to/aardvark-dns)"
fi
