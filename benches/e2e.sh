#!/usr/bin/env bash
# End-to-end bench: tapswitch against the Linux kernel bridge, between two network namespaces.
#
#   sudo benches/e2e.sh [--duration SECS] [--quick] [--json FILE]
#
# In one run it measures, for each of the two setups below:
#   1. TCP throughput (iperf3, one stream, Gbit/s at the receiver),
#   2. 64-byte-frame UDP packets per second (iperf3 -u -l 18 -b 0: 18 B payload + 8 UDP + 20 IPv4
#      + 14 Ethernet + 4 FCS = 64 B on the wire), received packets per second and loss % as the
#      receiver counted them,
#   3. ping RTT (-i 0.01): avg, p50, p99.
#
# Setups (every name contains this script's PID; nothing touches the root namespace's links):
#   tapswitch: namespaces tsb<PID>ta and tsb<PID>tb, each with a TAP port (tsb<PID>tapa,
#              tsb<PID>tapb) of a `tapswitch run` daemon started by this script in the root
#              namespace, control socket in a private temp directory.
#   bridge:    namespaces tsb<PID>ka and tsb<PID>kb, each with a veth (tsb<PID>va, tsb<PID>vb)
#              whose peer (tsb<PID>pa, tsb<PID>pb) is enslaved to bridge tsb<PID>br, which lives
#              in its own namespace tsb<PID>kbr.
# Both use 10.111.0.1/24 (side A, the client) and 10.111.0.2/24 (side B, the server), each pair in
# its own namespaces. Metrics are run interleaved (tapswitch, then bridge, for each metric) so
# slow drift of a noisy machine hits both alike. Nothing is pinned to a CPU.
#
# Everything the script creates (namespaces, links, processes, temp files) is removed on success,
# on failure and on Ctrl-C/SIGTERM; only PIDs the script started are ever signalled.
#
# Environment: TAPSWITCH=/path/to/tapswitch to use that binary; otherwise target/release/tapswitch
# (built with `cargo build --release --bin tapswitch` if missing).
# Requires: root, iproute2 (ip, ss), iperf3, ping from iputils-ping, awk, timeout (coreutils).

# cleanup and the helpers it calls run from a trap, which shellcheck cannot see.
# shellcheck disable=SC2317
set -u -o pipefail

usage() {
    cat <<EOF
usage: $0 [--duration SECS] [--quick] [--json FILE]

  --duration SECS  length of each iperf3 run (default 10; ping sends 100 per second of it)
  --quick          short runs for a CI smoke test (2 s each) unless --duration is given
  --json FILE      also write the results as JSON to FILE
  -h, --help       this text

Run as root. TAPSWITCH=path selects the binary (default: target/release/tapswitch, built if
missing).
EOF
}

die() {
    echo "e2e: error: $*" >&2
    exit 1
}
note() { echo "==> $*" >&2; }
warn() { echo "e2e: warning: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
DURATION=""
QUICK=0
JSON_OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --duration)
        [[ $# -ge 2 ]] || die "--duration needs a value"
        DURATION=$2
        shift 2
        ;;
    --duration=*)
        DURATION=${1#*=}
        shift
        ;;
    --quick)
        QUICK=1
        shift
        ;;
    --json)
        [[ $# -ge 2 ]] || die "--json needs a file name"
        JSON_OUT=$2
        shift 2
        ;;
    --json=*)
        JSON_OUT=${1#*=}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
done
if [[ -z $DURATION ]]; then
    if [[ $QUICK == 1 ]]; then DURATION=2; else DURATION=10; fi
fi
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 3600 ]] ||
    die "--duration must be a whole number of seconds between 1 and 3600, got '$DURATION'"
# Omit TCP slow start from the result on runs long enough to afford it.
if [[ $DURATION -ge 5 ]]; then TCP_OMIT=1; else TCP_OMIT=0; fi
PING_COUNT=$((DURATION * 100))
[[ $PING_COUNT -ge 100 ]] || PING_COUNT=100
if [[ -n $JSON_OUT ]]; then
    JSON_DIR=$(dirname -- "$JSON_OUT")
    [[ -d $JSON_DIR && -w $JSON_DIR ]] || die "--json $JSON_OUT: directory $JSON_DIR is not writable"
