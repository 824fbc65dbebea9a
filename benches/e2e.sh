#!/usr/bin/env bash
# End-to-end bench: tapswitch against Open vSwitch's userspace datapath (TAP ports, TSO on), the
# Linux kernel bridge and a plain veth pair (no switch at all: the ceiling), between two network
# namespaces; tapswitch's VXLAN overlay against
# the kernel's vxlan device + bridge, between two containers on two "hosts"; and tapswitch's
# router with masquerade against a kernel router namespace with an nftables masquerade rule.
#
#   sudo benches/e2e.sh [--duration SECS] [--quick] [--no-ovs] [--no-overlay] [--no-nat] [--json FILE] [--perf DIR]
#
# In one run it measures, for each of the setups below:
#   1. TCP throughput (iperf3, Gbit/s at the receiver), one stream and four (-P 4); for tapswitch
#      and Open vSwitch also the CPU time of the switch's daemon(s) (tapswitch's; ovs-vswitchd)
#      per GB moved (utime + stime from /proc/PID/stat before and after the run, over the bytes
#      iperf3 sent in that run),
#   2. 64-byte-frame UDP packets per second (iperf3 -u -l 18 -b 0: 18 B payload + 8 UDP + 20 IPv4
#      + 14 Ethernet + 4 FCS = 64 B on the wire), received packets per second and loss % as the
#      receiver counted them,
#   3. ping RTT (-i 0.01): avg, p50, p99.
#
# Setups (every name contains this script's PID; nothing touches the root namespace's links, and
# the only ones made there are Open vSwitch's TAPs, which the script moves into its namespaces):
#   tapswitch: namespaces tsb<PID>ta and tsb<PID>tb, each with a TAP port (tsb<PID>tapa,
#              tsb<PID>tapb) of a `tapswitch run` daemon started by this script in the root
#              namespace, control socket and state directory in a private temp directory.
#   bridge:    namespaces tsb<PID>ka and tsb<PID>kb, each with a veth (tsb<PID>va, tsb<PID>vb)
#              whose peer (tsb<PID>pa, tsb<PID>pb) is enslaved to bridge tsb<PID>br, which lives
#              in its own namespace tsb<PID>kbr.
#   veth:      namespaces tsb<PID>da and tsb<PID>db joined by one veth pair (tsb<PID>dva,
#              tsb<PID>dvb): no switch at all.
#   ovs:       namespaces tsb<PID>wa and tsb<PID>wb, each with a TAP port (tsb<PID>wpa,
#              tsb<PID>wpb, `type=tap`) of bridge tsb<PID>wbr (`datapath_type=netdev`) of an
#              ovsdb-server and ovs-vswitchd started by this script in the root namespace with a
#              database, run, log and pid files and sockets of their own in a private temp
#              directory (OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR/OVS_SYSCONFDIR point there; never the
#              system's instance), `other_config:userspace-tso-enable=true`, and
#              --disable-system (so it never looks at, or deletes, kernel datapaths of any other
#              instance) and --disable-system-route. OVS creates its TAPs in the root namespace;
#              the script moves them into the namespaces, and the bridge's own local port (a TAP
#              too, tsb<PID>wbr) into namespace tsb<PID>wl, down. Skipped with a message when
#              Open vSwitch is not installed (apt-get install openvswitch-switch), or with
#              --no-ovs.
# All four use 10.111.0.1/24 (side A, the client) and 10.111.0.2/24 (side B, the server), each
# pair in its own namespaces.
#
# Overlay setups (container 1 on host 1 -> container 2 on host 2, VNI 42 extending VLAN 10; each
# "host" is a namespace, the two hosts of a setup joined by an underlay veth, 192.168.200.1/24 and
# .2; containers 10.112.0.1/24 and .2 with MTU 1450):
#   overlay tapswitch: hosts tsb<PID>oh1/oh2 (underlay tsb<PID>ou1/ou2), containers
#              tsb<PID>oc1/oc2. On each host a `tapswitch run` daemon runs inside the host
#              namespace (so its VTEP sockets live there), with a TAP port (tsb<PID>op1/op2) in
#              its container (`port add --netns C --vlan 10 --mtu 1450`) and
#              `vxlan add 42 --vlan 10 --local IP --remote OTHER`.
#   overlay kernel: hosts tsb<PID>xh1/xh2 (underlay tsb<PID>xu1/xu2), containers tsb<PID>xc1/xc2.
#              On each host a vxlan device tsb<PID>xv1/xv2 (id 42, dstport 4789, local IP,
#              nolearning, flood entry 00:00:00:00:00:00 dst OTHER) and a veth
#              tsb<PID>xp1/xp2 (container end tsb<PID>xe1/xe2) in bridge tsb<PID>xb1/xb2.
# --no-overlay skips both (e.g. on a kernel without the vxlan module).
#
# NAT setups (a container, 10.42.0.2/24 with default gateway 10.42.0.1, reaches an "outside"
# namespace, 10.200.0.254/24, through a router that masquerades it behind 10.200.0.1/24; the
# outside has no route back to 10.42.0.0/16, so only translated traffic gets an answer):
#   NAT tapswitch: namespaces tsb<PID>nc (container) and tsb<PID>no (outside), each with a TAP
#              port (tsb<PID>nct on VLAN 10, tsb<PID>not on VLAN 100) of a third daemon in the
#              root namespace, configured with `interface add 10 --address 10.42.0.1/24`,
#              `interface add 100 --address 10.200.0.1/24` and
#              `snat add --source 10.42.0.0/16 --out-vlan 100`.
#   NAT kernel: namespaces tsb<PID>mc (container), tsb<PID>mr (router) and tsb<PID>mo (outside);
#              veths tsb<PID>mce/mrc (container - router) and tsb<PID>mru/moe (router uplink -
#              outside); in the router net.ipv4.ip_forward=1 and the nftables rule
#              `table ip nat, chain post (nat, postrouting, priority 100): oifname UPLINK masquerade`.
# --no-nat skips both (e.g. without nftables).
#
# Metrics are run interleaved (every setup for one metric, then the next metric) so slow drift of
# a noisy machine hits all alike. Nothing is pinned to a CPU.
#
# Everything the script creates (namespaces, links, processes, temp files; the OVS bridge is
# deleted with ovs-vsctl del-br before its daemons are stopped) is removed on success,
# on failure and on Ctrl-C/SIGTERM; only PIDs the script started are ever signalled. The only
# sysctl it sets is ip_forward inside the kernel NAT router's own namespace.
#
# Environment: TAPSWITCH=/path/to/tapswitch to use that binary; otherwise target/release/tapswitch
# (built with `cargo build --release --bin tapswitch` if missing).
# Requires: root, iproute2 (ip, ss, bridge), iperf3, ping from iputils-ping, awk, timeout
# (coreutils), getconf (libc-bin); for the overlay, the kernel's vxlan and bridge support; for
# NAT, nft (nftables), sysctl (procps) and the kernel's nf_tables NAT support; for the OVS rows
# (optional), ovsdb-tool, ovsdb-server, ovs-vswitchd and ovs-vsctl (openvswitch-switch) and
# Open vSwitch's vswitch.ovsschema ($OVS_PKGDATADIR, default /usr/share/openvswitch).

# cleanup and the helpers it calls run from a trap, which shellcheck cannot see.
# shellcheck disable=SC2317
set -u -o pipefail

