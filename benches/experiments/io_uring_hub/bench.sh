#!/bin/bash
# Usage: bench.sh OUTDIR  -- runs everything, alternating modes, 3 UDP runs each.
B=$(dirname "$0")/target/release/io-uring-hub
OUT=${1:-results}; mkdir -p $OUT
MODES=${MODES:-"epoll batch mshot mshot-poll mshot-sqpoll"}
FWD=""; SRV=""
cleanup() { [ -n "$SRV" ] && kill $SRV 2>/dev/null; [ -n "$FWD" ] && kill -INT $FWD 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT; trap "exit 1" INT TERM
start_fwd() { # mode tag
  $B $1 > $OUT/fwd.$2.txt 2>&1 & FWD=$!
  for i in $(seq 100); do grep -q READY $OUT/fwd.$2.txt && break; sleep 0.05; done
  NA=usp${FWD}a; NB=usp${FWD}b
  ip netns exec $NA ping -c 2 -i 0.2 -W 1 10.150.0.2 >/dev/null   # warm ARP
}
stop_fwd() { kill -INT $FWD; wait $FWD; FWD=""; }
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
sysbusy() { awk '/^cpu /{print $2+$3+$4+$7+$8" "$2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
udp_run() { # mode run
  tag=udp.$1.$2; start_fwd $1 $tag
  ip netns exec $NB iperf3 -s -1 -J > $OUT/srv.$tag.json 2>&1 & SRV=$!
  sleep 0.5
  t0=$(ticks $FWD); s0=$(sysbusy); n0=$(date +%s.%N); sd0=$(python3 -c "print(sum(int(l.split()[1],16) for l in open('/proc/net/softnet_stat')))")
  ip netns exec $NA iperf3 -c 10.150.0.2 -u -l 18 -b ${UDPB:-0} -t 5 -J > $OUT/cli.$tag.json 2>&1
  t1=$(ticks $FWD); s1=$(sysbusy); n1=$(date +%s.%N)
  wait $SRV; SRV=""
  txdrop=$(ip netns exec $NA cat /sys/class/net/ust${FWD}a/statistics/tx_dropped)
  rcvbuf=$(ip netns exec $NB awk '/^Udp:/{n++; if(n==2) print $6}' /proc/net/snmp)
  sd1=$(python3 -c "print(sum(int(l.split()[1],16) for l in open('/proc/net/softnet_stat')))")
  stop_fwd
  echo "$tag ticks=$((t1-t0)) wall=$(echo "$n1 - $n0" | bc) sys0=\"$s0\" sys1=\"$s1\" tapA_txdrop=$txdrop udpB_rcvbuferr=$rcvbuf softnet_drop=$((sd1-sd0))" >> $OUT/cpu.txt
}
tcp_run() {
  tag=tcp.$1; start_fwd $1 $tag
  ip netns exec $NB iperf3 -s -1 -J > $OUT/srv.$tag.json 2>&1 & SRV=$!
  sleep 0.5
  t0=$(ticks $FWD); n0=$(date +%s.%N)
  ip netns exec $NA iperf3 -c 10.150.0.2 -t 5 -J > $OUT/cli.$tag.json 2>&1
  t1=$(ticks $FWD); n1=$(date +%s.%N)
  wait $SRV; SRV=""; stop_fwd
  echo "$tag ticks=$((t1-t0)) wall=$(echo "$n1 - $n0" | bc)" >> $OUT/cpu.txt
}
ping_run() {
  tag=ping.$1${2:+.$2}; start_fwd $1 $tag
  t0=$(ticks $FWD)
  ip netns exec $NA ping -i 0.01 -c 300 10.150.0.2 > $OUT/$tag.txt 2>&1
  t1=$(ticks $FWD)
  stop_fwd
  echo "$tag ticks=$((t1-t0))" >> $OUT/cpu.txt
}
strace_run() {
  tag=strace.$1; start_fwd $1 $tag
  ip netns exec $NB iperf3 -s -1 > /dev/null 2>&1 & SRV=$!
  sleep 0.3
  timeout -s INT 6 strace -c -f -p $FWD -o $OUT/$tag.strace & ST=$!
  sleep 0.5
  ip netns exec $NA iperf3 -c 10.150.0.2 -u -l 18 -b 0 -t 3 -J > $OUT/cli.$tag.json 2>&1
  wait $SRV; SRV=""
  kill -INT $ST 2>/dev/null; wait $ST
  stop_fwd
}
[ -z "$SKIP_UDP" ] && for r in ${ROUNDS:-1 2 3}; do for m in $MODES; do echo "udp $m $r"; udp_run $m $r; done; done
[ -z "$SKIP_PING" ] && for r in ${PROUNDS:-1}; do for m in $MODES; do echo "ping $m"; ping_run $m $r; done; done
[ -z "$SKIP_TCP" ] && for m in $MODES; do echo "tcp $m"; tcp_run $m; done
[ -z "$SKIP_STRACE" ] && for m in $MODES; do echo "strace $m"; strace_run $m; done
echo DONE
