# shellcheck shell=bash
# Helpers shared by the examples (examples/*.sh) and the bench scripts (benches/e2e.sh,
# benches/profile.sh) to start `tapswitch run` daemons and to remove everything they made.
# Source it from bash (4.4 or later), from the repository root:
#
#   . examples/lib.sh
#   cleanup() { ts_daemon_stop_all; ip netns del ...; }   # daemons first, namespaces after
#   ts_trap_cleanup cleanup
#   ts_daemon_start [--netns NS] [--config FILE] BIN SOCK LOG    # PID in TS_DAEMON_PID
#
# ts_daemon_start BIN SOCK LOG: starts `BIN --socket SOCK run --state-dir DIR` in the
#   background (inside `ip netns exec NS` with --netns, with `--config FILE` with --config),
#   its stdout and stderr to LOG, with a fresh state directory DIR of its own (`mktemp -d`, next
#   to SOCK), so that no saved state of another run is adopted and none is left for the next.
#   The daemon runs in a session of its own (setsid), so a Ctrl-C in the terminal reaches the
#   script, whose cleanup purges it, and not the daemon, which would stop with its TAPs kept.
#   It then waits for the daemon as ts_daemon_wait does. Its PID is left in TS_DAEMON_PID.
#   Call it from the script's main shell (not in a subshell or a pipeline): the daemon must be
#   the script's own child for the script to wait for it.
# ts_daemon_wait SOCK [SECS]: waits at most SECS (default 10) seconds until
#   `BIN --socket SOCK port list` succeeds. If the daemon exits meanwhile or does not answer in
#   time, it says so on stderr, naming the socket, with the last lines of the daemon's log,
#   and exits the script (status 1) at once; the script's exit trap then cleans up.
# ts_daemon_stop SOCK: `BIN --socket SOCK stop --purge` (every port removed, TAPs deleted,
#   saved state forgotten; the daemon exits), waits for the daemon to exit; if it does not, the
#   stop fails, or the daemon never answered on SOCK (a stop is only ever sent to a socket this
#   daemon answered on), SIGTERM and then SIGKILL to that PID only, with a warning: its TAPs
#   are then left, and go with their namespaces. Then removes its state directory and, if the
#   daemon answered there, its socket file. Does nothing for a socket it did not start.
# ts_daemon_stop_all: ts_daemon_stop for every daemon started and not yet stopped, the last
#   started first.
# ts_trap_cleanup FUNC: runs FUNC on exit, also after Ctrl-C (exit 130) and SIGTERM (exit 143),
#   with further Ctrl-Cs ignored while it runs.
#
# Only PIDs started here are ever signalled, and only while they are still this shell's
# children (a PID reaped and reused by another process is never signalled).

# The daemons started, by control socket: PID, parent shell, binary, state directory, log,
# namespace; whether it answered; whether its start failed; whether nothing was at SOCK before.
declare -gA _TSD_PID=() _TSD_PARENT=() _TSD_BIN=() _TSD_STATE=() _TSD_LOG=() _TSD_NS=()
declare -gA _TSD_UP=() _TSD_FAILED=() _TSD_FRESH=()
declare -ga _TSD_SOCKS=() # in start order
TS_DAEMON_PID=""

