#!/usr/bin/env bash
# Soak: tapswitch under churn and load for a while, sampled every 10 s.
#
#   bash benches/soak.sh [--minutes N] [--rate R] [--bin PATH]     (as root; default 30 min)
#
# Layout: a tapswitch daemon (its own socket and state directory) routes VLAN 10
# (10.78.0.0/24, a client container) and VLAN 100 (10.178.0.0/24, an outside container) and
# masquerades VLAN 10 out of VLAN 100. While it runs:
# - load: the client opens R new TCP connections per second (default 1000) to a server in the
#   outside container, each through masquerade (a request, an echo, a close);
# - churn, in a loop: a port added and deleted, a Service added and deleted, a reload, a
#   fresh CLI connection for each;
# - every 10 s: the daemon's RSS and open descriptors, the MAC, neighbour and conntrack table
#   sizes (`stats -j`), connections made and failed, control requests made and failed.
# At the end it prints the samples and a verdict: RSS growth over the second half of the run
# (the first half is the warm-up, in which the tables reach their high-water marks; target
# under 5%), descriptors from the first to the last sample (target flat), failed control
# requests and failed connections (target 0). Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30
rate=1000
bin=target/release/tapswitch
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--rate R] [--bin PATH]" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || cargo build --release --bin tapswitch
tag="soak$$"
work=$(mktemp -d "/tmp/tapswitch-$tag-XXXX")
sock="$work/ts.sock"
client="${tag}c"
outside="${tag}o"
churnns="${tag}k"
pids=()
daemon=""
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -n "$daemon" ]; then
    "$bin" --socket "$sock" stop --purge >/dev/null 2>&1
    for _ in $(seq 50); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$daemon" 2>/dev/null
    wait "$daemon" 2>/dev/null
  fi
  for ns in "$client" "$outside" "$churnns"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
for ns in "$client" "$outside" "$churnns"; do ip netns add "$ns"; done

cat >"$work/ts.toml" <<EOF
[switch]
checkpoint_secs = 10
[[interface]]
vlan = 10
address = "10.78.0.1/24"
[[interface]]
vlan = 100
address = "10.178.0.1/24"
[[snat]]
source = "10.78.0.0/24"
out_vlan = 100
EOF
"$bin" --socket "$sock" run --config "$work/ts.toml" --state-dir "$work/state" \
  2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 100); do
  "$bin" --socket "$sock" port list >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || { echo "tapswitch did not start:"; tail "$work/daemon.log"; exit 1; }
  sleep 0.1
done
ts() { "$bin" --socket "$sock" "$@"; }
ts port add "${tag}pc" --netns "$client" --vlan 10
ts port add "${tag}po" --netns "$outside" --vlan 100
ip -n "$client" addr add 10.78.0.2/24 dev "${tag}pc"
ip -n "$client" link set lo up
ip -n "$client" route add default via 10.78.0.1
ip -n "$outside" addr add 10.178.0.254/24 dev "${tag}po"
ip -n "$outside" link set lo up
# Many connections per second: a wide port range and quick reuse on the client.
ip netns exec "$client" sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"
ip netns exec "$client" sysctl -q -w net.ipv4.tcp_tw_reuse=1

# The server: accept, echo what comes, close.
ip netns exec "$outside" python3 - <<'EOF' &
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.178.0.254", 7000)); s.listen(4096)
def serve(c):
    try:
        d = c.recv(64)
        if d: c.sendall(d)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
pids+=($!)
sleep 0.5

# The load: RATE new connections per second; counts in $work/load.
ip netns exec "$client" python3 - "$rate" "$work/load" <<'EOF' &
import asyncio, sys, time
rate, out = int(sys.argv[1]), sys.argv[2]
ok = failed = 0
async def one():
    global ok, failed
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("10.178.0.254", 7000), 5)
        w.write(b"ping"); await w.drain()
        d = await asyncio.wait_for(r.read(64), 5)
        w.close()
        if d == b"ping": ok += 1
        else: failed += 1
    except Exception:
        failed += 1
