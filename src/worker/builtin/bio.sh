# bio.sh: helpers for bioinformatics task commands, installed by `taskqueue worker` (written for
# taskqueue; same names and behaviour as the helpers the original scitq DSL's commands expect).
# Use: `. /builtin/bio.sh` (or `. "$SCITQ_BUILTIN/bio.sh"`). POSIX sh (dash, busybox sh, bash).

# _find_pairs FILE...: sorts paired-end read files. For each separator in turn (`_`, `.`, `r`,
# `R`, then none), the files ending in <separator>1.f*q.gz are read 1 and those ending in
# <separator>2.f*q.gz read 2; the first separator that gives as many of each, and at least one,
# wins: READS1 and READS2 (space-separated, in the order given) are set, and EXTRA holds the other
# files. When no separator does, returns 1 with READS1 and READS2 empty and EXTRA all the files.
_find_pairs() {
    for _tq_fp_sep in _ . r R ''; do
        READS1=
        READS2=
        EXTRA=
        _tq_fp_n1=0
        _tq_fp_n2=0
        for _tq_fp_file in "$@"; do
            case $_tq_fp_file in
                *"$_tq_fp_sep"1.f*q.gz)
                    READS1="${READS1:+$READS1 }$_tq_fp_file"
                    _tq_fp_n1=$((_tq_fp_n1 + 1))
                    ;;
                *"$_tq_fp_sep"2.f*q.gz)
                    READS2="${READS2:+$READS2 }$_tq_fp_file"
                    _tq_fp_n2=$((_tq_fp_n2 + 1))
                    ;;
                *) EXTRA="${EXTRA:+$EXTRA }$_tq_fp_file" ;;
            esac
        done
        if [ "$_tq_fp_n1" -gt 0 ] && [ "$_tq_fp_n1" -eq "$_tq_fp_n2" ]; then
            return 0
        fi
    done
    READS1=
    READS2=
    EXTRA="$*"
    return 1
}
