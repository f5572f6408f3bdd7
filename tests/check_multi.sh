#!/usr/bin/env bash
# Many adapters on one base (peftc predict --adapter NAME=DIR ... --compose,
# --adapter-col, --drop-layers) against running the adapters one by one and
# against single adapters built by tests/ref_multi.py to compute by
# construction what a composition computes; then bad input.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh
export OMP_NUM_THREADS=1 GOMP_SPINCOUNT=10000
PY=/usr/bin/python3
W=$(mktemp -d /tmp/peftc_multi.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
$PY tests/make_tiny_bert.py "$W/tiny" >/dev/null 2>&1 || { bad "cannot build the tiny model"; finish; }
T=$W/tiny/model
c="--model $T --batch 8 --train $W/tiny/train.tsv --epochs 3 --lr 0.01"
train() { local out=$1; shift; ./peftc train $c "$@" --out "$W/$out" >/dev/null 2>&1 || bad "train $out $*"; }
train a --seed 1 --method lora --r 4
train b --seed 2 --method lora --r 2 --target-modules query,key,value,output.dense
train p --seed 3 --method adapter-pfeiffer
train q --seed 5 --method adapter-pfeiffer
train i --seed 4 --method ia3
{ cut -f1 "$W/tiny/dev.tsv" | tail -n +2; cut -f1 "$W/tiny/train.tsv" | tail -n +2; } > "$W/in.txt"   # 64 lines
P="./peftc predict --model $T --probs --hex"
for x in a b p q i; do $P --adapter "$W/$x" < "$W/in.txt" > "$W/one_$x.txt" || bad "predict $x"; done

# cmp_out NAME F1 F2 TOL [COLS]
cmp_out() {
    local name=$1 f1=$2 f2=$3 tol=$4 cols=${5:-} r
    if r=$($PY tests/ref_multi.py compare "$f1" "$f2" "$tol" $cols); then ok "$name: $r"; else bad "$name: $r"; fi
}
# bit-for-bit: the same bytes (probabilities printed as hex floats)
cmp_exact() { if cmp -s "$2" "$3"; then ok "$1: bit for bit"; else bad "$1: differs"; diff "$2" "$3" | head -4; fi; }

# --- one named adapter is the plain adapter
$P --adapter a="$W/a" < "$W/in.txt" > "$W/named_a.txt"
cmp_exact "a=DIR equals --adapter DIR" "$W/named_a.txt" "$W/one_a.txt"
$P --adapter a="$W/a" --adapter p="$W/p" --compose p < "$W/in.txt" > "$W/named_p.txt"
cmp_exact "--compose p of two loaded equals p alone" "$W/named_p.txt" "$W/one_p.txt"

# --- parallel: one pass, one output per adapter, each as the adapter alone
$P --adapter a="$W/a" --adapter b="$W/b" --adapter p="$W/p" --adapter i="$W/i" --compose 'parallel(a,b,p,i)' \
    < "$W/in.txt" > "$W/par.txt" || bad "parallel run"
k=0
for x in a b p i; do
    cmp_out "parallel(a,b,p,i) output $x = $x alone" "$W/par.txt" "$W/one_$x.txt" 1e-6 "$((3 * k)),$((3 * k + 1)),$((3 * k + 2))"
    k=$((k + 1))
done
if head -1 "$W/par.txt" | grep -q '^a=.*	b=.*	p=.*	i='; then ok "parallel prints name=label per output"; else bad "parallel output format: $(head -1 "$W/par.txt")"; fi

# --- batchsplit(a:3,p:5): examples 0-2 of every 8 through a, 3-7 through p
$P --adapter a="$W/a" --adapter p="$W/p" --compose 'batchsplit(a:3,p:5)' < "$W/in.txt" > "$W/bs.txt" || bad "batchsplit run"
awk 'NR==FNR { A[FNR] = $0; next } { print ((FNR - 1) % 8 < 3) ? A[FNR] : $0 }' "$W/one_a.txt" "$W/one_p.txt" > "$W/bs_ref.txt"
cmp_out "batchsplit(a:3,p:5) = a on 3, p on 5 of every 8" "$W/bs.txt" "$W/bs_ref.txt" 1e-6

# --- average: of identical adapters = the adapter; weights 1,0 = the first
$P --adapter p="$W/p" --adapter p2="$W/p" --compose 'average(p,p2)' < "$W/in.txt" > "$W/avg_pp.txt"
cmp_out "average(p,p) = p" "$W/avg_pp.txt" "$W/one_p.txt" 1e-6
$P --adapter a="$W/a" --adapter a2="$W/a" --adapter a3="$W/a" --compose 'average(a,a2,a3,1,2,3)' < "$W/in.txt" > "$W/avg_aaa.txt"
cmp_out "average(a,a,a,1,2,3) = a" "$W/avg_aaa.txt" "$W/one_a.txt" 1e-6
$P --adapter p="$W/p" --adapter q="$W/q" --compose 'average(p,q,1,0)' < "$W/in.txt" > "$W/avg_10.txt"
cmp_out "average(p,q,1,0) = p" "$W/avg_10.txt" "$W/one_p.txt" 1e-6
$P --adapter p="$W/p" --adapter q="$W/q" --compose 'average(p,q)' < "$W/in.txt" > "$W/avg_pq.txt"
if ! cmp -s "$W/avg_pq.txt" "$W/one_p.txt" && ! cmp -s "$W/avg_pq.txt" "$W/one_q.txt"; then ok "average(p,q) differs from p and from q"; else bad "average(p,q) equals one of its adapters"; fi

# --- stack: against single adapters that hold both (ref_multi.py)
$PY tests/ref_multi.py stack_lora "$W/a" "$W/b" "$W/ab" && $P --adapter "$W/ab" < "$W/in.txt" > "$W/one_ab.txt" || bad "stack_lora reference"
$P --adapter a="$W/a" --adapter b="$W/b" --compose 'stack(a,b)' < "$W/in.txt" > "$W/st_ab.txt"
cmp_out "stack(a,b) of LoRAs = one LoRA [s_a A_a; s_b A_b], [B_a B_b]" "$W/st_ab.txt" "$W/one_ab.txt" 2e-6
$PY tests/ref_multi.py stack_seq "$W/p" "$W/q" "$W/pq" && $P --adapter "$W/pq" < "$W/in.txt" > "$W/one_pq.txt" || bad "stack_seq reference"
$P --adapter p="$W/p" --adapter q="$W/q" --compose 'stack(p,q)' < "$W/in.txt" > "$W/st_pq.txt"
cmp_out "stack(p,q) of sequential adapters = one adapter with p's then q's delta" "$W/st_pq.txt" "$W/one_pq.txt" 2e-6
$P --adapter p="$W/p" --adapter q="$W/q" --compose 'stack(q,p)' < "$W/in.txt" > "$W/st_qp.txt"
if ! cmp -s "$W/st_qp.txt" "$W/st_pq.txt"; then ok "stack(q,p) differs from stack(p,q) (order matters)"; else bad "stack order ignored"; fi
$P --adapter a="$W/a" --adapter b="$W/b" --adapter p="$W/p" --compose 'parallel(stack(a,b),p)' < "$W/in.txt" > "$W/par_st.txt"
cmp_out "parallel(stack(a,b),p) output 1 = stack reference" "$W/par_st.txt" "$W/one_ab.txt" 2e-6 0,1,2

# --- split(x,y@k): tokens before k through x, the rest through y
$P --adapter a="$W/a" --adapter a2="$W/a" --compose 'split(a,a2@3)' < "$W/in.txt" > "$W/sp_aa.txt"
cmp_out "split(a,a@3) = a" "$W/sp_aa.txt" "$W/one_a.txt" 1e-6
# a_none: a with every delta removed (the base, a's head); a split's head is its last child's
$PY tests/ref_multi.py zero_layers "$W/a" 99 "$W/a_none"
$P --adapter "$W/a_none" < "$W/in.txt" > "$W/one_a_none.txt"
$P --adapter a="$W/a" --adapter n="$W/a_none" --compose 'split(a,n@1000)' < "$W/in.txt" > "$W/sp_an.txt"
cmp_out "split(a,none@1000) = a (every token before 1000 through a)" "$W/sp_an.txt" "$W/one_a.txt" 1e-6
$P --adapter a="$W/a" --adapter n="$W/a_none" --compose 'split(n,a@1000)' < "$W/in.txt" > "$W/sp_na.txt"
cmp_out "split(none,a@1000) = the base with a's head (a acts on no token)" "$W/sp_na.txt" "$W/one_a_none.txt" 1e-6
$P --adapter a="$W/a" --adapter n="$W/a_none" --compose 'split(n,a@2)' < "$W/in.txt" > "$W/sp_na2.txt"
if ! cmp -s "$W/sp_na2.txt" "$W/one_a.txt" && ! cmp -s "$W/sp_na2.txt" "$W/one_a_none.txt"; then ok "split(none,a@2) differs from a and from none"; else bad "split(none,a@2) equals one of them"; fi

# --- mixed batch: each line names its adapter; bit for bit the adapter's own run
$PY - "$W" <<'PYEOF'
import random, sys
w = sys.argv[1]
lines = open(f"{w}/in.txt").read().splitlines()
names = "a b p q i".split()
random.seed(7)
pick = [random.choice(names) for _ in lines]
open(f"{w}/mixed_in.txt", "w").write("".join(f"{n}\t{l}\n" for n, l in zip(pick, lines)))
one = {n: open(f"{w}/one_{n}.txt").read().splitlines() for n in names}
open(f"{w}/mixed_ref.txt", "w").write("".join(one[n][k] + "\n" for k, n in enumerate(pick)))
PYEOF
$P --adapter a="$W/a" --adapter b="$W/b" --adapter p="$W/p" --adapter q="$W/q" --adapter i="$W/i" --adapter-col 0 \
    < "$W/mixed_in.txt" > "$W/mixed.txt" || bad "mixed run"
cmp_exact "mixed batch (--adapter-col 0, 5 adapters) = each adapter's own run" "$W/mixed.txt" "$W/mixed_ref.txt"

# --- AdapterDrop: --drop-layers N = the adapter without its deltas below N, and no compute there
L=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$T/config.json")
$P --adapter a="$W/a" --drop-layers 0 < "$W/in.txt" > "$W/drop0.txt"
cmp_exact "--drop-layers 0 = the adapter" "$W/drop0.txt" "$W/one_a.txt"
for x in a p; do
    for n in 1 $L; do
        $PY tests/ref_multi.py zero_layers "$W/$x" $n "$W/${x}_z$n"
        $P --adapter "$W/${x}_z$n" < "$W/in.txt" > "$W/ref_z.txt"
        $P --adapter $x="$W/$x" --drop-layers $n --adapter-stats < "$W/in.txt" > "$W/drop.txt" 2> "$W/stats.txt"
        cmp_out "$x --drop-layers $n = $x without its layers < $n" "$W/drop.txt" "$W/ref_z.txt" 1e-6
        counts=$(sed -n 's/^adapter rows per layer: //p' "$W/stats.txt")
        if $PY -c "import sys; c=[int(v) for v in sys.argv[2].split()]; n=int(sys.argv[1]); sys.exit(0 if len(c)>=n and all(v==0 for v in c[:n]) and all(v>0 for v in c[n:]) else 1)" $n "$counts"; then
            ok "$x --drop-layers $n: adapter rows per layer $counts (none below $n)"
        else bad "$x --drop-layers $n: adapter rows per layer '$counts'"; fi
    done
done
$P --adapter a="$W/a" --adapter p="$W/p" --compose 'parallel(a,p)' --drop-layers 1 < "$W/in.txt" > "$W/par_drop.txt"
$P --adapter "$W/p_z1" < "$W/in.txt" > "$W/ref_pz1.txt"
cmp_out "parallel(a,p) --drop-layers 1 output p = p without layer 0" "$W/par_drop.txt" "$W/ref_pz1.txt" 1e-6 3,4,5
$P --adapter "$W/a_z1" < "$W/in.txt" > "$W/ref_az1.txt"
cmp_out "parallel(a,p) --drop-layers 1 output a = a without layer 0" "$W/par_drop.txt" "$W/ref_az1.txt" 1e-6 0,1,2
PEFTC_NO_SHARED_DROP=1 $P --adapter a="$W/a" --adapter p="$W/p" --compose 'parallel(a,p)' --drop-layers 1 < "$W/in.txt" > "$W/par_drop_rep.txt"
cmp_out "parallel --drop-layers 1: layer 0 once for both outputs = replicated from the embeddings" "$W/par_drop.txt" "$W/par_drop_rep.txt" 1e-6
$P --adapter a="$W/a" --adapter p="$W/p" --compose 'parallel(a,p)' --drop-layers $L < "$W/in.txt" > "$W/par_dropL.txt"
$P --adapter "$W/p_z$L" < "$W/in.txt" > "$W/ref_pzL.txt"
cmp_out "parallel(a,p) --drop-layers $L (all) output p = p's head on the base" "$W/par_dropL.txt" "$W/ref_pzL.txt" 1e-6 3,4,5

# --- --adapterdrop-train: reproducible, and not the plain run
train pd1 --seed 3 --method adapter-pfeiffer --adapterdrop-train
train pd2 --seed 3 --method adapter-pfeiffer --adapterdrop-train
if cmp -s "$W/pd1/adapter_model.safetensors" "$W/pd2/adapter_model.safetensors"; then ok "--adapterdrop-train: the same seed gives the same adapter"; else bad "--adapterdrop-train not reproducible"; fi
if ! cmp -s "$W/pd1/adapter_model.safetensors" "$W/p/adapter_model.safetensors"; then ok "--adapterdrop-train trains another adapter than without it"; else bad "--adapterdrop-train changed nothing"; fi
$P --adapter pd="$W/pd1" --drop-layers 1 < "$W/in.txt" > "$W/pd_drop.txt" && [ "$(wc -l < "$W/pd_drop.txt")" -eq 64 ] && ok "an --adapterdrop-train adapter predicts with --drop-layers 1" || bad "pd --drop-layers 1"

# --- bad input: one line naming the problem, non-zero exit
expect_fail() {
    local name=$1 needle=$2; shift 2
    local rc lines
    "$@" < "${STDIN:-$W/in.txt}" > /dev/null 2> "$W/err"; rc=$?
    lines=$(grep -c '^peftc: ' "$W/err")
    if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then bad "$name: exit $rc"; return; fi
    if [ "$lines" -ne 1 ] || [ "$(wc -l < "$W/err")" -ne 1 ]; then bad "$name: stderr: $(cat "$W/err")"; return; fi
    if grep -qF -- "$needle" "$W/err"; then ok "$name: $(cat "$W/err")"; else bad "$name: lacks '$needle': $(cat "$W/err")"; fi
}
M="./peftc predict --model $T"
expect_fail "duplicate name" "given twice" $M --adapter a="$W/a" --adapter a="$W/p"
expect_fail "composition names an adapter not loaded" "no adapter named 'zz'" $M --adapter a="$W/a" --compose 'stack(a,zz)'
expect_fail "unknown block" "unknown block" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'mix(a,p)'
expect_fail "unclosed block" "unclosed" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'stack(a,p'
expect_fail "parallel not outermost" "outermost" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'stack(a,parallel(a,p))'
expect_fail "batchsplit inside split" "inside split" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'split(a,batchsplit(a:1,p:1)@2)'
expect_fail "too deep" "too deep" $M --adapter a="$W/a" --compose 'stack(stack(stack(stack(stack(stack(stack(stack(a))))))))'
expect_fail "average weights of the wrong count" "3 weights for 2 children" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'average(a,p,1,2,3)'
expect_fail "average weights summing to 0" "sum to 0" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'average(a,p,1,-1)'
expect_fail "batchsplit size 0" "positive integer" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'batchsplit(a:0,p:2)'
expect_fail "batchsplit not dividing the input" "not a multiple" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'batchsplit(a:5,p:2)'
expect_fail "split without @k" "split takes two children" $M --adapter a="$W/a" --adapter p="$W/p" --compose 'split(a,p)'
expect_fail "one-child parallel" "at least two children" $M --adapter a="$W/a" --compose 'parallel(a)'
expect_fail "drop count beyond the layers" "--drop-layers 9: the model has $L layers" $M --adapter a="$W/a" --drop-layers 9
expect_fail "--merge with several adapters" "--merge takes one adapter" $M --adapter a="$W/a" --adapter p="$W/p" --merge
train f --seed 1 --method bitfit --max-steps 1
expect_fail "a method that changes the base" "changes the base model" $M --adapter a="$W/a" --adapter f="$W/f"
cp -r "$W/p" "$W/other"
$PY -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['base_model_name_or_path']='/x/bert-base-uncased'; json.dump(c, open(p,'w'))" "$W/other/adapter_config.json"
expect_fail "adapters of different base models" "trained on base model 'bert-base-uncased'" $M --adapter a="$W/a" --adapter o="$W/other"
printf 'zz\tgood movie\n' > "$W/bad_route.txt"
STDIN=$W/bad_route.txt expect_fail "a line naming an adapter not loaded" "stdin line 1: no adapter named 'zz'" $M --adapter a="$W/a" --adapter-col 0
printf 'only-a-name\n' > "$W/bad_route2.txt"
STDIN=$W/bad_route2.txt expect_fail "a line without the adapter field" "stdin line 1: no field 1" $M --adapter a="$W/a" --adapter-col 1
expect_fail "--adapter-col with --compose" "exclude each other" $M --adapter a="$W/a" --adapter-col 0 --compose a
finish