async def main():
    global ok, failed
    tick, last = 0.01, time.time()
    per = rate * tick
    debt = 0.0
    while True:
        debt += per
        while debt >= 1:
            asyncio.ensure_future(one()); debt -= 1
        await asyncio.sleep(tick)
        if time.time() - last >= 1:
            with open(out, "w") as f: f.write(f"{ok} {failed}\n")
            last = time.time()
asyncio.run(main())
EOF
pids+=($!)

# The churn: each step is one CLI call; counts in $work/churn.
(
  ok=0; failed=0; i=0
  call() { if ts "$@" >/dev/null 2>>"$work/churn.err"; then ok=$((ok+1)); else failed=$((failed+1)); fi; }
  while true; do
    i=$((i+1))
    call port add "${tag}x" --netns "$churnns" --vlan 20
    call port del "${tag}x"
    call service add "s$i" --vip "10.96.$((i % 200)).$((i % 250 + 1))" --port 80 --backend 10.178.0.254:7000
    call service del "s$i"
    call reload
    call stats -j
    echo "$ok $failed" >"$work/churn"
    sleep 0.2
  done
) &
pids+=($!)

samples="$work/samples"
echo "t_s rss_kib fds macs neigh conntrack conns_ok conns_failed ctl_ok ctl_failed" >"$samples"
end=$(( $(date +%s) + minutes * 60 ))
start=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 10
  kill -0 "$daemon" || { echo "the daemon died"; tail "$work/daemon.log"; exit 1; }
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon/status")
  fds=$(ls "/proc/$daemon/fd" | wc -l)
  stats=$(ts stats -j)
  read -r macs ct < <(python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["fdb"]["learned_entries"], s["nat"]["entries"])' <<<"$stats")
  neigh=$(ts neigh show -j | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  read -r lok lfail <"$work/load" || { lok=0; lfail=0; }
  read -r cok cfail <"$work/churn" || { cok=0; cfail=0; }
  line="$(( $(date +%s) - start )) $rss $fds $macs $neigh $ct $lok $lfail $cok $cfail"
  echo "$line" | tee -a "$samples"
done
python3 - "$samples" "$rate" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
rows = [[int(x) for x in r] for r in rows]
if not rows:
    print("no samples"); sys.exit(1)
last = rows[-1]
secs = last[0]
# Warm-up: the first half of the run. The tables reach their high-water marks there (the
# conntrack index, a hash table, doubles once when the tombstones of the connection churn
# meet its half-full point); growth after that would be a leak.
half = [r for r in rows if r[0] >= secs / 2] or rows
rss_half, rss_end = half[0][1], last[1]
growth = (rss_end - rss_half) / rss_half * 100
minute = next((r for r in rows if r[0] >= 60), rows[0])
fds = [r[2] for r in rows]
print(f"\nduration {secs} s; connections {last[6]} ok ({last[6]/max(secs,1):.0f}/s), {last[7]} failed")
print(f"RSS: {minute[1]} KiB at {minute[0]} s, {rss_half} KiB at {half[0][0]} s, "
      f"{rss_end} KiB at the end, max {max(r[1] for r in rows)} KiB")
print(f"RSS growth over the second half: {growth:+.1f}% (target < 5%)")
print(f"descriptors: first {fds[0]}, last {fds[-1]}, min {min(fds)}, max {max(fds)} (target: the "
      "last within 2 of the first; a sample may catch a control connection or a checkpoint open)")
print(f"control requests: {last[8]} ok, {last[9]} failed (target 0 failed)")
print(f"tables at the end: {last[3]} MACs, {last[4]} neighbours, {last[5]} connections")
ok = growth < 5 and abs(fds[-1] - fds[0]) <= 2 and last[9] == 0 and last[7] == 0
print("verdict:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