fi

# ---------------------------------------------------------------------------------------------
# Preflight: everything is checked before anything is created.
# ---------------------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "must run as root (it creates network namespaces, TAP, veth and bridge devices); try: sudo $0"
for tool in ip ss iperf3 ping awk sort timeout mktemp; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        case "$tool" in
        iperf3) die "iperf3 not found; install it: apt-get install iperf3" ;;
        ping) die "ping not found; install it: apt-get install iputils-ping" ;;
        ip | ss) die "$tool not found; install it: apt-get install iproute2" ;;
        awk) die "awk not found; install it: apt-get install mawk (or gawk)" ;;
        *) die "$tool not found; install it: apt-get install coreutils" ;;
        esac
    fi
done
ping -V 2>&1 | grep -qi iputils ||
    die "ping is not iputils ping (needs -i 0.01 and per-reply times); install it: apt-get install iputils-ping"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing: the tun module is needed for tapswitch's TAP ports"

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${TAPSWITCH:-} ]]; then
    [[ -x $TAPSWITCH ]] || die "TAPSWITCH=$TAPSWITCH is not an executable file"
else
    TAPSWITCH=$ROOT/target/release/tapswitch
    if [[ ! -x $TAPSWITCH ]]; then
        command -v cargo >/dev/null 2>&1 ||
            die "$TAPSWITCH is missing and cargo is not in PATH; build it (cargo build --release --bin tapswitch) or set TAPSWITCH=path"
        note "building $TAPSWITCH (cargo build --release --bin tapswitch)"
        (cd "$ROOT" && cargo build --release --bin tapswitch) >&2 || die "cargo build failed"
        [[ -x $TAPSWITCH ]] || die "cargo build did not produce $TAPSWITCH"
    fi
    newer=$(find "$ROOT/src" "$ROOT/control" "$ROOT/dataplane" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
        \( -name '*.rs' -o -name 'Cargo.*' \) -newer "$TAPSWITCH" 2>/dev/null | head -n 3)
    [[ -z $newer ]] || warn "$TAPSWITCH is older than the sources (e.g. ${newer//$'\n'/, });" \
        "the figures are for that older build; rebuild with: cargo build --release --bin tapswitch"
fi
BIN_DATE=$(date -u -r "$TAPSWITCH" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo unknown)

# ---------------------------------------------------------------------------------------------
# Names (all contain the PID) and cleanup
# ---------------------------------------------------------------------------------------------
P=$$
PFX=tsb$P # every name below is $PFX followed by a letter, so "tsb12" never matches "tsb123…"
NS_TA=${PFX}ta NS_TB=${PFX}tb TAP_A=${PFX}tapa TAP_B=${PFX}tapb
NS_KA=${PFX}ka NS_KB=${PFX}kb NS_KBR=${PFX}kbr BR=${PFX}br
VETH_A=${PFX}va VETH_B=${PFX}vb PEER_A=${PFX}pa PEER_B=${PFX}pb
IP_A=10.111.0.1 IP_B=10.111.0.2 PREFIX=24 IPERF_PORT=5201

NETNS_MADE=() # namespaces this script created, in creation order
PIDS=()       # long-running background processes this script started (iperf3 servers)
CUR_PID=""    # the client (timeout -> iperf3 or ping) running now, if any
DAEMON_PID=""
TMP=""
CLEANED=0

