# std.sh: shell helpers for task commands, installed by `taskqueue worker` (written for taskqueue;
# same names and behaviour as the helpers the original scitq DSL's commands expect).
# Use: `. /builtin/std.sh` (or `. "$SCITQ_BUILTIN/std.sh"`). Sourcing it turns strict mode on.
# POSIX sh only (dash, busybox sh, bash): no `local`, no arrays; internal names start with `_tq_`.

# Whether this shell knows `pipefail` (dash does not): probed in a subshell, because an unknown
# option to the special builtin `set` would end the shell itself.
if (set -o pipefail) 2>/dev/null; then _tq_has_pipefail=1; else _tq_has_pipefail=0; fi

# _strict: stop at the first failing command (`set -e`), and let a pipeline fail when any of its
# commands fails (`pipefail`, where the shell has it; never an error where it has not).
_strict() {
    set -e
    if [ "$_tq_has_pipefail" = 1 ]; then set -o pipefail; fi
}

# _nostrict: undoes _strict.
_nostrict() {
    set +e
    if [ "$_tq_has_pipefail" = 1 ]; then set +o pipefail; fi
}

# _canfail CMD...: runs CMD with strict mode off, then puts the previous mode back and returns 0
# whatever CMD returned. Without CMD: same as _nostrict.
_canfail() {
    if [ $# -eq 0 ]; then
        _nostrict
        return 0
    fi
    case $- in *e*) _tq_cf_e=1 ;; *) _tq_cf_e=0 ;; esac
    _tq_cf_pf=0
    # `set +o` prints `set -o pipefail` when it is on (pipefail, unlike -e, survives in $(...)).
    if [ "$_tq_has_pipefail" = 1 ]; then
        case $(set +o) in *"-o pipefail"*) _tq_cf_pf=1 ;; esac
    fi
    _nostrict
    "$@"
    if [ "$_tq_cf_e" = 1 ]; then set -e; fi
    if [ "$_tq_cf_pf" = 1 ]; then set -o pipefail; fi
    return 0
}

# _para CMD...: starts CMD in the background and remembers it for _wait.
_para() {
    "$@" &
    _tq_para_pids="${_tq_para_pids} $!"
    eval "_tq_para_cmd_$!=\$*"
}

# _wait: waits for every command started by _para. Each one that failed is reported on stderr as
# `Command failed (PID n): <command>`; returns the code of the first of them that failed (in the
# order they were started), 0 when all succeeded.
_wait() {
    _tq_wait_rc=0
    for _tq_wait_pid in $_tq_para_pids; do
        _tq_wait_one=0
        wait "$_tq_wait_pid" || _tq_wait_one=$?
        if [ "$_tq_wait_one" -ne 0 ]; then
            eval "_tq_wait_cmd=\$_tq_para_cmd_$_tq_wait_pid"
            echo "Command failed (PID $_tq_wait_pid): $_tq_wait_cmd" >&2
            if [ "$_tq_wait_rc" -eq 0 ]; then _tq_wait_rc=$_tq_wait_one; fi
        fi
        unset "_tq_para_cmd_$_tq_wait_pid"
    done
    _tq_para_pids=
    return "$_tq_wait_rc"
}

# _retry [MAX [DELAY]] CMD...: runs CMD until it succeeds, at most MAX times in all (default 5),
# sleeping DELAY seconds (default 1) between two attempts; returns CMD's last code.
_retry() {
    _tq_retry_max=5
    _tq_retry_delay=1
    case $1 in
        '' | *[!0-9]*) ;;
        *)
            _tq_retry_max=$1
            shift
            case $1 in
                '' | *[!0-9.]* | *.*.*) ;;
                *) _tq_retry_delay=$1; shift ;;
            esac
            ;;
    esac
    _tq_retry_try=1
    while :; do
        _tq_retry_rc=0
        "$@" || _tq_retry_rc=$?
        if [ "$_tq_retry_rc" -eq 0 ]; then return 0; fi
        if [ "$_tq_retry_try" -ge "$_tq_retry_max" ]; then return "$_tq_retry_rc"; fi
        _tq_retry_try=$((_tq_retry_try + 1))
        sleep "$_tq_retry_delay"
    done
}

_strict