ts_trap_cleanup() { # FUNC
    # shellcheck disable=SC2064 # FUNC is expanded now, on purpose
    trap "trap '' INT TERM; $1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Runs a command with a time limit (timeout(1) from coreutils when there is one).
_ts_limit() { # SECS CMD...
    local secs=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout "$secs" "$@"
    else
        "$@"
    fi
}

# True if the daemon answers on socket $1 within 2 s. (The output is silenced on the command,
# not on a function call: a trap that runs during a function call with a redirection, as the
# exit trap after a Ctrl-C does, runs with that redirection in place.)
_ts_daemon_answers() { # SOCK
    if command -v timeout >/dev/null 2>&1; then
        timeout 2 "${_TSD_BIN[$1]}" --socket "$1" port list >/dev/null 2>&1
    else
        "${_TSD_BIN[$1]}" --socket "$1" port list >/dev/null 2>&1
    fi
}

# True while the daemon on socket $1 is alive and still the child of the shell that started
# it (a zombie counts as exited).
_ts_daemon_alive() { # SOCK
    local pid=${_TSD_PID[$1]:-} stat rest state ppid
    [[ -n $pid ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    rest=${stat##*) }
    read -r state ppid _ <<<"$rest"
    [[ $ppid == "${_TSD_PARENT[$1]}" && $state != Z ]]
}

# Waits up to $2 tenths of a second for the daemon on socket $1 to exit.
_ts_daemon_wait_exit() { # SOCK TENTHS
    local i
    for ((i = 0; i < $2; i++)); do
        _ts_daemon_alive "$1" || return 0
        sleep 0.1
    done
    ! _ts_daemon_alive "$1"
}

_ts_daemon_what() { # SOCK
    echo "tapswitch run (control socket $1${_TSD_NS[$1]:+, in network namespace ${_TSD_NS[$1]}})"
}

# Says why the daemon on socket $1 did not come up, with the tail of its log, and exits.
_ts_daemon_fail() { # SOCK REASON
    local sock=$1 log=${_TSD_LOG[$1]:-}
    _TSD_FAILED[$sock]=1
    {
        echo "error: $(_ts_daemon_what "$sock") $2"
        if [[ -s $log ]]; then
            echo "---- last lines of its log, $log ----"
            tail -n 20 -- "$log"
            echo "----"
        else
            echo "(its log $log is empty or missing)"
        fi
    } >&2
    exit 1
}

ts_daemon_start() { # [--netns NS] [--config FILE] BIN SOCK LOG
    local - ns="" conf=() bin sock log dir base state pid
    set +e
    while [[ $# -gt 0 ]]; do
        case $1 in
        --netns) ns=$2; shift 2 ;;
        --config) conf=(--config "$2"); shift 2 ;;
        --) shift; break ;;
        -*) echo "error: ts_daemon_start: unknown option $1" >&2; exit 1 ;;
        *) break ;;
        esac
    done
    if [[ $# -ne 3 ]]; then
        echo "error: usage: ts_daemon_start [--netns NS] [--config FILE] BIN SOCK LOG" >&2
        exit 1
    fi
    bin=$1 sock=$2 log=$3
    if [[ -n ${_TSD_PID[$sock]:-} ]]; then
        echo "error: ts_daemon_start: a daemon was already started on $sock" >&2
        exit 1
    fi
    # The state directory next to the socket when that directory is there to take it.
    dir=$(dirname -- "$sock")
    [[ -d $dir && -w $dir ]] || dir=${TMPDIR:-/tmp}
    base=$(basename -- "$sock")
    state=$(mktemp -d "$dir/${base%.sock}.state.XXXXXX") || {
        echo "error: mktemp -d in $dir failed: no state directory for tapswitch on $sock" >&2
        exit 1
    }
    [[ -e $sock || -L $sock ]] || _TSD_FRESH[$sock]=1
    local cmd=("$bin" --socket "$sock" run --state-dir "$state" "${conf[@]}")
    [[ -n $ns ]] && cmd=(ip netns exec "$ns" "${cmd[@]}")
    # A background child of a non-interactive shell is never a process group leader, so
    # setsid does not fork: like ip netns exec, it execs, and $! is the daemon itself.
    command -v setsid >/dev/null 2>&1 && cmd=(setsid "${cmd[@]}")
    "${cmd[@]}" >"$log" 2>&1 </dev/null &
    pid=$!
    _TSD_PID[$sock]=$pid _TSD_PARENT[$sock]=$BASHPID _TSD_BIN[$sock]=$bin
    _TSD_STATE[$sock]=$state _TSD_LOG[$sock]=$log _TSD_NS[$sock]=$ns
    _TSD_SOCKS+=("$sock")
    # shellcheck disable=SC2034 # for the scripts
    TS_DAEMON_PID=$pid
    ts_daemon_wait "$sock"
}

ts_daemon_wait() { # SOCK [SECS]
    local - sock=$1 secs=${2:-10} pid start rc
    set +e
    pid=${_TSD_PID[$sock]:-}
    if [[ -z $pid ]]; then
        echo "error: ts_daemon_wait: no daemon was started on $sock" >&2
        exit 1
    fi
    start=$SECONDS
    while :; do
        if ! _ts_daemon_alive "$sock"; then
            wait "$pid" 2>/dev/null
            rc=$?
            _ts_daemon_fail "$sock" "exited (status $rc) before its control socket answered"
        fi
        if [[ -S $sock ]] && _ts_daemon_answers "$sock"; then
            _TSD_UP[$sock]=1
            return 0
        fi
        if ((SECONDS - start >= secs)); then
            _ts_daemon_fail "$sock" "did not answer on its control socket within $secs s (PID $pid is still running)"
        fi
        sleep 0.1
    done
}

ts_daemon_stop() { # SOCK
    local - sock=$1 pid state err rc
    set +e
    pid=${_TSD_PID[$sock]:-}
    [[ -n $pid ]] || return 0
    state=${_TSD_STATE[$sock]}
    if _ts_daemon_alive "$sock"; then
        # Interrupted while it was starting: the socket is this daemon's if nothing was there
        # before and it answers now. A stop --purge is only ever sent to this daemon's socket.
        if [[ -z ${_TSD_UP[$sock]:-} && -n ${_TSD_FRESH[$sock]:-} && -S $sock ]] &&
            _ts_daemon_answers "$sock"; then
            _TSD_UP[$sock]=1
        fi
        if [[ -z ${_TSD_UP[$sock]:-} ]]; then
            : # it never answered: SIGTERM below
        elif [[ ! -S $sock ]]; then
            echo "warning: the control socket $sock is gone: cannot stop --purge $(_ts_daemon_what "$sock")" >&2
        elif err=$(_ts_limit 30 "${_TSD_BIN[$sock]}" --socket "$sock" stop --purge 2>&1 </dev/null); then
            # stop --purge returns once the ports are gone; the process exits right after.
            _ts_daemon_wait_exit "$sock" 100 ||
                echo "warning: $(_ts_daemon_what "$sock") did not exit within 10 s of stop --purge" >&2
        else
            echo "warning: tapswitch --socket $sock stop --purge failed: ${err:-no answer}" >&2
        fi
        if _ts_daemon_alive "$sock"; then
            echo "warning: sending SIGTERM to $(_ts_daemon_what "$sock"), PID $pid; the TAPs it made stay (they go with their namespaces)" >&2
            kill -TERM "$pid" 2>/dev/null
            if ! _ts_daemon_wait_exit "$sock" 50; then
                echo "warning: PID $pid did not exit after SIGTERM; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null
                _ts_daemon_wait_exit "$sock" 50
            fi
        fi
        wait "$pid" 2>/dev/null
    else
        wait "$pid" 2>/dev/null
        rc=$?
        # A daemon that never came up has been reported already.
        [[ -n ${_TSD_FAILED[$sock]:-} ]] ||
            echo "warning: $(_ts_daemon_what "$sock") had exited (status $rc) before it was stopped; the TAPs it made stay (they go with their namespaces)" >&2
    fi
    [[ -n $state && -d $state ]] && rm -rf -- "$state"
    # The socket is removed by the daemon when it exits, but not after a SIGKILL. It is only
    # removed here if this daemon answered on it: a daemon that never did may have failed
    # because another one is listening there.
    [[ -n ${_TSD_UP[$sock]:-} && -S $sock ]] && rm -f -- "$sock"
    unset "_TSD_PID[$sock]" "_TSD_PARENT[$sock]" "_TSD_BIN[$sock]" "_TSD_STATE[$sock]"
    unset "_TSD_LOG[$sock]" "_TSD_NS[$sock]" "_TSD_UP[$sock]" "_TSD_FAILED[$sock]" "_TSD_FRESH[$sock]"
    return 0
}

ts_daemon_stop_all() {
    local - i
    set +e
    for ((i = ${#_TSD_SOCKS[@]} - 1; i >= 0; i--)); do
        ts_daemon_stop "${_TSD_SOCKS[i]}"
    done
    _TSD_SOCKS=()
    return 0
}