# True while PID $1 is a live child of this script. The parent check means a PID that was
# reaped and then reused by some other process is never signalled; a zombie counts as exited.
alive() {
    local stat rest state ppid
    [[ -n $1 ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    read -r state ppid _ <<<"$rest"
    [[ $ppid == "$$" && $state != Z ]]
}

# Sends $2 to PID $1 and waits up to $3 tenths of a second for it to exit, then SIGKILLs it.
stop_pid() {
    local pid=$1 sig=$2 tenths=$3 i
    alive "$pid" || {
        wait "$pid" 2>/dev/null
        return 0
    }
    kill "-$sig" "$pid" 2>/dev/null
    for ((i = 0; i < tenths; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        warn "PID $pid did not exit after SIG$sig; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local rc=$?
    [[ $CLEANED == 1 ]] && return
    CLEANED=1
    # No second Ctrl-C half-way through the cleanup.
    trap '' INT TERM
    local pid ns i left
    [[ $rc -gt 128 ]] && echo "e2e: interrupted (exit $rc); cleaning up" >&2
    # The client (its timeout wrapper forwards SIGTERM to iperf3/ping), the iperf3 servers.
    for pid in $CUR_PID "${PIDS[@]}"; do
        stop_pid "$pid" TERM 30
    done
    # The daemon: SIGTERM is its clean exit (deletes its TAPs and its socket).
    if [[ -n $DAEMON_PID ]]; then
        stop_pid "$DAEMON_PID" TERM 100
        if [[ -n $TMP && -S $TMP/tapswitch.sock ]]; then
            warn "tapswitch left its control socket behind after exiting"
        fi
    fi
    # Namespaces: deleting one destroys every link in it (veth peers go with their pair, the
    # bridge with its namespace).
    for ((i = ${#NETNS_MADE[@]} - 1; i >= 0; i--)); do
        ns=${NETNS_MADE[i]}
        ip netns del "$ns" 2>/dev/null || warn "could not delete namespace $ns"
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $rc -ne 0 && -s $TMP/tapswitch.log ]]; then
            echo "---- last lines of the tapswitch log ----" >&2
            tail -n 20 "$TMP/tapswitch.log" >&2
        fi
        rm -rf -- "$TMP"
    fi
    # Check that nothing of ours is left.
    left=$(
        {
            ip netns list 2>/dev/null
            ip -br link 2>/dev/null
        } | grep -E "${PFX}[a-z]" || true
    )
    [[ -z $left ]] || warn "left behind after cleanup: $left"
    for pid in $CUR_PID "${PIDS[@]}" $DAEMON_PID; do
        alive "$pid" && warn "process $pid is still running"
    done
    trap - EXIT INT TERM
    exit "$rc"
}
trap cleanup EXIT INT TERM

TMP=$(mktemp -d "/tmp/${PFX}e2e.XXXXXX") || die "mktemp failed"
SOCK=$TMP/tapswitch.sock

mk_ns() {
    ip netns add "$1" || die "ip netns add $1 failed"
    NETNS_MADE+=("$1")
    ip -n "$1" link set lo up || die "lo up in $1 failed"
}

# Runs a command in the background (so that a signal is handled at once, not after the
# command), with its PID in CUR_PID for the cleanup; waits for it and returns its status.
# Output goes to file $1.
run_logged() {
    local out=$1 rc
    shift
    "$@" >"$out" 2>&1 </dev/null &
    CUR_PID=$!
    wait "$CUR_PID"
    rc=$?
    CUR_PID=""
    return $rc
}

# ---------------------------------------------------------------------------------------------
# Setups
# ---------------------------------------------------------------------------------------------
setup_tapswitch() {
    note "tapswitch: namespaces $NS_TA $NS_TB, daemon $TAPSWITCH"
    mk_ns "$NS_TA"
    mk_ns "$NS_TB"
    "$TAPSWITCH" --socket "$SOCK" run >"$TMP/tapswitch.log" 2>&1 </dev/null &
    DAEMON_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        alive "$DAEMON_PID" || die "tapswitch run exited: $(tail -n 5 "$TMP/tapswitch.log")"
        if [[ -S $SOCK ]] && "$TAPSWITCH" --socket "$SOCK" port list >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    [[ $i -lt 100 ]] || die "tapswitch control socket $SOCK did not answer within 10 s"
    "$TAPSWITCH" --socket "$SOCK" port add "$TAP_A" --netns "$NS_TA" || die "port add $TAP_A failed"
    "$TAPSWITCH" --socket "$SOCK" port add "$TAP_B" --netns "$NS_TB" || die "port add $TAP_B failed"
    ip -n "$NS_TA" addr add "$IP_A/$PREFIX" dev "$TAP_A" || die "address on $TAP_A failed"
    ip -n "$NS_TB" addr add "$IP_B/$PREFIX" dev "$TAP_B" || die "address on $TAP_B failed"
    ip -n "$NS_TA" link set "$TAP_A" up || die "$TAP_A up failed"
    ip -n "$NS_TB" link set "$TAP_B" up || die "$TAP_B up failed"
}

setup_bridge() {
    note "bridge: namespaces $NS_KA $NS_KB, bridge $BR in namespace $NS_KBR"
    mk_ns "$NS_KA"
    mk_ns "$NS_KB"
    mk_ns "$NS_KBR"
    ip -n "$NS_KBR" link add "$BR" type bridge || die "bridge $BR failed"
    ip -n "$NS_KBR" link set "$BR" up || die "bridge $BR up failed"
    ip -n "$NS_KBR" link add "$PEER_A" type veth peer name "$VETH_A" netns "$NS_KA" ||
        die "veth $PEER_A/$VETH_A failed"
    ip -n "$NS_KBR" link add "$PEER_B" type veth peer name "$VETH_B" netns "$NS_KB" ||
        die "veth $PEER_B/$VETH_B failed"
    local p
    for p in "$PEER_A" "$PEER_B"; do
        ip -n "$NS_KBR" link set "$p" master "$BR" || die "$p into $BR failed"
        ip -n "$NS_KBR" link set "$p" up || die "$p up failed"
    done
    ip -n "$NS_KA" addr add "$IP_A/$PREFIX" dev "$VETH_A" || die "address on $VETH_A failed"
    ip -n "$NS_KB" addr add "$IP_B/$PREFIX" dev "$VETH_B" || die "address on $VETH_B failed"
    ip -n "$NS_KA" link set "$VETH_A" up || die "$VETH_A up failed"
    ip -n "$NS_KB" link set "$VETH_B" up || die "$VETH_B up failed"
}

# setup name -> client namespace, server namespace; devices whose drop counters we read.
declare -A CLIENT_NS=([ts]=$NS_TA [br]=$NS_KA)
declare -A SERVER_NS=([ts]=$NS_TB [br]=$NS_KB)
declare -A LABEL=([ts]=tapswitch [br]=bridge)
# "netns:device" pairs on the path A -> B.
declare -A PATH_DEVS=(
    [ts]="$NS_TA:$TAP_A $NS_TB:$TAP_B"
    [br]="$NS_KA:$VETH_A $NS_KBR:$PEER_A $NS_KBR:$PEER_B $NS_KB:$VETH_B"
)

start_server() { # setup
    local ns=${SERVER_NS[$1]} i
    ip netns exec "$ns" iperf3 -s -B "$IP_B" -p "$IPERF_PORT" >"$TMP/iperf3-server-$1.log" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || die "iperf3 server in $ns exited: $(cat "$TMP/iperf3-server-$1.log")"
        if [[ -n $(ip netns exec "$ns" ss -Hltn "sport = :$IPERF_PORT" 2>/dev/null) ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "iperf3 server in $ns is not listening after 5 s"
}

check_path() { # setup
    local ns=${CLIENT_NS[$1]} i
    for ((i = 0; i < 10; i++)); do
        if ip netns exec "$ns" ping -n -c 1 -W 1 "$IP_B" >/dev/null 2>&1; then
            return 0
        fi
    done
    die "${LABEL[$1]}: $IP_A cannot reach $IP_B (10 pings lost)"
}

# ---------------------------------------------------------------------------------------------
# Parsing (awk only)
# ---------------------------------------------------------------------------------------------

# iperf3 -J is pretty-printed one key per line. Prints the value of KEY in the LAST object named
# BLOCK (for "sum" that is end.sum; "sum_sent" and "sum_received" appear only under "end").
iperf_field() { # file block key
    awk -v blk="\"$2\":" -v key="\"$3\":" '
        { line = $0; gsub(/^[ \t]+|[ \t,]+$/, "", line) }
        !inb && index(line, blk) == 1 && line ~ /\{$/ { inb = 1; v = ""; next }
        inb && line ~ /^\}/ { inb = 0; if (v != "") val = v; next }
        inb && index(line, key) == 1 { v = substr(line, length(key) + 1); gsub(/^[ \t]+/, "", v) }
        END { if (val != "") print val }
    ' "$1"
}

iperf_error() { # file -> error text of a failed run, if any
    awk '{ line = $0; gsub(/^[ \t]+|[ \t,]+$/, "", line) }
         index(line, "\"error\":") == 1 { sub(/^"error":[ \t]*/, "", line); gsub(/"/, "", line); print line }' "$1"
}

# Sum of the drop counters (rx_dropped + tx_dropped) of the "netns:device" pairs given.
dev_drops() {
    local pair ns dev total=0 n
    for pair in "$@"; do
        ns=${pair%%:*}
        dev=${pair#*:}
        for f in rx_dropped tx_dropped; do
            n=$(ip netns exec "$ns" cat "/sys/class/net/$dev/statistics/$f" 2>/dev/null) || n=0
            total=$((total + n))
        done
    done
    echo "$total"
}

udp_rcvbuf_errors() { # netns
    ip netns exec "$1" cat /proc/net/snmp 2>/dev/null | awk '
        $1 == "Udp:" && !hdr { for (i = 2; i <= NF; i++) col[$i] = i; hdr = 1; next }
        $1 == "Udp:" && hdr { print $(col["RcvbufErrors"]); exit }'
}

# tapswitch -j stats (one line of JSON) -> "rx_packets tx_packets tx_errors drops" summed over
# ports. Walks the tokens with a depth counter: {"ports":[{...}]} puts ports at depth 3 and
# their drop reasons ({"drops":{...}}) at depth 4.
ts_counters() {
    "$TAPSWITCH" --socket "$SOCK" -j stats 2>/dev/null | awk '
        {
            s = $0
            gsub(/[{}\[\],]/, "\n&\n", s)
            n = split(s, tok, "\n")
            for (i = 1; i <= n; i++) {
                t = tok[i]
                if (t == "{" || t == "[") { depth++; continue }
                if (t == "}" || t == "]") { depth--; continue }
                if (t == "," || t == "") continue
                split(t, kv, ":"); k = kv[1]; gsub(/"/, "", k); v = kv[2]
                if (depth == 4 && v ~ /^[0-9]+$/) drops += v
                if (depth == 3 && k == "rx_packets") rx += v
                if (depth == 3 && k == "tx_packets") tx += v
                if (depth == 3 && k == "tx_errors") txe += v
            }
        }
        END { printf "%d %d %d %d\n", rx, tx, txe, drops }'
}

# ---------------------------------------------------------------------------------------------
# Measurements. Results go to R["<setup>.<metric>"]; a failed measurement leaves "" (null).
# ---------------------------------------------------------------------------------------------
declare -A R
FAILED=0

# Runs an iperf3 client in the setup's client namespace; retries while the server is still busy
# with the previous test. Output (JSON) in file $2.
iperf_client() { # setup outfile args...
    local s=$1 out=$2 try err
    shift 2
    for ((try = 0; try < 5; try++)); do
        run_logged "$out" timeout -k 5 $((DURATION + TCP_OMIT + 30)) \
            ip netns exec "${CLIENT_NS[$s]}" iperf3 -c "$IP_B" -p "$IPERF_PORT" -J "$@"
        err=$(iperf_error "$out")
        if [[ -z $err && -n $(iperf_field "$out" sum_sent bytes) ]]; then
            return 0
        fi
        if [[ $err == *busy* ]]; then
            sleep 1
            continue
        fi
        break
    done
    warn "${LABEL[$s]}: iperf3 $*: ${err:-no result: $(tail -c 300 "$out")}"
    FAILED=1
    return 1
}

measure_tcp() { # setup
    local s=$1 out=$TMP/tcp-$1.json bps
    note "${LABEL[$s]}: TCP, ${DURATION} s (+${TCP_OMIT} s omitted)"
    iperf_client "$s" "$out" -t "$DURATION" -O "$TCP_OMIT" || return 0
    bps=$(iperf_field "$out" sum_received bits_per_second)
    R[$s.tcp_gbps]=$(awk -v b="$bps" 'BEGIN { if (b != "") printf "%.3f", b / 1e9 }')
    R[$s.tcp_retransmits]=$(iperf_field "$out" sum_sent retransmits)
}

measure_udp() { # setup
    local s=$1 out=$TMP/udp-$1.json blk pk lost secs
    note "${LABEL[$s]}: UDP 64-byte frames, ${DURATION} s, unlimited rate"
    local d0 r0 t0 d1 r1 t1
    local -a devs
    read -r -a devs <<<"${PATH_DEVS[$s]}"
    d0=$(dev_drops "${devs[@]}")
    r0=$(udp_rcvbuf_errors "${SERVER_NS[$s]}")
    [[ $s == ts ]] && t0=$(ts_counters)
    iperf_client "$s" "$out" -u -l 18 -b 0 -t "$DURATION" || return 0
    d1=$(dev_drops "${devs[@]}")
    r1=$(udp_rcvbuf_errors "${SERVER_NS[$s]}")
    # iperf3 >= 3.10 has the receiver's view in sum_received; older ones only in sum.
    blk=sum_received
    [[ -n $(iperf_field "$out" sum_received packets) ]] || blk=sum
    pk=$(iperf_field "$out" $blk packets)
    lost=$(iperf_field "$out" $blk lost_packets)
    secs=$(iperf_field "$out" $blk seconds)
    R[$s.udp_sent_packets]=$(iperf_field "$out" sum_sent packets)
    R[$s.udp_rx_packets]=$(awk -v p="$pk" -v l="$lost" 'BEGIN { if (p != "" && l != "") printf "%d", p - l }')
    R[$s.udp_rx_kpps]=$(awk -v p="$pk" -v l="$lost" -v t="$secs" \
        'BEGIN { if (p != "" && l != "" && t > 0) printf "%.1f", (p - l) / t / 1000 }')
    R[$s.udp_loss_pct]=$(awk -v x="$(iperf_field "$out" $blk lost_percent)" 'BEGIN { if (x != "") printf "%.2f", x }')
    R[$s.udp_link_drops]=$((d1 - d0))
    R[$s.udp_rcvbuf_drops]=$((${r1:-0} - ${r0:-0}))
    if [[ $s == ts ]]; then
        t1=$(ts_counters)
        read -r rx0 tx0 te0 dr0 <<<"$t0"
        read -r rx1 tx1 te1 dr1 <<<"$t1"
        R[ts.udp_switch_rx]=$((rx1 - rx0))
        R[ts.udp_switch_tx]=$((tx1 - tx0))
        R[ts.udp_switch_tx_errors]=$((te1 - te0))
        R[ts.udp_switch_drops]=$((dr1 - dr0))
        # What the switch forwarded, whether or not the receiving iperf3 then kept up.
        R[ts.udp_switch_fwd_kpps]=$(awk -v n="${R[ts.udp_switch_tx]}" -v t="$DURATION" 'BEGIN { printf "%.1f", n / t / 1000 }')
    fi
}

measure_ping() { # setup
    local s=$1 out=$TMP/ping-$1.txt stats
    note "${LABEL[$s]}: ping, $PING_COUNT x 10 ms"
    run_logged "$out" timeout -k 5 $((PING_COUNT / 50 + 30)) \
        ip netns exec "${CLIENT_NS[$s]}" ping -n -c "$PING_COUNT" -i 0.01 -W 1 "$IP_B"
    # -> avg p50 p99 min max received loss%  (nearest-rank percentiles)
    stats=$(awk -v sent="$PING_COUNT" '
        match($0, /time=[0-9.]+/) { t[n++] = substr($0, RSTART + 5, RLENGTH - 5) + 0 }
        END {
            if (n == 0) exit 1
            for (i = 0; i < n; i++) sum += t[i]
            # insertion sort: n is a few thousand at most
            for (i = 1; i < n; i++) { x = t[i]; for (j = i - 1; j >= 0 && t[j] > x; j--) t[j + 1] = t[j]; t[j + 1] = x }
            p50 = int(0.50 * n + 0.999999); if (p50 < 1) p50 = 1
            p99 = int(0.99 * n + 0.999999); if (p99 < 1) p99 = 1
            # ms -> us
            printf "%.1f %.1f %.1f %.1f %.1f %d %.2f\n", 1000 * sum / n, 1000 * t[p50 - 1], 1000 * t[p99 - 1], 1000 * t[0], 1000 * t[n - 1], n, 100 * (sent - n) / sent
        }' "$out") || {
        warn "${LABEL[$s]}: ping got no reply: $(tail -n 3 "$out")"
        FAILED=1
        return 0
    }
    local -a v
    read -r -a v <<<"$stats"
    R[$s.ping_avg_us]=${v[0]} R[$s.ping_p50_us]=${v[1]} R[$s.ping_p99_us]=${v[2]}
    R[$s.ping_min_us]=${v[3]} R[$s.ping_max_us]=${v[4]} R[$s.ping_received]=${v[5]}
    R[$s.ping_loss_pct]=${v[6]}
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
NPROC=$(nproc)
KERNEL=$(uname -r)
IPERF_VERSION=$(iperf3 --version 2>/dev/null | awk 'NR == 1 { print $2 }')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

setup_tapswitch
setup_bridge
for s in ts br; do
    check_path "$s"
    start_server "$s"
done

for s in ts br; do measure_tcp "$s"; done
for s in ts br; do measure_udp "$s"; done
for s in ts br; do measure_ping "$s"; done

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
# metric key | label | better
ROWS=(
    "tcp_gbps|TCP throughput [Gbit/s]|higher"
    "udp_rx_kpps|UDP 64B frames received [kpps]|higher"
    "udp_loss_pct|UDP 64B loss at receiver [%]|lower"
    "ping_avg_us|ping RTT avg [us]|lower"
    "ping_p50_us|ping RTT p50 [us]|lower"
    "ping_p99_us|ping RTT p99 [us]|lower"
)

ratio() { # a b -> a/b or "" when undefined
    awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b + 0 != 0) printf "%.2f", a / b }'
}

mode="full"
[[ $QUICK == 1 ]] && mode="quick"
echo
echo "tapswitch e2e bench: $START_DATE, nproc $NPROC, kernel $KERNEL, iperf3 $IPERF_VERSION"
echo "tree rev $REV, binary $TAPSWITCH built $BIN_DATE"
echo "mode $mode: iperf3 ${DURATION} s per run, ping $PING_COUNT x 10 ms; namespace A -> namespace B"
printf '%-32s %12s %12s %12s  %s\n' "metric" "tapswitch" "bridge" "ts/bridge" "better"
for row in "${ROWS[@]}"; do
    IFS='|' read -r key label better <<<"$row"
    a=${R[ts.$key]:-} b=${R[br.$key]:-}
    r=$(ratio "$a" "$b")
    printf '%-32s %12s %12s %12s  %s\n' "$label" "${a:-n/a}" "${b:-n/a}" "${r:-n/a}" "$better"
done
echo "ratio = tapswitch / bridge: above 1 is better for throughput and pps; for loss and RTT (lower"
echo "is better) above 1 means tapswitch is worse."
detail() { # label ts-value br-value
    printf '  %-30s %12s %12s\n' "$1" "${2:-n/a}" "${3:-n/a}"
}
printf '%-32s %12s %12s\n' "detail" "tapswitch" "bridge"
detail "UDP packets sent" "${R[ts.udp_sent_packets]:-}" "${R[br.udp_sent_packets]:-}"
detail "UDP packets received" "${R[ts.udp_rx_packets]:-}" "${R[br.udp_rx_packets]:-}"
detail "  lost: device queues (1)" "${R[ts.udp_link_drops]:-}" "${R[br.udp_link_drops]:-}"
detail "  lost: receiver socket (2)" "${R[ts.udp_rcvbuf_drops]:-}" "${R[br.udp_rcvbuf_drops]:-}"
detail "UDP via the switch [kpps] (3)" "${R[ts.udp_switch_fwd_kpps]:-}" "-"
detail "TCP retransmits" "${R[ts.tcp_retransmits]:-}" "${R[br.tcp_retransmits]:-}"
detail "ping replies (of $PING_COUNT)" "${R[ts.ping_received]:-}" "${R[br.ping_received]:-}"
detail "ping RTT min / max [us]" "${R[ts.ping_min_us]:-?}/${R[ts.ping_max_us]:-?}" \
    "${R[br.ping_min_us]:-?}/${R[br.ping_max_us]:-?}"
echo "(1) rx+tx dropped on the path's links (tapswitch: the TAPs, mostly sender -> switch queue"
echo "    full; bridge: the veths). (2) UdpRcvbufErrors in B: receiver socket buffer full."
echo "(3) tapswitch tx counter / duration: what the switch forwarded, whether or not the receiving"
echo "    iperf3 kept up. Switch counters over the UDP run: rx ${R[ts.udp_switch_rx]:-?}," \
    "tx ${R[ts.udp_switch_tx]:-?}, tx_errors ${R[ts.udp_switch_tx_errors]:-?}, drops ${R[ts.udp_switch_drops]:-?}."

if [[ -n $JSON_OUT ]]; then
    jnum() { # value -> JSON number or null
        if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then echo "$1"; else echo null; fi
    }
    KEYS=(tcp_gbps tcp_retransmits udp_rx_kpps udp_loss_pct udp_sent_packets udp_rx_packets
        udp_link_drops udp_rcvbuf_drops ping_avg_us ping_p50_us ping_p99_us ping_min_us
        ping_max_us ping_received ping_loss_pct)
    {
        printf '{\n'
        printf '  "date": "%s",\n  "nproc": %s,\n  "kernel": "%s",\n' "$START_DATE" "$NPROC" "$KERNEL"
        printf '  "iperf3": "%s",\n  "rev": "%s",\n  "binary_built": "%s",\n  "mode": "%s",\n' \
            "$IPERF_VERSION" "$REV" "$BIN_DATE" "$mode"
        printf '  "duration_s": %s,\n  "ping_count": %s,\n' "$DURATION" "$PING_COUNT"
        for s in ts br; do
            printf '  "%s": {\n' "${LABEL[$s]}"
            extra=()
            [[ $s == ts ]] && extra=(udp_switch_rx udp_switch_tx udp_switch_tx_errors udp_switch_drops udp_switch_fwd_kpps)
            all=("${KEYS[@]}" "${extra[@]}")
            for ((i = 0; i < ${#all[@]}; i++)); do
                sep=","
                [[ $i -eq $((${#all[@]} - 1)) ]] && sep=""
                printf '    "%s": %s%s\n' "${all[i]}" "$(jnum "${R[$s.${all[i]}]:-}")" "$sep"
            done
            printf '  },\n'
        done
        printf '  "ratio_tapswitch_over_bridge": {\n'
        for ((i = 0; i < ${#ROWS[@]}; i++)); do
            IFS='|' read -r key label better <<<"${ROWS[i]}"
            sep=","
            [[ $i -eq $((${#ROWS[@]} - 1)) ]] && sep=""
            printf '    "%s": %s%s\n' "$key" "$(jnum "$(ratio "${R[ts.$key]:-}" "${R[br.$key]:-}")")" "$sep"
        done
        printf '  },\n  "lower_is_better": ["udp_loss_pct", "ping_avg_us", "ping_p50_us", "ping_p99_us"]\n'
        printf '}\n'
    } >"$JSON_OUT" || die "could not write $JSON_OUT"
    note "results written to $JSON_OUT"
fi

[[ $FAILED == 0 ]] || die "some measurements failed (n/a above)"
exit 0