usage() {
    cat <<EOF
usage: $0 [--duration SECS] [--quick] [--no-ovs] [--no-overlay] [--no-nat] [--workers N] [--json FILE]
          [--perf DIR] [--busy-poll-us N]

  --duration SECS  length of each iperf3 run (default 10; ping sends 100 per second of it)
  --quick          short runs for a CI smoke test (2 s each) unless --duration is given
  --no-ovs         skip Open vSwitch (userspace datapath, TAP ports, TSO); skipped anyway,
                   with a message, when it is not installed
  --no-overlay     skip the VXLAN overlay setups (tapswitch and kernel vxlan, two hosts)
  --no-nat         skip the NAT setups (tapswitch masquerade and a kernel router with nftables)
  --workers N      tapswitch worker threads ([switch] workers; default: one per CPU)
  --busy-poll-us N how long tapswitch's workers poll on after traffic ([switch] busy_poll_us;
                   0: off; default: tapswitch's default)
  --json FILE      also write the results as JSON to FILE
  --perf DIR       profile the switch daemons (tapswitch, ovs-vswitchd) during each 64-byte UDP
                   run with \`perf record -g\` into DIR/udp-SETUP.data (needs perf, from
                   linux-perf); read them with \`perf report -i FILE\`
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
OVS=1
OVERLAY=1
NAT=1
JSON_OUT=""
WORKERS=""
BUSY_POLL_US=""
PERF_DIR=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --perf)
        [[ $# -ge 2 ]] || die "--perf needs a directory"
        PERF_DIR=$2
        mkdir -p "$PERF_DIR" || die "cannot make $PERF_DIR"
        command -v perf >/dev/null || die "--perf needs perf (apt-get install linux-perf)"
        shift 2
        ;;
    --workers)
        [[ $# -ge 2 ]] || die "--workers needs a value"
        WORKERS=$2
        shift 2
        ;;
    --busy-poll-us)
        [[ $# -ge 2 ]] || die "--busy-poll-us needs a value"
        BUSY_POLL_US=$2
        shift 2
        ;;
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
    --no-ovs)
        OVS=0
        shift
        ;;
    --no-overlay)
        OVERLAY=0
        shift
        ;;
    --no-nat)
        NAT=0
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
TOOLS=(ip ss iperf3 ping awk sort timeout mktemp getconf)
[[ $OVERLAY == 1 ]] && TOOLS+=(bridge)
[[ $NAT == 1 ]] && TOOLS+=(nft sysctl)
for tool in "${TOOLS[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        case "$tool" in
        iperf3) die "iperf3 not found; install it: apt-get install iperf3" ;;
        ping) die "ping not found; install it: apt-get install iputils-ping" ;;
        ip | ss | bridge) die "$tool not found; install it: apt-get install iproute2" ;;
        awk) die "awk not found; install it: apt-get install mawk (or gawk)" ;;
        getconf) die "getconf not found (reads CLK_TCK for the CPU figures); install it: apt-get install libc-bin" ;;
        nft) die "nft not found (the kernel NAT setup's masquerade rule); install it: apt-get install nftables (or run with --no-nat)" ;;
        sysctl) die "sysctl not found (ip_forward in the kernel NAT router); install it: apt-get install procps (or run with --no-nat)" ;;
        *) die "$tool not found; install it: apt-get install coreutils" ;;
        esac
    fi
done
ping -V 2>&1 | grep -qi iputils ||
    die "ping is not iputils ping (needs -i 0.01 and per-reply times); install it: apt-get install iputils-ping"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing: the tun module is needed for tapswitch's TAP ports"
# Open vSwitch is optional: without it the OVS rows are left out, with a message.
OVS_SCHEMA=${OVS_PKGDATADIR:-/usr/share/openvswitch}/vswitch.ovsschema
OVS_VERSION=""
OVS_SKIPPED="--no-ovs"
if [[ $OVS == 1 ]]; then
    for tool in ovsdb-tool ovsdb-server ovs-vswitchd ovs-vsctl; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            note "Open vSwitch not found ($tool is missing): skipping the OVS rows; install it with: apt-get install openvswitch-switch"
            OVS=0
            OVS_SKIPPED="not installed: $tool is missing"
            break
        fi
    done
fi
if [[ $OVS == 1 && ! -r $OVS_SCHEMA ]]; then
    note "Open vSwitch's schema $OVS_SCHEMA is missing (set OVS_PKGDATADIR?): skipping the OVS rows"
    OVS=0
    OVS_SKIPPED="$OVS_SCHEMA is missing"
fi
if [[ $OVS == 1 ]]; then
    OVS_VERSION=$(ovs-vswitchd --version 2>/dev/null | awk 'NR == 1 { print $NF }')
    [[ -n $OVS_VERSION ]] || die "ovs-vswitchd --version gave no version (or run with --no-ovs)"
fi
CLK_TCK=$(getconf CLK_TCK 2>/dev/null)
[[ $CLK_TCK =~ ^[0-9]+$ && $CLK_TCK -gt 0 ]] || die "getconf CLK_TCK gave '$CLK_TCK', not a tick rate"

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# ts_daemon_start / ts_daemon_stop_all: start `tapswitch run` with a fresh state directory,
# wait for its socket; stop --purge it and remove its state directory and socket.
# shellcheck source=examples/lib.sh
. "$ROOT/examples/lib.sh" || die "cannot read $ROOT/examples/lib.sh"
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
NS_DA=${PFX}da NS_DB=${PFX}db DV_A=${PFX}dva DV_B=${PFX}dvb
# Open vSwitch: side namespaces, the namespace of the bridge's local port, bridge, TAP ports.
NS_WA=${PFX}wa NS_WB=${PFX}wb NS_WL=${PFX}wl OVS_BR=${PFX}wbr TAP_WA=${PFX}wpa TAP_WB=${PFX}wpb
IP_A=10.111.0.1 IP_B=10.111.0.2 PREFIX=24 IPERF_PORT=5201
# Overlay: tapswitch (o...) and kernel vxlan + bridge (x...); index 1 and 2 are host 1 and 2.
NS_OH1=${PFX}oh1 NS_OH2=${PFX}oh2 NS_OC1=${PFX}oc1 NS_OC2=${PFX}oc2
UL_O1=${PFX}ou1 UL_O2=${PFX}ou2 TAP_O1=${PFX}op1 TAP_O2=${PFX}op2
NS_XH1=${PFX}xh1 NS_XH2=${PFX}xh2 NS_XC1=${PFX}xc1 NS_XC2=${PFX}xc2
UL_X1=${PFX}xu1 UL_X2=${PFX}xu2 VX_X1=${PFX}xv1 VX_X2=${PFX}xv2 BR_X1=${PFX}xb1 BR_X2=${PFX}xb2
HP_X1=${PFX}xp1 HP_X2=${PFX}xp2 CE_X1=${PFX}xe1 CE_X2=${PFX}xe2
UL_IP1=192.168.200.1 UL_IP2=192.168.200.2 UL_PREFIX=24
OVL_IP1=10.112.0.1 OVL_IP2=10.112.0.2 OVL_VNI=42 OVL_VLAN=10 OVL_MTU=1450 VXLAN_PORT=4789
# NAT: tapswitch (n...: container, outside) and a kernel router (m...: container, router, outside).
NS_NC=${PFX}nc NS_NO=${PFX}no TAP_NC=${PFX}nct TAP_NO=${PFX}not
NS_MC=${PFX}mc NS_MR=${PFX}mr NS_MO=${PFX}mo
VE_MC=${PFX}mce VE_MRC=${PFX}mrc VE_MRU=${PFX}mru VE_MO=${PFX}moe
NAT_IN_VLAN=10 NAT_OUT_VLAN=100 NAT_SOURCE=10.42.0.0/16
NAT_GW=10.42.0.1 NAT_CLIENT_IP=10.42.0.2 NAT_UPLINK_IP=10.200.0.1 NAT_OUTSIDE_IP=10.200.0.254

NETNS_MADE=() # namespaces this script created, in creation order
PIDS=()       # long-running background processes this script started (iperf3 servers)
CUR_PID=""    # the client (timeout -> iperf3 or ping) running now, if any
DAEMON_PIDS=()  # tapswitch daemons this script started (examples/lib.sh stops them)
LAST_DAEMON_PID="" # the one start_daemon started last
LAST_OVS_PID=""    # the one ovs_start_daemon started last
OVS_TSO=""         # 1 if ovs-vswitchd logged that userspace TSO is on, 0 if not
declare -A DAEMONS_OF=() # setup -> PIDs of the switch daemons on its path (for CPU time)
OVSDB_PID=""    # the ovsdb-server this script started, if any
OVSVS_PID=""    # the ovs-vswitchd this script started, if any
OVS_DIR=""      # their database, sockets, pid and log files
OVS_BR_MADE=0   # 1 once add-br was asked for (del-br in the cleanup)
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

# ovs-vsctl on this script's own database (never the system's), with a time limit.
ovs_vsctl() {
    timeout 20 ovs-vsctl --db="unix:$OVS_DIR/db.sock" --timeout=10 "$@"
}

# Stops the Open vSwitch this script started: del-br (which deletes its TAPs, wherever they now
# are), then ovs-vswitchd and ovsdb-server with SIGTERM (SIGKILL if one does not exit).
ovs_stop() {
    if [[ $OVS_BR_MADE == 1 ]] && alive "$OVSVS_PID" && alive "$OVSDB_PID"; then
        ovs_vsctl --if-exists del-br "$OVS_BR" >/dev/null 2>&1 || warn "ovs-vsctl del-br $OVS_BR failed"
    fi
    if [[ -n $OVSVS_PID ]]; then stop_pid "$OVSVS_PID" TERM 50; fi
    if [[ -n $OVSDB_PID ]]; then stop_pid "$OVSDB_PID" TERM 30; fi
}

cleanup() {
    local rc=$?
    [[ $CLEANED == 1 ]] && return
    CLEANED=1
    # No second Ctrl-C half-way through the cleanup.
    trap '' INT TERM
    local pid ns i left log dev
    [[ $rc -gt 128 ]] && echo "e2e: interrupted (exit $rc); cleaning up" >&2
    # The client (its timeout wrapper forwards SIGTERM to iperf3/ping), the iperf3 servers.
    for pid in $CUR_PID "${PIDS[@]}"; do
        stop_pid "$pid" TERM 30
    done
    # The daemons: `stop --purge` deletes their TAPs and forgets their saved state (a SIGTERM
    # would leave both for a next start), then their state directories and sockets go; SIGTERM
    # and SIGKILL only if one does not exit. Open vSwitch: del-br, then its two daemons.
    ts_daemon_stop_all
    ovs_stop
    # Namespaces: deleting one destroys every link in it (veth peers go with their pair, the
    # bridge with its namespace).
    for ((i = ${#NETNS_MADE[@]} - 1; i >= 0; i--)); do
        ns=${NETNS_MADE[i]}
        ip netns del "$ns" 2>/dev/null || warn "could not delete namespace $ns"
    done
    # OVS's TAPs are persistent: any that del-br did not remove and that were not yet moved into
    # a namespace of ours would stay in the root namespace. Only our own names.
    if [[ $OVS_BR_MADE == 1 ]]; then
        for dev in "$OVS_BR" "$TAP_WA" "$TAP_WB"; do
            if ip link show dev "$dev" >/dev/null 2>&1; then
                ip link del dev "$dev" 2>/dev/null || warn "could not delete $dev"
            fi
        done
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $rc -ne 0 ]]; then
            for log in "$TMP"/tapswitch*.log "$TMP"/ovs/*.log; do
                [[ -s $log ]] || continue
                echo "---- last lines of ${log##*/} ----" >&2
                tail -n 20 "$log" >&2
            done
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
    for pid in $CUR_PID "${PIDS[@]}" "${DAEMON_PIDS[@]}" $OVSVS_PID $OVSDB_PID; do
        alive "$pid" && warn "process $pid is still running"
    done
    trap - EXIT INT TERM
    exit "$rc"
}
trap cleanup EXIT INT TERM

TMP=$(mktemp -d "/tmp/${PFX}e2e.XXXXXX") || die "mktemp failed"
SOCK=$TMP/tapswitch.sock
OSOCK1=$TMP/tapswitch-oh1.sock OSOCK2=$TMP/tapswitch-oh2.sock
NSOCK=$TMP/tapswitch-nat.sock

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
# Starts `tapswitch run` with control socket $1 and log $2, inside namespace $3 if given (so its
# VTEP sockets live there), with a fresh state directory, and waits until the socket answers
# (examples/lib.sh; if it does not within 10 s, or the daemon exits, the script stops there
# with the daemon's log).
start_daemon() { # socket log [netns]
    local sock=$1 log=$2 ns=${3:-}
    local opts=()
    if [[ -n $WORKERS || -n $BUSY_POLL_US ]]; then
        {
            echo '[switch]'
            [[ -n $WORKERS ]] && echo "workers = $WORKERS"
            [[ -n $BUSY_POLL_US ]] && echo "busy_poll_us = $BUSY_POLL_US"
        } >"$sock.toml"
        opts+=(--config "$sock.toml")
    fi
    [[ -n $ns ]] && opts+=(--netns "$ns")
    ts_daemon_start "${opts[@]}" "$TAPSWITCH" "$sock" "$log"
    DAEMON_PIDS+=("$TS_DAEMON_PID")
    LAST_DAEMON_PID=$TS_DAEMON_PID
}

setup_tapswitch() {
    note "tapswitch: namespaces $NS_TA $NS_TB, daemon $TAPSWITCH"
    mk_ns "$NS_TA"
    mk_ns "$NS_TB"
    start_daemon "$SOCK" "$TMP/tapswitch.log"
    DAEMONS_OF[ts]=$LAST_DAEMON_PID
    "$TAPSWITCH" --socket "$SOCK" port add "$TAP_A" --netns "$NS_TA" || die "port add $TAP_A failed"
    "$TAPSWITCH" --socket "$SOCK" port add "$TAP_B" --netns "$NS_TB" || die "port add $TAP_B failed"
    ip -n "$NS_TA" addr add "$IP_A/$PREFIX" dev "$TAP_A" || die "address on $TAP_A failed"
    ip -n "$NS_TB" addr add "$IP_B/$PREFIX" dev "$TAP_B" || die "address on $TAP_B failed"
    ip -n "$NS_TA" link set "$TAP_A" up || die "$TAP_A up failed"
    ip -n "$NS_TB" link set "$TAP_B" up || die "$TAP_B up failed"
}

# The ceiling: one veth pair between the two namespaces, nothing in between.
setup_veth() {
    note "veth: namespaces $NS_DA $NS_DB joined by one veth pair"
    mk_ns "$NS_DA"
    mk_ns "$NS_DB"
    ip -n "$NS_DA" link add "$DV_A" type veth peer name "$DV_B" netns "$NS_DB" ||
        die "veth $DV_A/$DV_B failed"
    ip -n "$NS_DA" addr add "$IP_A/$PREFIX" dev "$DV_A" || die "address on $DV_A failed"
    ip -n "$NS_DB" addr add "$IP_B/$PREFIX" dev "$DV_B" || die "address on $DV_B failed"
    ip -n "$NS_DA" link set "$DV_A" up || die "$DV_A up failed"
    ip -n "$NS_DB" link set "$DV_B" up || die "$DV_B up failed"
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

# Starts an Open vSwitch daemon in the background, output to file $1, in a session of its own
# (so a Ctrl-C reaches the script, whose cleanup stops it in order; setsid execs, so $! is the
# daemon itself, a child of this shell). Its PID is left in LAST_OVS_PID.
ovs_start_daemon() { # out cmd...
    local out=$1
    shift
    command -v setsid >/dev/null 2>&1 && set -- setsid "$@"
    "$@" >"$out" 2>&1 </dev/null &
    LAST_OVS_PID=$!
}

# Open vSwitch's userspace datapath with TSO: its own ovsdb-server and ovs-vswitchd (database,
# sockets, pid and log files in $TMP/ovs), bridge $OVS_BR with datapath_type=netdev and two
# type=tap ports, whose TAPs (made by ovs-vswitchd in the root namespace) are moved into the
# side namespaces; the bridge's local port, a TAP too, goes into a namespace of its own, down.
# ovs-vswitchd keeps reading and writing a TAP through its file descriptor after the move; only
# its by-name look-ups (ethtool, statistics) fail, with warnings in its log.
setup_ovs() {
    OVS_DIR=$TMP/ovs
    note "ovs: namespaces $NS_WA $NS_WB, Open vSwitch $OVS_VERSION (userspace datapath, TAP ports, TSO), own database in $OVS_DIR"
    mk_ns "$NS_WA"
    mk_ns "$NS_WB"
    mk_ns "$NS_WL"
    mkdir "$OVS_DIR" || die "mkdir $OVS_DIR failed"
    # Every default path of the OVS tools and daemons into our directory, none of the system's.
    export OVS_RUNDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_SYSCONFDIR=$OVS_DIR
    export OVS_PKGDATADIR=${OVS_SCHEMA%/*}
    ovsdb-tool create "$OVS_DIR/conf.db" "$OVS_SCHEMA" >"$OVS_DIR/ovsdb-tool.out" 2>&1 ||
        die "ovsdb-tool create $OVS_DIR/conf.db failed: $(tail -n 5 "$OVS_DIR/ovsdb-tool.out")"
    ovs_start_daemon "$OVS_DIR/ovsdb-server.out" ovsdb-server "$OVS_DIR/conf.db" \
        --remote="punix:$OVS_DIR/db.sock" --unixctl="$OVS_DIR/ovsdb-server.ctl" \
        --pidfile="$OVS_DIR/ovsdb-server.pid" --log-file="$OVS_DIR/ovsdb-server.log" --no-chdir
    OVSDB_PID=$LAST_OVS_PID
    local i dev
    for ((i = 0; ; i++)); do
        alive "$OVSDB_PID" || die "ovsdb-server exited: $(tail -n 5 "$OVS_DIR/ovsdb-server.out")"
        if [[ -S $OVS_DIR/db.sock ]] &&
            timeout 5 ovs-vsctl --db="unix:$OVS_DIR/db.sock" --timeout=2 --no-wait init >/dev/null 2>&1; then
            break
        fi
        [[ $i -lt 100 ]] || die "ovsdb-server does not answer on $OVS_DIR/db.sock after 10 s"
        sleep 0.1
    done
    # Read once, when ovs-vswitchd starts: so before it starts.
    ovs_vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true ||
        die "ovs-vsctl set other_config:userspace-tso-enable=true failed"
    # --disable-system: no kernel datapath (a second ovs-vswitchd seeing them would delete those
    # of every bridge it does not know, another instance's included); --disable-system-route: no
    # copy of the kernel's routing table (tunnels only).
    ovs_start_daemon "$OVS_DIR/ovs-vswitchd.out" ovs-vswitchd "unix:$OVS_DIR/db.sock" \
        --unixctl="$OVS_DIR/ovs-vswitchd.ctl" --pidfile="$OVS_DIR/ovs-vswitchd.pid" \
        --log-file="$OVS_DIR/ovs-vswitchd.log" --no-chdir --disable-system --disable-system-route
    OVSVS_PID=$LAST_OVS_PID
    DAEMONS_OF[ov]=$OVSVS_PID
    OVS_BR_MADE=1
    # Without --no-wait, ovs-vsctl returns once ovs-vswitchd has made the bridge and its ports.
    ovs_vsctl add-br "$OVS_BR" -- set bridge "$OVS_BR" datapath_type=netdev \
        -- add-port "$OVS_BR" "$TAP_WA" -- set interface "$TAP_WA" type=tap \
        -- add-port "$OVS_BR" "$TAP_WB" -- set interface "$TAP_WB" type=tap ||
        die "ovs-vsctl add-br $OVS_BR with ports $TAP_WA $TAP_WB failed"
    alive "$OVSVS_PID" || die "ovs-vswitchd exited: $(tail -n 5 "$OVS_DIR/ovs-vswitchd.out")"
    for dev in "$OVS_BR" "$TAP_WA" "$TAP_WB"; do
        for ((i = 0; i < 50; i++)); do
            ip link show dev "$dev" >/dev/null 2>&1 && break
            sleep 0.1
        done
        ip link show dev "$dev" >/dev/null 2>&1 || die "ovs-vswitchd made no TAP $dev"
    done
    ip link set "$OVS_BR" netns "$NS_WL" || die "moving $OVS_BR into $NS_WL failed"
    ip link set "$TAP_WA" netns "$NS_WA" || die "moving $TAP_WA into $NS_WA failed"
    ip link set "$TAP_WB" netns "$NS_WB" || die "moving $TAP_WB into $NS_WB failed"
    ip -n "$NS_WA" addr add "$IP_A/$PREFIX" dev "$TAP_WA" || die "address on $TAP_WA failed"
    ip -n "$NS_WB" addr add "$IP_B/$PREFIX" dev "$TAP_WB" || die "address on $TAP_WB failed"
    ip -n "$NS_WA" link set "$TAP_WA" up || die "$TAP_WA up failed"
    ip -n "$NS_WB" link set "$TAP_WB" up || die "$TAP_WB up failed"
    if grep -q 'Userspace TCP Segmentation Offloading support enabled' "$OVS_DIR/ovs-vswitchd.log"; then
        OVS_TSO=1
    else
        OVS_TSO=0
        warn "ovs-vswitchd did not log that userspace TSO is enabled; its figures are without TSO"
    fi
}

# Two host namespaces joined by an underlay veth (192.168.200.1/24 and .2), and a container
# namespace for each.
setup_hosts() { # host1 host2 container1 container2 underlay1 underlay2
    local h1=$1 h2=$2 c1=$3 c2=$4 u1=$5 u2=$6
    mk_ns "$h1"
    mk_ns "$h2"
    mk_ns "$c1"
    mk_ns "$c2"
    ip -n "$h1" link add "$u1" type veth peer name "$u2" netns "$h2" || die "underlay veth $u1/$u2 failed"
    ip -n "$h1" addr add "$UL_IP1/$UL_PREFIX" dev "$u1" || die "address on $u1 failed"
    ip -n "$h2" addr add "$UL_IP2/$UL_PREFIX" dev "$u2" || die "address on $u2 failed"
    ip -n "$h1" link set "$u1" up || die "$u1 up failed"
    ip -n "$h2" link set "$u2" up || die "$u2 up failed"
}

setup_overlay_tapswitch() {
    note "overlay tapswitch: hosts $NS_OH1 $NS_OH2, containers $NS_OC1 $NS_OC2, a daemon in each host"
    setup_hosts "$NS_OH1" "$NS_OH2" "$NS_OC1" "$NS_OC2" "$UL_O1" "$UL_O2"
    local i host cont sock tap local_ip remote_ip ip
    for i in 1 2; do
        if [[ $i == 1 ]]; then
            host=$NS_OH1 cont=$NS_OC1 sock=$OSOCK1 tap=$TAP_O1 local_ip=$UL_IP1 remote_ip=$UL_IP2 ip=$OVL_IP1
        else
            host=$NS_OH2 cont=$NS_OC2 sock=$OSOCK2 tap=$TAP_O2 local_ip=$UL_IP2 remote_ip=$UL_IP1 ip=$OVL_IP2
        fi
        start_daemon "$sock" "$TMP/tapswitch-oh$i.log" "$host"
        DAEMONS_OF[ots]+="${DAEMONS_OF[ots]:+ }$LAST_DAEMON_PID"
        "$TAPSWITCH" --socket "$sock" port add "$tap" --netns "$cont" --vlan "$OVL_VLAN" --mtu "$OVL_MTU" ||
            die "host $i: port add $tap failed"
        "$TAPSWITCH" --socket "$sock" vxlan add "$OVL_VNI" --vlan "$OVL_VLAN" --local "$local_ip" \
            --remote "$remote_ip" || die "host $i: vxlan add $OVL_VNI failed"
        ip -n "$cont" link set "$tap" mtu "$OVL_MTU" || die "MTU of $tap failed"
        ip -n "$cont" addr add "$ip/$PREFIX" dev "$tap" || die "address on $tap failed"
        ip -n "$cont" link set "$tap" up || die "$tap up failed"
    done
}

setup_overlay_kernel() {
    note "overlay kernel: hosts $NS_XH1 $NS_XH2, containers $NS_XC1 $NS_XC2, vxlan + bridge in each host"
    setup_hosts "$NS_XH1" "$NS_XH2" "$NS_XC1" "$NS_XC2" "$UL_X1" "$UL_X2"
    local i host cont vx br hp ce local_ip remote_ip ip
    for i in 1 2; do
        if [[ $i == 1 ]]; then
            host=$NS_XH1 cont=$NS_XC1 vx=$VX_X1 br=$BR_X1 hp=$HP_X1 ce=$CE_X1
            local_ip=$UL_IP1 remote_ip=$UL_IP2 ip=$OVL_IP1
        else
            host=$NS_XH2 cont=$NS_XC2 vx=$VX_X2 br=$BR_X2 hp=$HP_X2 ce=$CE_X2
            local_ip=$UL_IP2 remote_ip=$UL_IP1 ip=$OVL_IP2
        fi
        ip -n "$host" link add "$vx" mtu "$OVL_MTU" type vxlan id "$OVL_VNI" dstport "$VXLAN_PORT" \
            local "$local_ip" nolearning ||
            die "kernel vxlan device $vx failed (is the vxlan module available? modprobe vxlan; or run with --no-overlay)"
        ip -n "$host" link add "$br" type bridge || die "bridge $br failed"
        ip -n "$host" link add "$hp" mtu "$OVL_MTU" type veth peer name "$ce" netns "$cont" ||
            die "veth $hp/$ce failed"
        local d
        for d in "$vx" "$hp"; do
            ip -n "$host" link set "$d" master "$br" || die "$d into $br failed"
            ip -n "$host" link set "$d" up || die "$d up failed"
        done
        ip -n "$host" link set "$br" up || die "bridge $br up failed"
        ip netns exec "$host" bridge fdb append 00:00:00:00:00:00 dev "$vx" dst "$remote_ip" ||
            die "flood entry on $vx failed"
        ip -n "$cont" link set "$ce" mtu "$OVL_MTU" || die "MTU of $ce failed"
        ip -n "$cont" addr add "$ip/$PREFIX" dev "$ce" || die "address on $ce failed"
        ip -n "$cont" link set "$ce" up || die "$ce up failed"
    done
}

# A container on VLAN 10 behind tapswitch's router, masqueraded out of the VLAN 100 uplink to
# the outside namespace, which knows no route back to 10.42.0.0/16.
setup_nat_tapswitch() {
    note "NAT tapswitch: container $NS_NC, outside $NS_NO, daemon with two router interfaces and masquerade"
    mk_ns "$NS_NC"
    mk_ns "$NS_NO"
    start_daemon "$NSOCK" "$TMP/tapswitch-nat.log"
    DAEMONS_OF[nts]=$LAST_DAEMON_PID
    local ts=("$TAPSWITCH" --socket "$NSOCK")
    "${ts[@]}" interface add "$NAT_IN_VLAN" --address "$NAT_GW/24" ||
        die "interface add $NAT_IN_VLAN failed"
    "${ts[@]}" interface add "$NAT_OUT_VLAN" --address "$NAT_UPLINK_IP/24" ||
        die "interface add $NAT_OUT_VLAN failed"
    "${ts[@]}" snat add --source "$NAT_SOURCE" --out-vlan "$NAT_OUT_VLAN" || die "snat add failed"
    "${ts[@]}" port add "$TAP_NC" --netns "$NS_NC" --vlan "$NAT_IN_VLAN" || die "port add $TAP_NC failed"
    "${ts[@]}" port add "$TAP_NO" --netns "$NS_NO" --vlan "$NAT_OUT_VLAN" || die "port add $TAP_NO failed"
    ip -n "$NS_NC" addr add "$NAT_CLIENT_IP/24" dev "$TAP_NC" || die "address on $TAP_NC failed"
    ip -n "$NS_NC" link set "$TAP_NC" up || die "$TAP_NC up failed"
    ip -n "$NS_NC" route add default via "$NAT_GW" || die "default route in $NS_NC failed"
    ip -n "$NS_NO" addr add "$NAT_OUTSIDE_IP/24" dev "$TAP_NO" || die "address on $TAP_NO failed"
    ip -n "$NS_NO" link set "$TAP_NO" up || die "$TAP_NO up failed"
}

# The same with the kernel: a router namespace with two veths, forwarding on, and an nftables
# masquerade rule on the uplink.
setup_nat_kernel() {
    note "NAT kernel: container $NS_MC, router $NS_MR (ip_forward, nftables masquerade), outside $NS_MO"
    mk_ns "$NS_MC"
    mk_ns "$NS_MR"
    mk_ns "$NS_MO"
    ip -n "$NS_MR" link add "$VE_MRC" type veth peer name "$VE_MC" netns "$NS_MC" ||
        die "veth $VE_MRC/$VE_MC failed"
    ip -n "$NS_MR" link add "$VE_MRU" type veth peer name "$VE_MO" netns "$NS_MO" ||
        die "veth $VE_MRU/$VE_MO failed"
    ip -n "$NS_MR" addr add "$NAT_GW/24" dev "$VE_MRC" || die "address on $VE_MRC failed"
    ip -n "$NS_MR" addr add "$NAT_UPLINK_IP/24" dev "$VE_MRU" || die "address on $VE_MRU failed"
    ip -n "$NS_MR" link set "$VE_MRC" up || die "$VE_MRC up failed"
    ip -n "$NS_MR" link set "$VE_MRU" up || die "$VE_MRU up failed"
    ip netns exec "$NS_MR" sysctl -qw net.ipv4.ip_forward=1 >/dev/null ||
        die "net.ipv4.ip_forward=1 in $NS_MR failed"
    { ip netns exec "$NS_MR" nft add table ip nat &&
        ip netns exec "$NS_MR" nft add chain ip nat post '{ type nat hook postrouting priority 100; }' &&
        ip netns exec "$NS_MR" nft add rule ip nat post oifname "$VE_MRU" masquerade; } ||
        die "nftables masquerade rule in $NS_MR failed (does the kernel have nf_tables and nft_masq? or run with --no-nat)"
    ip -n "$NS_MC" addr add "$NAT_CLIENT_IP/24" dev "$VE_MC" || die "address on $VE_MC failed"
    ip -n "$NS_MC" link set "$VE_MC" up || die "$VE_MC up failed"
    ip -n "$NS_MC" route add default via "$NAT_GW" || die "default route in $NS_MC failed"
    ip -n "$NS_MO" addr add "$NAT_OUTSIDE_IP/24" dev "$VE_MO" || die "address on $VE_MO failed"
    ip -n "$NS_MO" link set "$VE_MO" up || die "$VE_MO up failed"
}

# Setup name -> client namespace, server namespace, addresses; devices whose drop counters we
# read. ts/ov/br/ve: the two-namespace setups (tapswitch, Open vSwitch, bridge, plain veth);
# ots/okv: the overlay (tapswitch, kernel vxlan); nts/nkv: NAT (tapswitch, kernel router with
# nftables).
SETUPS=(ts)
[[ $OVS == 1 ]] && SETUPS+=(ov)
SETUPS+=(br ve)
[[ $OVERLAY == 1 ]] && SETUPS+=(ots okv)
[[ $NAT == 1 ]] && SETUPS+=(nts nkv)
declare -A CLIENT_NS=([ts]=$NS_TA [ov]=$NS_WA [br]=$NS_KA [ve]=$NS_DA [ots]=$NS_OC1 [okv]=$NS_XC1 [nts]=$NS_NC [nkv]=$NS_MC)
declare -A SERVER_NS=([ts]=$NS_TB [ov]=$NS_WB [br]=$NS_KB [ve]=$NS_DB [ots]=$NS_OC2 [okv]=$NS_XC2 [nts]=$NS_NO [nkv]=$NS_MO)
declare -A CLIENT_IP=([ts]=$IP_A [ov]=$IP_A [br]=$IP_A [ve]=$IP_A [ots]=$OVL_IP1 [okv]=$OVL_IP1
    [nts]=$NAT_CLIENT_IP [nkv]=$NAT_CLIENT_IP)
declare -A SERVER_IP=([ts]=$IP_B [ov]=$IP_B [br]=$IP_B [ve]=$IP_B [ots]=$OVL_IP2 [okv]=$OVL_IP2
    [nts]=$NAT_OUTSIDE_IP [nkv]=$NAT_OUTSIDE_IP)
# The receiving host of an overlay: where the underlay UDP socket is.
declare -A SERVER_HOST_NS=([ots]=$NS_OH2 [okv]=$NS_XH2)
declare -A LABEL=([ts]=tapswitch [ov]=ovs [br]=bridge [ve]=veth [ots]="overlay tapswitch" [okv]="overlay kernel"
    [nts]="NAT tapswitch" [nkv]="NAT kernel")
# "netns:device" pairs on the path A -> B.
declare -A PATH_DEVS=(
    [ts]="$NS_TA:$TAP_A $NS_TB:$TAP_B"
    [ov]="$NS_WA:$TAP_WA $NS_WB:$TAP_WB"
    [br]="$NS_KA:$VETH_A $NS_KBR:$PEER_A $NS_KBR:$PEER_B $NS_KB:$VETH_B"
    [ve]="$NS_DA:$DV_A $NS_DB:$DV_B"
    [nts]="$NS_NC:$TAP_NC $NS_NO:$TAP_NO"
    [nkv]="$NS_MC:$VE_MC $NS_MR:$VE_MRC $NS_MR:$VE_MRU $NS_MO:$VE_MO"
    [ots]="$NS_OC1:$TAP_O1 $NS_OH1:$UL_O1 $NS_OH2:$UL_O2 $NS_OC2:$TAP_O2"
    [okv]="$NS_XC1:$CE_X1 $NS_XH1:$HP_X1 $NS_XH1:$VX_X1 $NS_XH1:$UL_X1 $NS_XH2:$UL_X2 $NS_XH2:$VX_X2 $NS_XH2:$HP_X2 $NS_XC2:$CE_X2"
)

start_server() { # setup
    local ns=${SERVER_NS[$1]} i
    ip netns exec "$ns" iperf3 -s -B "${SERVER_IP[$1]}" -p "$IPERF_PORT" >"$TMP/iperf3-server-$1.log" 2>&1 </dev/null &
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
        if ip netns exec "$ns" ping -n -c 1 -W 1 "${SERVER_IP[$1]}" >/dev/null 2>&1; then
            return 0
        fi
    done
    die "${LABEL[$1]}: ${CLIENT_IP[$1]} cannot reach ${SERVER_IP[$1]} (10 pings lost)"
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

# tapswitch -j stats (one line of JSON) of the daemon at socket $1 -> "rx_packets tx_packets
# tx_errors drops vx_rx vx_tx vx_tx_errors vx_tx_oversized vx_drops nat_translated nat_refused":
# the first three summed over the ports (only port $2 if given), drops summed over every port's
# and every router interface's drop reasons, the VXLAN tunnel counters ("vxlan" object; zeros
# without VNIs), and of "nat" the packets translated and the connections refused (invalid +
# insert_failed + rejected; zeros without NAT rules). Walks the tokens with a depth counter:
# {"ports":[{...}]} puts ports at depth 3 and their drop reasons ({"drops":{...}}) at depth 4,
# and "interfaces" likewise; {"vxlan":{...}} puts the tunnel counters at depth 2 and its drop
# reasons at depth 3; {"nat":{...}} its counters at depth 2.
ts_counters() { # socket [port]
    "$TAPSWITCH" --socket "$1" -j stats 2>/dev/null | awk -v want="${2:-}" '
        {
            s = $0
            gsub(/[{}\[\],]/, "\n&\n", s)
            n = split(s, tok, "\n")
            for (i = 1; i <= n; i++) {
                t = tok[i]
                if (t == "{" || t == "[") {
                    depth++
                    if (depth == 2) sect = last
                    if (depth == 3 && sect == "ports") { prx = ptx = pte = 0; pname = "" }
                    continue
                }
                if (t == "}" || t == "]") {
                    if (depth == 3 && sect == "ports" && (want == "" || pname == want)) {
                        rx += prx; tx += ptx; txe += pte
                    }
                    depth--
                    continue
                }
                if (t == "," || t == "") continue
                split(t, kv, ":"); k = kv[1]; gsub(/"/, "", k); v = kv[2]
                if (depth == 1) last = k
                if (sect == "ports") {
                    if (depth == 4 && v ~ /^[0-9]+$/) drops += v
                    if (depth == 3 && k == "name") { pname = v; gsub(/"/, "", pname) }
                    if (depth == 3 && k == "rx_packets") prx = v
                    if (depth == 3 && k == "tx_packets") ptx = v
                    if (depth == 3 && k == "tx_errors") pte = v
                } else if (sect == "interfaces") {
                    if (depth == 4 && v ~ /^[0-9]+$/) drops += v
                } else if (sect == "nat") {
                    if (depth == 2 && k == "translated") ntr = v
                    if (depth == 2 && (k == "invalid" || k == "insert_failed" || k == "rejected")) nref += v
                } else if (sect == "vxlan") {
                    if (depth == 3 && v ~ /^[0-9]+$/) vdrops += v
                    if (depth == 2 && k == "rx_packets") vrx = v
                    if (depth == 2 && k == "tx_packets") vtx = v
                    if (depth == 2 && k == "tx_errors") vte = v
                    if (depth == 2 && k == "tx_oversized") vto = v
                }
            }
        }
        END { printf "%d %d %d %d %d %d %d %d %d %d %d\n", rx, tx, txe, drops, vrx, vtx, vte, vto, vdrops, ntr, nref }'
}

# One statistics counter of a device: netns device name (e.g. tx_packets).
dev_stat() {
    ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3" 2>/dev/null || echo 0
}

kpps() { # packets seconds -> thousands per second, or "" when undefined
    awk -v n="$1" -v t="$2" 'BEGIN { if (n != "" && t > 0) printf "%.1f", n / t / 1000 }'
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
            ip netns exec "${CLIENT_NS[$s]}" iperf3 -c "${SERVER_IP[$s]}" -p "$IPERF_PORT" -J "$@"
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

# Clock ticks (utime + stime, all threads) the processes $@ have used so far; fails if one of
# them is gone. /proc/PID/stat: fields after "(comm) " start at state, so utime and stime are
# the 12th and 13th of them.
cpu_ticks() { # pid...
    local pid stat rest total=0
    local -a f
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
        rest=${stat##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Bytes the iperf3 sender wrote over the whole run, the omitted seconds included (the sum of
# every interval's "sum"; the intervals come before the top-level "end" object), so that they
# match the window of a CPU reading taken around the run.
iperf_run_bytes() { # file
    awk '
        { line = $0; gsub(/^[ \t]+|[ \t,]+$/, "", line) }
        line ~ /^"end":[ \t]*\{$/ { exit }
        !insum && line ~ /^"sum":[ \t]*\{$/ { insum = 1; next }
        insum && line ~ /^\}/ { insum = 0; next }
        insum && index(line, "\"bytes\":") == 1 { v = substr(line, 9); gsub(/[ \t]/, "", v); total += v; n++ }
        END { if (n > 0) printf "%.0f\n", total }
    ' "$1"
}

measure_tcp() { # setup streams
    local s=$1 streams=$2 out=$TMP/tcp$2-$1.json bps k c0 c1 bytes
    local -a par=() pids
    k=tcp
    if [[ $streams -gt 1 ]]; then
        k=tcp$streams
        par=(-P "$streams")
    fi
    note "${LABEL[$s]}: TCP, $streams stream(s), ${DURATION} s (+${TCP_OMIT} s omitted)"
    read -r -a pids <<<"${DAEMONS_OF[$s]:-}"
    [[ ${#pids[@]} -gt 0 ]] && c0=$(cpu_ticks "${pids[@]}")
    iperf_client "$s" "$out" -t "$DURATION" -O "$TCP_OMIT" "${par[@]}" || return 0
    [[ ${#pids[@]} -gt 0 ]] && c1=$(cpu_ticks "${pids[@]}")
    bps=$(iperf_field "$out" sum_received bits_per_second)
    R[$s.${k}_gbps]=$(awk -v b="$bps" 'BEGIN { if (b != "") printf "%.3f", b / 1e9 }')
    R[$s.${k}_retransmits]=$(iperf_field "$out" sum_sent retransmits)
    if [[ ${#pids[@]} -gt 0 && -n ${c0:-} && -n ${c1:-} ]]; then
        bytes=$(iperf_run_bytes "$out")
        R[$s.${k}_bytes]=$bytes
        R[$s.${k}_cpu_s]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
        R[$s.${k}_cpu_s_per_gb]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v b="$bytes" \
            'BEGIN { if (b > 0) printf "%.3f", t / hz / (b / 1e9) }')
    fi
}

measure_udp() { # setup
    local s=$1 out=$TMP/udp-$1.json blk pk lost secs
    note "${LABEL[$s]}: UDP 64-byte frames, ${DURATION} s, unlimited rate"
    local d0 r0 t0 d1 r1 t1 u0 u1 a0 a1 b0 b1
    local -a devs
    read -r -a devs <<<"${PATH_DEVS[$s]}"
    d0=$(dev_drops "${devs[@]}")
    r0=$(udp_rcvbuf_errors "${SERVER_NS[$s]}")
    [[ $s == ts ]] && t0=$(ts_counters "$SOCK")
    if [[ $s == ov ]]; then
        # ovs-vswitchd's own port counters are read by device name, which fails once the TAP is
        # in another namespace; the TAPs' counters say the same: A's tx is what the switch read
        # from A, B's rx what it wrote into B.
        a0=$(dev_stat "$NS_WA" "$TAP_WA" tx_packets)
        b0=$(dev_stat "$NS_WB" "$TAP_WB" rx_packets)
    fi
    case $s in
    ots | okv) u0=$(udp_rcvbuf_errors "${SERVER_HOST_NS[$s]}") ;;&
    ots)
        a0=$(ts_counters "$OSOCK1" "$TAP_O1")
        b0=$(ts_counters "$OSOCK2" "$TAP_O2")
        ;;
    okv)
        a0=$(dev_stat "$NS_XH1" "$VX_X1" tx_packets)
        b0=$(dev_stat "$NS_XH2" "$HP_X2" tx_packets)
        ;;
    nts) a0=$(ts_counters "$NSOCK" "$TAP_NO") ;;
    nkv) a0=$(dev_stat "$NS_MR" "$VE_MRU" tx_packets) ;;
    esac
    local perf_pid="" pids_csv
    if [[ -n $PERF_DIR && -n ${DAEMONS_OF[$s]:-} ]]; then
        # The whole run but its first and last half second, of every daemon of the setup.
        pids_csv=$(tr ' ' ',' <<<"${DAEMONS_OF[$s]}")
        perf record -F 999 -g -p "$pids_csv" -o "$PERF_DIR/udp-$s.data" -- \
            sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 1 ? d - 1 : d) }')" \
            >"$PERF_DIR/udp-$s.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
        sleep 0.5
    fi
    iperf_client "$s" "$out" -u -l 18 -b 0 -t "$DURATION" || return 0
    [[ -n $perf_pid ]] && wait "$perf_pid" 2>/dev/null
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
        t1=$(ts_counters "$SOCK")
        read -r rx0 tx0 te0 dr0 _ <<<"$t0"
        read -r rx1 tx1 te1 dr1 _ <<<"$t1"
        R[ts.udp_switch_rx]=$((rx1 - rx0))
        R[ts.udp_switch_tx]=$((tx1 - tx0))
        R[ts.udp_switch_tx_errors]=$((te1 - te0))
        R[ts.udp_switch_drops]=$((dr1 - dr0))
        # What the switch forwarded, whether or not the receiving iperf3 then kept up.
        R[ts.udp_switch_fwd_kpps]=$(awk -v n="${R[ts.udp_switch_tx]}" -v t="$DURATION" 'BEGIN { printf "%.1f", n / t / 1000 }')
    fi
    if [[ $s == ov ]]; then
        a1=$(dev_stat "$NS_WA" "$TAP_WA" tx_packets)
        b1=$(dev_stat "$NS_WB" "$TAP_WB" rx_packets)
        R[ov.udp_switch_rx]=$((a1 - a0))
        R[ov.udp_switch_tx]=$((b1 - b0))
        R[ov.udp_switch_fwd_kpps]=$(kpps "${R[ov.udp_switch_tx]}" "$DURATION")
    fi
    case $s in
    ots | okv)
        u1=$(udp_rcvbuf_errors "${SERVER_HOST_NS[$s]}")
        # The tunnel's UDP socket on the receiving host (tapswitch's VTEP socket; the kernel's
        # vxlan device takes packets straight from the UDP stack and rarely counts here).
        R[$s.udp_underlay_rcvbuf_drops]=$((${u1:-0} - ${u0:-0}))
        ;;&
    ots)
        a1=$(ts_counters "$OSOCK1" "$TAP_O1")
        b1=$(ts_counters "$OSOCK2" "$TAP_O2")
        local -a x0 x1 y0 y1
        read -r -a x0 <<<"$a0"
        read -r -a x1 <<<"$a1"
        read -r -a y0 <<<"$b0"
        read -r -a y1 <<<"$b1"
        # Fields: 0 rx 1 tx 2 tx_errors 3 drops 4 vx_rx 5 vx_tx 6 vx_tx_errors 7 vx_tx_oversized
        # 8 vx_drops. Host 1: from the TAP, encapsulated; host 2: decapsulated, to the TAP.
        R[ots.udp_h1_tap_rx]=$((x1[0] - x0[0]))
        R[ots.udp_h1_tunnel_tx]=$((x1[5] - x0[5]))
        R[ots.udp_h1_tunnel_tx_errors]=$((x1[6] - x0[6]))
        R[ots.udp_h1_tunnel_tx_oversized]=$((x1[7] - x0[7]))
        R[ots.udp_h2_tunnel_rx]=$((y1[4] - y0[4]))
        R[ots.udp_h2_tap_tx]=$((y1[1] - y0[1]))
        R[ots.udp_h2_tap_tx_errors]=$((y1[2] - y0[2]))
        R[ots.udp_switch_drops]=$((x1[3] - x0[3] + x1[8] - x0[8] + y1[3] - y0[3] + y1[8] - y0[8]))
        R[ots.udp_encap_kpps]=$(kpps "${R[ots.udp_h1_tunnel_tx]}" "$DURATION")
        R[ots.udp_delivered_kpps]=$(kpps "${R[ots.udp_h2_tap_tx]}" "$DURATION")
        ;;
    okv)
        a1=$(dev_stat "$NS_XH1" "$VX_X1" tx_packets)
        b1=$(dev_stat "$NS_XH2" "$HP_X2" tx_packets)
        R[okv.udp_encap_kpps]=$(kpps $((a1 - a0)) "$DURATION")
        R[okv.udp_delivered_kpps]=$(kpps $((b1 - b0)) "$DURATION")
        ;;
    nts)
        a1=$(ts_counters "$NSOCK" "$TAP_NO")
        local -a n0 n1
        read -r -a n0 <<<"$a0"
        read -r -a n1 <<<"$a1"
        # Fields as in ts_counters; tx is the uplink port's (to the outside namespace).
        R[nts.udp_switch_drops]=$((n1[3] - n0[3]))
        R[nts.udp_nat_translated]=$((n1[9] - n0[9]))
        R[nts.udp_nat_refused]=$((n1[10] - n0[10]))
        R[nts.udp_fwd_kpps]=$(kpps $((n1[1] - n0[1])) "$DURATION")
        ;;
    nkv)
        a1=$(dev_stat "$NS_MR" "$VE_MRU" tx_packets)
        R[nkv.udp_fwd_kpps]=$(kpps $((a1 - a0)) "$DURATION")
        ;;
    esac
}

measure_ping() { # setup
    local s=$1 out=$TMP/ping-$1.txt stats
    note "${LABEL[$s]}: ping, $PING_COUNT x 10 ms"
    run_logged "$out" timeout -k 5 $((PING_COUNT / 50 + 30)) \
        ip netns exec "${CLIENT_NS[$s]}" ping -n -c "$PING_COUNT" -i 0.01 -W 1 "${SERVER_IP[$s]}"
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
START_SECS=$SECONDS
NPROC=$(nproc)
KERNEL=$(uname -r)
IPERF_VERSION=$(iperf3 --version 2>/dev/null | awk 'NR == 1 { print $2 }')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# --no-optional-locks: only look, never refresh the index of a tree others may be working in.
if [[ $REV != unknown && -n $(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    REV="$REV (working tree modified)"
fi

setup_tapswitch
[[ $OVS == 1 ]] && setup_ovs
setup_bridge
setup_veth
if [[ $OVERLAY == 1 ]]; then
    setup_overlay_tapswitch
    setup_overlay_kernel
fi
if [[ $NAT == 1 ]]; then
    setup_nat_tapswitch
    setup_nat_kernel
fi
for s in "${SETUPS[@]}"; do
    check_path "$s"
    start_server "$s"
done

for s in "${SETUPS[@]}"; do measure_tcp "$s" 1; done
for s in "${SETUPS[@]}"; do measure_tcp "$s" 4; done
for s in "${SETUPS[@]}"; do measure_udp "$s"; done
for s in "${SETUPS[@]}"; do measure_ping "$s"; done
ELAPSED=$((SECONDS - START_SECS))

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
# metric key | label | better | scope: "all" setups, or "ts" for the setups with a switch daemon
# only, tapswitch and Open vSwitch (the CPU figures; the kernel's work is spread over softirqs
# and the senders' system time).
ROWS=(
    "tcp_gbps|TCP 1 stream [Gbit/s]|higher|all"
    "tcp_cpu_s_per_gb|  switch CPU [s/GB] (a)|lower|ts"
    "tcp4_gbps|TCP 4 streams [Gbit/s]|higher|all"
    "tcp4_cpu_s_per_gb|  switch CPU [s/GB] (a)|lower|ts"
    "udp_rx_kpps|UDP 64B frames received [kpps]|higher|all"
    "udp_loss_pct|UDP 64B loss at receiver [%]|lower|all"
    "ping_avg_us|ping RTT avg [us]|lower|all"
    "ping_p50_us|ping RTT p50 [us]|lower|all"
    "ping_p99_us|ping RTT p99 [us]|lower|all"
)

ratio() { # a b -> a/b or "" when undefined
    awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b + 0 != 0) printf "%.2f", a / b }'
}

# Prints the metric table: setups (space-separated keys) with their column headers, then the
# ratios ("a/b" pairs of setup keys) with theirs.
print_table() { # "setups" "headers" "ratios" "ratio headers"
    local -a ss hs rs rh
    read -r -a ss <<<"$1"
    read -r -a hs <<<"$2"
    read -r -a rs <<<"$3"
    read -r -a rh <<<"$4"
    local row key label better scope s r v h
    printf '%-32s' "metric"
    for h in "${hs[@]}"; do printf ' %11s' "$h"; done
    for h in "${rh[@]}"; do printf ' %11s' "$h"; done
    printf '  %s\n' "better"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r key label better scope <<<"$row"
        printf '%-32s' "$label"
        for s in "${ss[@]}"; do
            v=${R[$s.$key]:-n/a}
            [[ $scope == ts && -z ${DAEMONS_OF[$s]:-} ]] && v=-
            printf ' %11s' "$v"
        done
        for r in "${rs[@]}"; do
            v=$(ratio "${R[${r%/*}.$key]:-}" "${R[${r#*/}.$key]:-}")
            [[ $scope == ts && (-z ${DAEMONS_OF[${r%/*}]:-} || -z ${DAEMONS_OF[${r#*/}]:-}) ]] && v=-
            printf ' %11s' "${v:-n/a}"
        done
        printf '  %s\n' "$better"
    done
}

detail() { # label value...
    local v
    printf '  %-30s' "$1"
    shift
    for v in "$@"; do printf ' %11s' "${v:-n/a}"; done
    printf '\n'
}

gb() { # bytes -> GB (10^9), or "?"
    awk -v b="$1" 'BEGIN { if (b != "") printf "%.2f", b / 1e9; else printf "?" }'
}

# "CPU s / GB" of setup $1 for TCP key $2 (tcp or tcp4), as "1.23/4.56".
cpu_detail() {
    echo "${R[$1.$2_cpu_s]:-?}/$(gb "${R[$1.$2_bytes]:-}")"
}

mode="full"
[[ $QUICK == 1 ]] && mode="quick"
echo
echo "tapswitch e2e bench: $START_DATE, nproc $NPROC, kernel $KERNEL, iperf3 $IPERF_VERSION"
echo "tree rev $REV, binary $TAPSWITCH built $BIN_DATE"
echo "mode $mode: iperf3 ${DURATION} s per run, ping $PING_COUNT x 10 ms; measuring took ${ELAPSED} s"
echo "tapswitch [switch]: workers ${WORKERS:-default (one per CPU)}, busy_poll_us ${BUSY_POLL_US:-default}"
if [[ $OVS == 1 ]]; then
    if [[ $OVS_TSO == 1 ]]; then tso=on; else tso="NOT on"; fi
    echo "ovs = Open vSwitch $OVS_VERSION, userspace datapath (netdev), TAP ports, userspace TSO $tso"
else
    echo "ovs: skipped ($OVS_SKIPPED)"
fi
echo
echo "namespace A -> namespace B"
# The first table's setups, their headers, and the ratios (with and without Open vSwitch).
if [[ $OVS == 1 ]]; then
    MAIN_S=(ts ov br ve)
    print_table "ts ov br ve" "tapswitch ovs bridge veth" "ts/br ts/ov ts/ve br/ve" \
        "ts/bridge ts/ovs ts/veth bridge/veth"
else
    MAIN_S=(ts br ve)
    print_table "ts br ve" "tapswitch bridge veth" "ts/br ts/ve br/ve" "ts/bridge ts/veth bridge/veth"
fi
echo "veth = one veth pair between A and B, no switch: the ceiling. ratio = first / second: above 1"
echo "is better for throughput and pps; for CPU, loss and RTT (lower is better) above 1 is worse."
echo "(a) user + system CPU time of the switch's daemon (tapswitch; ovs: ovs-vswitchd, all threads)"
echo "    during the TCP run, per GB (10^9 bytes) iperf3 sent in it (the omitted first second"
echo "    included on both sides)."
# A detail row of the first table: label, then for every setup the value of R key $2, or "-"
# for the setups without a switch daemon when $3 is "switch".
mrow() { # label key [switch]
    local s
    local -a v=()
    for s in "${MAIN_S[@]}"; do
        if [[ ${3:-} == switch && -z ${DAEMONS_OF[$s]:-} ]]; then
            v+=(-)
        else
            v+=("${R[$s.$2]:-}")
        fi
    done
    detail "$1" "${v[@]}"
}
printf '%-32s' "detail"
for s in "${MAIN_S[@]}"; do printf ' %11s' "${LABEL[$s]}"; done
printf '\n'
mrow "UDP packets sent" udp_sent_packets
mrow "UDP packets received" udp_rx_packets
mrow "  lost: device queues (1)" udp_link_drops
mrow "  lost: receiver socket (2)" udp_rcvbuf_drops
mrow "UDP via the switch [kpps] (3)" udp_switch_fwd_kpps switch
mrow "TCP retransmits, 1 stream" tcp_retransmits
mrow "TCP retransmits, 4 streams" tcp4_retransmits
for s in "${MAIN_S[@]}"; do
    R[$s.tcp_cpu_detail]=$(cpu_detail "$s" tcp)
    R[$s.tcp4_cpu_detail]=$(cpu_detail "$s" tcp4)
    R[$s.ping_min_max]="${R[$s.ping_min_us]:-?}/${R[$s.ping_max_us]:-?}"
done
mrow "CPU s / GB sent, 1 stream (a)" tcp_cpu_detail switch
mrow "CPU s / GB sent, 4 streams (a)" tcp4_cpu_detail switch
mrow "ping replies (of $PING_COUNT)" ping_received
mrow "ping RTT min / max [us]" ping_min_max
echo "(1) rx+tx dropped on the path's links (tapswitch, ovs: the TAPs, mostly sender -> switch"
echo "    queue full; bridge, veth: the veths). (2) UdpRcvbufErrors in B: receiver socket full."
echo "(3) per second of the run, what the switch forwarded, whether or not the receiving iperf3"
echo "    kept up (tapswitch: its tx counter; ovs: rx of B's TAP, what ovs-vswitchd wrote into it)."
echo "    tapswitch over the UDP run: rx ${R[ts.udp_switch_rx]:-?}," \
    "tx ${R[ts.udp_switch_tx]:-?}, tx_errors ${R[ts.udp_switch_tx_errors]:-?}, drops ${R[ts.udp_switch_drops]:-?}."
if [[ $OVS == 1 ]]; then
    echo "    ovs over the UDP run: read from A's TAP ${R[ov.udp_switch_rx]:-?}, written into B's TAP" \
        "${R[ov.udp_switch_tx]:-?}."
fi

if [[ $OVERLAY == 1 ]]; then
    echo
    echo "overlay: container 1 on host 1 -> container 2 on host 2, VNI $OVL_VNI over an underlay veth, MTU $OVL_MTU"
    print_table "ots okv" "tapswitch kernel" "ots/okv" "ts/kernel"
    echo "kernel = the kernel's vxlan device and bridge on each host. ratio = tapswitch / kernel, read"
    echo "as above. (a) as above, both hosts' daemons together."
    printf '%-32s %11s %11s\n' "detail" "tapswitch" "kernel"
    detail "UDP packets sent" "${R[ots.udp_sent_packets]:-}" "${R[okv.udp_sent_packets]:-}"
    detail "UDP packets received" "${R[ots.udp_rx_packets]:-}" "${R[okv.udp_rx_packets]:-}"
    detail "  lost: device queues (1)" "${R[ots.udp_link_drops]:-}" "${R[okv.udp_link_drops]:-}"
    detail "  lost: underlay socket (4)" "${R[ots.udp_underlay_rcvbuf_drops]:-}" "${R[okv.udp_underlay_rcvbuf_drops]:-}"
    detail "  lost: receiver socket (2)" "${R[ots.udp_rcvbuf_drops]:-}" "${R[okv.udp_rcvbuf_drops]:-}"
    detail "UDP encapsulated [kpps] (5)" "${R[ots.udp_encap_kpps]:-}" "${R[okv.udp_encap_kpps]:-}"
    detail "UDP delivered to C2 [kpps] (5)" "${R[ots.udp_delivered_kpps]:-}" "${R[okv.udp_delivered_kpps]:-}"
    detail "TCP retransmits, 1 stream" "${R[ots.tcp_retransmits]:-}" "${R[okv.tcp_retransmits]:-}"
    detail "TCP retransmits, 4 streams" "${R[ots.tcp4_retransmits]:-}" "${R[okv.tcp4_retransmits]:-}"
    detail "CPU s / GB sent, 1 stream (a)" "$(cpu_detail ots tcp)" "-"
    detail "CPU s / GB sent, 4 streams (a)" "$(cpu_detail ots tcp4)" "-"
    detail "ping replies (of $PING_COUNT)" "${R[ots.ping_received]:-}" "${R[okv.ping_received]:-}"
    detail "ping RTT min / max [us]" "${R[ots.ping_min_us]:-?}/${R[ots.ping_max_us]:-?}" \
        "${R[okv.ping_min_us]:-?}/${R[okv.ping_max_us]:-?}"
    echo "(1) as above, on the overlay's links (tapswitch: the TAPs and the underlay veth; kernel: the"
    echo "    containers' veths, the vxlan devices, the underlay veth). (2) as above, in container 2."
    echo "(4) UdpRcvbufErrors on host 2: its VTEP's UDP socket full (tapswitch reads it with recvfrom;"
    echo "    the kernel's vxlan device takes packets from the UDP stack without queueing)."
    echo "(5) per second of the run: outer packets host 1 sent (tapswitch: tunnel tx counter; kernel:"
    echo "    vxlan device tx) and frames host 2 passed on to container 2 (tapswitch: TAP port tx;"
    echo "    kernel: host-side veth tx). tapswitch counters over the UDP run:"
    echo "    host 1: TAP rx ${R[ots.udp_h1_tap_rx]:-?}, tunnel tx ${R[ots.udp_h1_tunnel_tx]:-?}" \
        "(tx_errors ${R[ots.udp_h1_tunnel_tx_errors]:-?}, tx_oversized ${R[ots.udp_h1_tunnel_tx_oversized]:-?});"
    echo "    host 2: tunnel rx ${R[ots.udp_h2_tunnel_rx]:-?}, TAP tx ${R[ots.udp_h2_tap_tx]:-?}" \
        "(tx_errors ${R[ots.udp_h2_tap_tx_errors]:-?}); drops on both hosts ${R[ots.udp_switch_drops]:-?}."
fi

if [[ $NAT == 1 ]]; then
    echo
    echo "NAT: container $NAT_CLIENT_IP -> outside $NAT_OUTSIDE_IP, masqueraded behind $NAT_UPLINK_IP" \
        "(the outside has no route back)"
    print_table "nts nkv" "tapswitch kernel" "nts/nkv" "ts/kernel"
    echo "tapswitch = router interfaces on VLAN $NAT_IN_VLAN and $NAT_OUT_VLAN, snat $NAT_SOURCE out of VLAN $NAT_OUT_VLAN;"
    echo "kernel = a router namespace with two veths, ip_forward and an nftables masquerade rule."
    echo "ratio = tapswitch / kernel, read as above. (a) as above."
    printf '%-32s %11s %11s\n' "detail" "tapswitch" "kernel"
    detail "UDP packets sent" "${R[nts.udp_sent_packets]:-}" "${R[nkv.udp_sent_packets]:-}"
    detail "UDP packets received" "${R[nts.udp_rx_packets]:-}" "${R[nkv.udp_rx_packets]:-}"
    detail "  lost: device queues (1)" "${R[nts.udp_link_drops]:-}" "${R[nkv.udp_link_drops]:-}"
    detail "  lost: receiver socket (2)" "${R[nts.udp_rcvbuf_drops]:-}" "${R[nkv.udp_rcvbuf_drops]:-}"
    detail "UDP out of the uplink [kpps] (6)" "${R[nts.udp_fwd_kpps]:-}" "${R[nkv.udp_fwd_kpps]:-}"
    detail "TCP retransmits, 1 stream" "${R[nts.tcp_retransmits]:-}" "${R[nkv.tcp_retransmits]:-}"
    detail "TCP retransmits, 4 streams" "${R[nts.tcp4_retransmits]:-}" "${R[nkv.tcp4_retransmits]:-}"
    detail "CPU s / GB sent, 1 stream (a)" "$(cpu_detail nts tcp)" "-"
    detail "CPU s / GB sent, 4 streams (a)" "$(cpu_detail nts tcp4)" "-"
    detail "ping replies (of $PING_COUNT)" "${R[nts.ping_received]:-}" "${R[nkv.ping_received]:-}"
    detail "ping RTT min / max [us]" "${R[nts.ping_min_us]:-?}/${R[nts.ping_max_us]:-?}" \
        "${R[nkv.ping_min_us]:-?}/${R[nkv.ping_max_us]:-?}"
    echo "(1) as above, on the NAT path's links (tapswitch: the two TAPs; kernel: both veth pairs)."
    echo "(2) as above, in the outside namespace. (6) per second of the run: packets the router sent"
    echo "    to the outside (tapswitch: the uplink TAP port's tx; kernel: the router's uplink veth's"
    echo "    tx). tapswitch over the UDP run: NAT translated ${R[nts.udp_nat_translated]:-?}," \
        "refused ${R[nts.udp_nat_refused]:-?}; drops ${R[nts.udp_switch_drops]:-?} (ports and router interfaces)."
fi

if [[ -n $JSON_OUT ]]; then
    jnum() { # value -> JSON number or null
        if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then echo "$1"; else echo null; fi
    }
    # A JSON object of setup $2's figures for the keys given, its closing brace indented by $1.
    jobj() { # indent setup key...
        local ind=$1 s=$2 k sep=""
        shift 2
        printf '{'
        for k in "$@"; do
            printf '%s\n%s  "%s": %s' "$sep" "$ind" "$k" "$(jnum "${R[$s.$k]:-}")"
            sep=","
        done
        printf '\n%s}' "$ind"
    }
    # The ratios a / b of the table's rows that both setups have (the CPU rows only when both
    # have a switch daemon).
    jratios() { # indent a b
        local ind=$1 a=$2 b=$3 row key label better scope sep=""
        printf '{'
        for row in "${ROWS[@]}"; do
            IFS='|' read -r key label better scope <<<"$row"
            [[ $scope == all || (-n ${DAEMONS_OF[$a]:-} && -n ${DAEMONS_OF[$b]:-}) ]] || continue
            printf '%s\n%s  "%s": %s' "$sep" "$ind" "$key" "$(jnum "$(ratio "${R[$a.$key]:-}" "${R[$b.$key]:-}")")"
            sep=","
        done
        printf '\n%s}' "$ind"
    }
    KEYS=(tcp_gbps tcp_retransmits tcp4_gbps tcp4_retransmits udp_rx_kpps udp_loss_pct
        udp_sent_packets udp_rx_packets udp_link_drops udp_rcvbuf_drops ping_avg_us ping_p50_us
        ping_p99_us ping_min_us ping_max_us ping_received ping_loss_pct)
    # Setups with a switch daemon only: its CPU seconds, bytes sent over the same window, and
    # their ratio.
    CPU_KEYS=(tcp_cpu_s tcp_bytes tcp_cpu_s_per_gb tcp4_cpu_s tcp4_bytes tcp4_cpu_s_per_gb)
    {
        printf '{\n'
        printf '  "date": "%s",\n  "nproc": %s,\n  "kernel": "%s",\n' "$START_DATE" "$NPROC" "$KERNEL"
        printf '  "iperf3": "%s",\n  "rev": "%s",\n  "binary_built": "%s",\n  "mode": "%s",\n' \
            "$IPERF_VERSION" "$REV" "$BIN_DATE" "$mode"
        printf '  "duration_s": %s,\n  "ping_count": %s,\n  "clock_ticks_per_s": %s,\n' \
            "$DURATION" "$PING_COUNT" "$CLK_TCK"
        printf '  "measuring_s": %s,\n' "$ELAPSED"
        if [[ $OVS == 1 ]]; then
            printf '  "ovs_version": "%s",\n  "ovs_userspace_tso": %s,\n' "$OVS_VERSION" \
                "$([[ $OVS_TSO == 1 ]] && echo true || echo false)"
        else
            printf '  "ovs_version": null,\n  "ovs_userspace_tso": null,\n'
        fi
        printf '  "tapswitch": %s,\n' "$(jobj '  ' ts "${KEYS[@]}" "${CPU_KEYS[@]}" \
            udp_switch_rx udp_switch_tx udp_switch_tx_errors udp_switch_drops udp_switch_fwd_kpps)"
        if [[ $OVS == 1 ]]; then
            printf '  "ovs": %s,\n' "$(jobj '  ' ov "${KEYS[@]}" "${CPU_KEYS[@]}" \
                udp_switch_rx udp_switch_tx udp_switch_fwd_kpps)"
        else
            printf '  "ovs": null,\n'
        fi
        printf '  "bridge": %s,\n' "$(jobj '  ' br "${KEYS[@]}")"
        printf '  "veth": %s,\n' "$(jobj '  ' ve "${KEYS[@]}")"
        printf '  "ratio_tapswitch_over_bridge": %s,\n' "$(jratios '  ' ts br)"
        if [[ $OVS == 1 ]]; then
            printf '  "ratio_tapswitch_over_ovs": %s,\n' "$(jratios '  ' ts ov)"
            printf '  "ratio_ovs_over_bridge": %s,\n' "$(jratios '  ' ov br)"
        else
            printf '  "ratio_tapswitch_over_ovs": null,\n  "ratio_ovs_over_bridge": null,\n'
        fi
        printf '  "ratio_tapswitch_over_veth": %s,\n' "$(jratios '  ' ts ve)"
        printf '  "ratio_bridge_over_veth": %s,\n' "$(jratios '  ' br ve)"
        if [[ $OVERLAY == 1 ]]; then
            printf '  "overlay": {\n'
            printf '    "tapswitch": %s,\n' "$(jobj '    ' ots "${KEYS[@]}" "${CPU_KEYS[@]}" \
                udp_underlay_rcvbuf_drops udp_encap_kpps udp_delivered_kpps udp_h1_tap_rx \
                udp_h1_tunnel_tx udp_h1_tunnel_tx_errors udp_h1_tunnel_tx_oversized udp_h2_tunnel_rx \
                udp_h2_tap_tx udp_h2_tap_tx_errors udp_switch_drops)"
            printf '    "kernel": %s,\n' "$(jobj '    ' okv "${KEYS[@]}" \
                udp_underlay_rcvbuf_drops udp_encap_kpps udp_delivered_kpps)"
            printf '    "ratio_tapswitch_over_kernel": %s\n  },\n' "$(jratios '    ' ots okv)"
        else
            printf '  "overlay": null,\n'
        fi
        if [[ $NAT == 1 ]]; then
            printf '  "nat": {\n'
            printf '    "tapswitch": %s,\n' "$(jobj '    ' nts "${KEYS[@]}" "${CPU_KEYS[@]}" \
                udp_fwd_kpps udp_nat_translated udp_nat_refused udp_switch_drops)"
            printf '    "kernel": %s,\n' "$(jobj '    ' nkv "${KEYS[@]}" udp_fwd_kpps)"
            printf '    "ratio_tapswitch_over_kernel": %s\n  },\n' "$(jratios '    ' nts nkv)"
        else
            printf '  "nat": null,\n'
        fi
        printf '  "lower_is_better": ["udp_loss_pct", "ping_avg_us", "ping_p50_us", "ping_p99_us",'
        printf ' "tcp_cpu_s_per_gb", "tcp4_cpu_s_per_gb"]\n'
        printf '}\n'
    } >"$JSON_OUT" || die "could not write $JSON_OUT"
    note "results written to $JSON_OUT"
fi

[[ $FAILED == 0 ]] || die "some measurements failed (n/a above)"
exit 0
