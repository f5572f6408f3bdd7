# tests/lib.sh: shared helpers of the check_*.sh scripts (sourced).
# ok/bad count and print one line each; tally adds up a sub-step's output
# (its "## p f" line, else its ok/FAIL lines); finish prints "## p f" and exits.
pass=0; fail=0
ok()   { echo "ok   - $*"; pass=$((pass + 1)); }
bad()  { echo "FAIL - $*"; fail=$((fail + 1)); }
finish() { echo "## $pass $fail"; [ "$fail" -eq 0 ]; exit $?; }
tally() {
    local out="$1" line
    printf '%s\n' "$out" | grep -E '^(ok  |FAIL|#)' | grep -v '^## '
    line=$(printf '%s\n' "$out" | grep -E '^## [0-9]+ [0-9]+$' | tail -1)
    if [ -n "$line" ]; then
        set -- $line; pass=$((pass + $2)); fail=$((fail + $3))
    else
        local p f
        p=$(printf '%s\n' "$out" | grep -c '^ok  ')
        f=$(printf '%s\n' "$out" | grep -c '^FAIL')
        pass=$((pass + p)); fail=$((fail + f))
        if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
            printf '%s\n' "$out" | tail -5
            bad "no result from: $(printf '%s\n' "$out" | head -1)"
        fi
    fi
}
