# tests/lib.sh: shared helpers of the check_*.sh scripts (sourced).
# ok/bad count and print one line each; tally adds up a sub-step's output
# (its "## p f" line, else its ok/FAIL lines); finish prints "## p f" and exits.
# The oracle checks compare fp32 to fp32 tolerances: frozen weights in fp32
# (bf16 is the default on AMX CPUs; tests/check_bf16.sh asks for it per command).
export PEFTC_BF16=0
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

# build_driver NAME: builds build/tests/NAME from tests/NAME.c against
# build/libpeftc.a with the Makefile's own CC, CFLAGS and LDLIBS; on failure
# reports it (bad) and returns 1.
build_driver() {
    if [ ! -f build/libpeftc.a ]; then bad "build/libpeftc.a missing: run make"; return 1; fi
    local cc cflags ldlibs out
    mkvar() { make -s --no-print-directory --eval='print-%: ; @echo $($*)' "print-$1"; }
    cc=$(mkvar CC); cflags=$(mkvar CFLAGS); ldlibs=$(mkvar LDLIBS)
    mkdir -p build/tests
    # built beside and renamed into place: tests run two at a time and several
    # build the same driver, so one must never execute another's half-written file
    local tmp="build/tests/.$1.$$"
    if ! out=$($cc $cflags -Itests -o "$tmp" "tests/$1.c" build/libpeftc.a $ldlibs 2>&1); then
        rm -f "$tmp"
        printf '%s\n' "$out" | head -20
        bad "tests/$1.c does not build"
        return 1
    fi
    mv -f "$tmp" "build/tests/$1"
}

# fixtures_lock DIR / fixtures_unlock: hold DIR's lock while its shared fixtures
# are made or checked (tests/out/llama is made by whichever of check_llama,
# check_lm, check_interop and check_merge_model gets there first, and
# tests/run.sh runs two tests at a time)
fixtures_lock() { mkdir -p "$1"; exec 9>"$1/.lock"; flock 9; }
fixtures_unlock() { flock -u 9; exec 9>&-; }
