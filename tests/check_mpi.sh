#!/usr/bin/env bash
# check_mpi.sh: data-parallel `peftc train` under mpirun (OpenMPI) against the
# oracle of one process running the same global batches:
#   - every method on the tiny random BERT (dropout 0.1 on: the ranks draw
#     the single process's masks), 2 ranks, 4 steps with --grad-accum 2 and
#     an eval file: the checkpoint's parameters and AdamW moments within 1e-6,
#     eval accuracy and loss, and the final loss, equal;
#   - 3 ranks with --batch 2 (a rank's shard is empty every micro-batch) and
#     a short last micro-batch; --bucket;
#   - the causal-LM trainer on SmolLM2-135M (LoRA, 2 ranks, 2 steps);
#   - only rank 0 writes (one metrics.json, ranks and bytes recorded);
#   - resume with another rank count: 2 ranks stopped at step 3, resumed
#     with 1 and with 3 ranks, equal the uninterrupted single process;
#   - a rank killed with SIGKILL stops the whole job (non-zero exit, mpirun
#     names the rank) and the last checkpoint is intact: it loads and
#     resuming it in one process matches a single process run to that step;
#   - the causal LM's held-out loss sharded (step 0's, before any update,
#     bit-identical), and `peftc eval` of a causal LM refused under mpirun;
#   - --task token-cls, regression and multi-label trained on 2 ranks (batch
#     5: shards of unequal token counts) against one process, parameters
#     within 1e-6, eval metrics equal;
#   - evaluation sharded and gathered: the same weights (an adapter, one step
#     at lr 0) evaluated by `train --eval` on 1, 2 and 3 ranks, every eval_*
#     metric of seq-cls, token-cls, regression and multi-label bit-identical;
#     `peftc eval` on 1, 2 and 3 ranks prints the same line for all five
#     tasks (embedding included);
#   - mpirun --hostfile (localhost slots=2) against one process;
#   - the all-reduce overlapped with the backward bit-identical to the
#     blocking one (LoRA, an adapter, prefix, full; BERT and Llama; 2 and 3
#     ranks, empty shards);
#   - peftc built without MPI refuses to run as one of several ranks.
# Prints a SKIP line (and "## 0 0") only if OpenMPI is not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/lib.sh
PY=/usr/bin/python3
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
# fp32 kernels: where AVX-512-BF16 exists (Zen 4) the bf16 default is timed in
# each process (matmul_bf16.c), and on a loaded machine one rank or run can
# choose otherwise than another, putting the parameters ~2.5e-4 apart
export PEFTC_BF16=0
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    echo "SKIP - OpenMPI is not installed (apt-get install libopenmpi-dev openmpi-bin, or bash scripts/setup.sh)"
    finish
fi
# grep -c, not grep -q: under pipefail a grep that quits at the first match can
# SIGPIPE ldd, and the pipeline then fails although libmpi was found
if [ "$(ldd ./peftc 2>/dev/null | grep -c libmpi)" -eq 0 ]; then
    bad "./peftc is not linked with MPI although mpicc is installed (make MPI=1)"
    finish
fi
MPIRUN="mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca orte_base_help_aggregate 0"
O=$(mktemp -d /tmp/peftc_mpi.XXXXXX)
MPI_PID=
trap '[ -n "$MPI_PID" ] && kill -9 $MPI_PID 2>/dev/null; rm -rf "$O"' EXIT
"$PY" tests/make_tiny_bert.py "$O/tiny" >/dev/null || { bad "cannot build the tiny model"; finish; }
T=$O/tiny
P=./peftc

# compare RUN_A RUN_B WHAT: checkpoint tensors within 1e-6, metrics equal
compare() {
    "$PY" - "$1" "$2" "$3" <<'EOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
a, b, what = sys.argv[1:4]
A, B = load_file(f"{a}/checkpoint.safetensors"), load_file(f"{b}/checkpoint.safetensors")
# BERT's attention key bias adds q.b_k to every score of a query: softmax
# cancels it, so its gradient is 0 analytically and rounding noise in
# practice, which AdamW (m / sqrt(v)) turns into steps of up to lr whatever
# the noise's size: two summation orders give different noise, one process
# or several. It is held to lr * steps; every other parameter to 1e-6.
sa, sb = load_file(f"{a}/adapter_model.safetensors"), load_file(f"{b}/adapter_model.safetensors")
noise = [k for k in sa if k.endswith("attention.self.key.bias")]
worst, note = 0.0, ""
for k in A:
    if k not in B or A[k].shape != B[k].shape:
        print(f"FAIL - {what}: {k} missing or of another shape"); sys.exit()
    if k == "params" and noise:
        continue
    worst = max(worst, float(np.abs(A[k].astype(np.float64) - B[k]).max()))
if noise:   # the parameters by name, from the adapters
    for k in sa:
        d = float(np.abs(sa[k].astype(np.float64) - sb[k]).max())
        if k in noise:
            if d > 1e-3 * 4:   # bitfit's lr (full: 2e-5) x 4 steps
                print(f"FAIL - {what}: {k} differs by {d:.3g}, more than lr x steps"); sys.exit()
        else:
            worst = max(worst, d)
    note = f" ({len(noise)} key biases, of zero true gradient, within lr x steps)"
scale = float(np.abs(A["params"]).max())
msgs = []
ma, mb = json.load(open(f"{a}/metrics.json")), json.load(open(f"{b}/metrics.json"))
# every evaluation metric of the task (the parameters differ by rounding, so
# the metrics may too, by as little; same_eval below holds them to the bit
# where the weights are equal)
keys = [k for k in ma if k.startswith("eval_") and isinstance(ma[k], (int, float))] + ["final_train_loss", "train_steps"]
for k in keys:
    if k not in mb or abs(ma[k] - mb[k]) > 1e-5 * max(1, abs(ma[k])):
        msgs.append(f"{k} {ma[k]} vs {mb.get(k)}")
if worst > 1e-6 or msgs or scale == 0:
    print(f"FAIL - {what}: max |diff| {worst:.3g} (params up to {scale:.3g}) {'; '.join(msgs)}")
else:
    print(f"ok   - {what}: parameters and AdamW moments within {worst:.2g} (<= 1e-6){note}, metrics equal")
EOF
}

# same_eval RUN_A RUN_B WHAT: the evaluation metrics of two runs of the same
# weights bit-identical (metrics.json's reals are written with 17 digits: a
# round trip): every eval_* number
same_eval() {
    "$PY" - "$1" "$2" "$3" <<'EOF'
import json, math, sys
a, b, what = sys.argv[1:4]
ma, mb = json.load(open(f"{a}/metrics.json")), json.load(open(f"{b}/metrics.json"))
ka = sorted(k for k in ma if k.startswith("eval_") and isinstance(ma[k], (int, float)))
kb = sorted(k for k in mb if k.startswith("eval_") and isinstance(mb[k], (int, float)))
diff = [f"{k} {ma[k]!r} vs {mb.get(k)!r}" for k in ka if mb.get(k) != ma[k]]
if ka != kb: diff.append(f"keys {ka} vs {kb}")
shown = [k for k in ka if k not in ("eval_examples", "eval_words", "eval_words_cut", "eval_pairs")]
if not shown or not all(math.isfinite(ma[k]) for k in shown) or ma.get("eval_loss", 1) == 0:
    diff.append(f"no real metrics: {ma}")
if diff:
    print(f"FAIL - {what}: " + "; ".join(diff))
else:
    print(f"ok   - {what}: " + ", ".join(f"{k[5:]} {ma[k]:.9g}" for k in shown) + " bit-identical")
EOF
}

# 1. every method, 2 ranks vs 1 process
common="--model $T/model --train $T/train.tsv --eval $T/dev.tsv --max-steps 4 --batch 6 --grad-accum 2 --save-every 4 --seed 3"
for m in lora lora-dropout full bitfit adalora ia3 adapter-houlsby adapter-pfeiffer parallel-adapter scaled-parallel-adapter \
         mh-parallel-adapter prompt ptuning prefix ptuning-v2 mam unipelt; do
    extra="" m_=$m
    [ "$m" = lora-dropout ] && { m_=lora; extra="--lora-dropout 0.1"; }   # the deltas' dropout (QLoRA's)
    [ "$m" = adalora ] && extra="--tinit 1 --tfinal 1 --total-step 4"   # the rank allocator prunes within the 4 steps
    # prompt's default lr (0.3) moves the vectors ten times as far per step, and the
    # two reduction orders' rounding with them past 1e-6 absolute: its former 3e-2
    [ "$m" = prompt ] && extra="--lr 3e-2"
    if ! $P train $common --method $m_ $extra --out "$O/$m.1" >"$O/$m.1.log" 2>&1; then bad "$m, 1 process: $(tail -1 "$O/$m.1.log")"; continue; fi
    if ! $MPIRUN -np 2 $P train $common --method $m_ $extra --out "$O/$m.2" >"$O/$m.2.log" 2>&1; then bad "$m, 2 ranks: $(tail -2 "$O/$m.2.log")"; continue; fi
    tally "$(compare "$O/$m.1" "$O/$m.2" "$m, 2 ranks vs 1 process")"
done

# 2. empty shards (3 ranks, batch 2), a short last micro-batch (48 rows / 5), bucketing
$P train --model $T/model --train $T/train.tsv --method lora --max-steps 30 --batch 2 --save-every 30 --out "$O/e1" >"$O/e1.log" 2>&1 &&
$MPIRUN -np 3 $P train --model $T/model --train $T/train.tsv --method lora --max-steps 30 --batch 2 --save-every 30 --out "$O/e3" >"$O/e3.log" 2>&1 &&
    tally "$(compare "$O/e1" "$O/e3" "3 ranks, batch 2 (an empty shard in every micro-batch), past an epoch")" || bad "3 ranks batch 2: $(tail -2 "$O/e3.log")"
$P train --model $T/model --train $T/train.tsv --method lora --epochs 2 --batch 5 --bucket --save-every 20 --out "$O/s1" >"$O/s1.log" 2>&1 &&
$MPIRUN -np 2 $P train --model $T/model --train $T/train.tsv --method lora --epochs 2 --batch 5 --bucket --save-every 20 --out "$O/s2" >"$O/s2.log" 2>&1 &&
    tally "$(compare "$O/s1" "$O/s2" "2 ranks, batch 5 (short last micro-batch of 3 rows), --bucket, 2 epochs")" || bad "batch 5 bucket: $(tail -2 "$O/s2.log")"

# 3. only rank 0 writes; the log names the ranks and the bytes per step
n_metrics=$(find "$O/lora.2" -name metrics.json | wc -l)
bytes=$("$PY" -c "import json,sys; m=json.load(open('$O/lora.2/metrics.json')); print(m['ranks'], m['allreduce_bytes_per_step'])")
grep -q "2 ranks (.* bytes all-reduced per step)" "$O/lora.2.log" && [ "$n_metrics" = 1 ] && [ "$(grep -c '^step ' "$O/lora.2.log")" = "$(grep -c '^step ' "$O/lora.1.log")" ] &&
    [ "$(ls "$O/lora.2" | tr '\n' ' ')" = "$(ls "$O/lora.1" | tr '\n' ' ')" ] && [ "${bytes%% *}" = 2 ] && [ "${bytes##* }" -gt 0 ] &&
    ok "rank 0 alone reports and writes (same files as one process; metrics: ranks, bytes per step = ${bytes##* })" ||
    bad "rank 0 writes: metrics files $n_metrics, '$bytes', $(grep -c '^step ' "$O/lora.2.log") step lines"

# 4. resume with another rank count
r="--model $T/model --train $T/train.tsv --method lora --max-steps 8 --batch 6"
$P train $r --out "$O/r.full" --save-every 8 >"$O/r.log" 2>&1 || bad "uninterrupted run failed"
if $MPIRUN -np 2 $P train $r --save-every 100 --stop-after 3 --out "$O/r.stop" >"$O/r.stop.log" 2>&1; then
    for n in 1 3; do
        rm -rf "$O/r.$n"; cp -r "$O/r.stop" "$O/r.$n"
        if [ $n = 1 ]; then $P train $r --save-every 8 --resume "$O/r.$n" --out "$O/r.$n" >"$O/r.$n.log" 2>&1
        else $MPIRUN -np $n $P train $r --save-every 8 --resume "$O/r.$n" --out "$O/r.$n" >"$O/r.$n.log" 2>&1; fi ||
            { bad "resume with $n rank(s): $(tail -2 "$O/r.$n.log")"; continue; }
        tally "$(compare "$O/r.full" "$O/r.$n" "stopped at step 3 on 2 ranks, resumed on $n: equals one uninterrupted process")"
    done
else
    bad "2 ranks --stop-after 3: $(tail -2 "$O/r.stop.log")"
fi

# 5. a rank killed: the job stops, the last checkpoint is intact
k="--model $T/model --train $T/train.tsv --method lora --max-steps 400000 --batch 6 --save-every 1000"
$MPIRUN -np 2 $P train $k --out "$O/k" >"$O/k.log" 2>&1 &
MPI_PID=$!
for _ in $(seq 1 600); do [ -f "$O/k/checkpoint.safetensors" ] && break; sleep 0.1; done
victim=""
for pid in $(pgrep -f "peftc train .*$O/k\$"); do
    tr '\0' '\n' </proc/$pid/environ 2>/dev/null | grep -cx 'OMPI_COMM_WORLD_RANK=1' >/dev/null && victim=$pid
done
if [ -z "$victim" ] || [ ! -f "$O/k/checkpoint.safetensors" ]; then
    bad "kill test: no checkpoint or no rank 1 process found"
else
    kill -9 "$victim"
    stopped=0
    for _ in $(seq 1 300); do kill -0 $MPI_PID 2>/dev/null || { stopped=1; break; }; sleep 0.1; done
    wait $MPI_PID; rc=$?; MPI_PID=
    left=$(pgrep -f "peftc train .*$O/k\$" | wc -l)
    if [ $stopped = 1 ] && [ $rc -ne 0 ] && [ "$left" = 0 ] && grep -q "rank 1 .*exited on signal 9" "$O/k.log"; then
        ok "rank 1 SIGKILLed: the job stopped (exit $rc): $(grep -o 'process rank 1 .*signal 9[^.]*' "$O/k.log" | head -1)"
    else
        bad "rank 1 killed: stopped=$stopped exit=$rc processes left=$left; $(tail -3 "$O/k.log")"
    fi
    step=$("$PY" -c "
from safetensors import safe_open
with safe_open('$O/k/checkpoint.safetensors', 'np') as f: print(f.metadata()['step'])" 2>/dev/null)
    if [ -n "$step" ] && [ $((step % 1000)) = 0 ]; then
        stop=$((step + 5))
        $P train $k --resume "$O/k" --out "$O/k" --stop-after $stop >"$O/k.r.log" 2>&1 &&
        $P train $k --out "$O/k.ref" --stop-after $stop >"$O/k.ref.log" 2>&1 &&
            tally "$(compare "$O/k.ref" "$O/k" "the killed job's checkpoint (step $step) is intact: resumed in 1 process to step $stop, equals one process")" ||
            bad "resuming the killed job's checkpoint: $(tail -2 "$O/k.r.log")"
    else
        bad "the killed job's checkpoint does not load (step '$step')"
    fi
fi

# 6. the causal-LM trainer (SmolLM2-135M, LoRA on q,v), 2 ranks vs 1 process
S=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$S" ]; then
    "$PY" -c "
import json; d = sorted(json.load(open('../shared/data/alpaca-5k/alpaca_data.json'))[:200], key=lambda r: len(r['instruction']) + len(r['input']) + len(r['output']))[:12]
json.dump(d, open('$O/alpaca12.json', 'w'))"
    "$PY" -c "
import json; d = sorted(json.load(open('../shared/data/alpaca-5k/alpaca_data.json'))[200:400], key=lambda r: len(r['instruction']) + len(r['input']) + len(r['output']))[:8]
json.dump(d, open('$O/alpaca_ev8.json', 'w'))"
    # the held-out loss (8 rows in batches of 3: rank 0 runs two, rank 1 one)
    # at step 0, before any update, is the single process's to the bit
    l="--model $S --train $O/alpaca12.json --eval $O/alpaca_ev8.json --method lora --max-steps 2 --batch 3 --grad-accum 2 --max-len 64 --save-every 2"
    if $P train $l --out "$O/lm.1" >"$O/lm.1.log" 2>&1 && $MPIRUN -np 2 $P train $l --out "$O/lm.2" >"$O/lm.2.log" 2>&1; then
        tally "$(compare "$O/lm.1" "$O/lm.2" "causal LM (SmolLM2-135M, alpaca), 2 ranks vs 1 process")"
        tally "$("$PY" - "$O/lm.1" "$O/lm.2" <<'EOF'
import json, math, sys
a, b = (json.load(open(f"{d}/metrics.json"))["eval"] for d in sys.argv[1:3])
if len(a) != 2 or len(b) != 2 or a[0]["step"] != 0 or a[0] != b[0] or not math.isfinite(a[0]["loss"]) or abs(a[1]["loss"] - b[1]["loss"]) > 1e-5 * a[1]["loss"]:
    print(f"FAIL - causal LM held-out loss, 2 ranks vs 1 process: {a} vs {b}")
else:
    print(f"ok   - causal LM held-out loss sharded over 2 ranks: step 0 {a[0]['loss']!r} bit-identical, step 2 {b[1]['loss']:.9g} vs {a[1]['loss']:.9g}")
EOF
)"
    else
        bad "causal LM: $(tail -2 "$O/lm.2.log")"
    fi
    if msg=$($MPIRUN -np 2 $P eval --model $S --data $O/alpaca_ev8.json 2>&1); then bad "peftc eval of a causal LM ran under mpirun"
    elif printf '%s' "$msg" | grep -q "not under mpirun"; then ok "peftc eval of a causal LM under mpirun is refused: $(printf '%s\n' "$msg" | grep -m1 'not under mpirun' | cut -c1-110)"
    else bad "peftc eval of a causal LM under mpirun: $(printf '%s\n' "$msg" | head -2)"; fi
else
    bad "$S missing (bash scripts/fetch_models.sh)"
fi

# 7. the other tasks (tests/make_mpi_tasks.py: the tiny model's words, dropout
#    on, held-out sets of 80 rows), 2 ranks vs 1 process, --batch 5 (shards of
#    2 and 3 rows, so of different token counts: the token-cls loss is a mean
#    over the whole micro-batch's labelled tokens)
MT=$O/mt
if "$PY" tests/make_mpi_tasks.py "$MT"; then
    for spec in token-cls:tok_train.conll:tok_dev.conll regression:reg_train.tsv:reg_dev.tsv multi-label:ml_train.tsv:ml_dev.tsv; do
        IFS=: read -r task trf dvf <<<"$spec"
        a="--model $T/model --task $task --train $MT/$trf --eval $MT/$dvf --method lora --max-steps 4 --batch 5 --grad-accum 2 --save-every 4 --seed 3"
        if ! $P train $a --out "$O/$task.1" >"$O/$task.1.log" 2>&1; then bad "--task $task, 1 process: $(tail -1 "$O/$task.1.log")"; continue; fi
        if ! $MPIRUN -np 2 $P train $a --out "$O/$task.2" >"$O/$task.2.log" 2>&1; then bad "--task $task, 2 ranks: $(tail -2 "$O/$task.2.log")"; continue; fi
        tally "$(compare "$O/$task.1" "$O/$task.2" "--task $task (lora, dropout 0.1, batch 5 x 2), 2 ranks vs 1 process, eval sharded")"
    done
    # the evaluation to the bit: the same weights (a trained adapter, then one
    # step at lr 0: --warmup-ratio 1 makes step 0's rate 0, and AdamW leaves
    # every value as it is), evaluated in batches of 6 by 1, 2 and 3 ranks
    for spec in seq-cls:lora:../tiny/train.tsv:cls_dev.tsv token-cls:token-cls:tok_train.conll:tok_dev.conll \
                regression:regression:reg_train.tsv:reg_dev.tsv multi-label:multi-label:ml_train.tsv:ml_dev.tsv; do
        IFS=: read -r task init trf dvf <<<"$spec"
        [ -f "$O/$init.1/adapter_model.safetensors" ] || { bad "--task $task: no trained adapter to evaluate"; continue; }
        e="--model $T/model --task $task --train $MT/$trf --eval $MT/$dvf --method lora --init-adapter $O/$init.1 --max-steps 1 --warmup-ratio 1 --batch 6 --seed 3"
        $P train $e --out "$O/ev.$task.1" >"$O/ev.$task.1.log" 2>&1 || { bad "--task $task eval run, 1 process: $(tail -1 "$O/ev.$task.1.log")"; continue; }
        for n in 2 3; do
            $MPIRUN -np $n $P train $e --out "$O/ev.$task.$n" >"$O/ev.$task.$n.log" 2>&1 &&
                tally "$(same_eval "$O/ev.$task.1" "$O/ev.$task.$n" "--task $task train --eval of the same weights, $n ranks vs 1 process")" ||
                bad "--task $task eval run, $n ranks: $(tail -2 "$O/ev.$task.$n.log")"
        done
    done
    # `peftc eval` under mpirun (batches of 32: 3 of them for 80 rows), every
    # task, embedding included (trained in one process: its in-batch negatives)
    $P train --model $T/model --task embedding --train $MT/sts_train.tsv --method lora --max-steps 4 --batch 6 --out "$O/embedding.1" >"$O/emb.log" 2>&1 ||
        bad "--task embedding, 1 process: $(tail -1 "$O/emb.log")"
    for spec in lora:cls_dev.tsv token-cls:tok_dev.conll regression:reg_dev.tsv multi-label:ml_dev.tsv embedding:sts_dev.tsv; do
        IFS=: read -r run dvf <<<"$spec"
        one=$($P eval --model $T/model --adapter "$O/$run.1" --data "$MT/$dvf" 2>&1) || { bad "peftc eval $run, 1 process: $one"; continue; }
        for n in 2 3; do
            many=$($MPIRUN -np $n $P eval --model $T/model --adapter "$O/$run.1" --data "$MT/$dvf" 2>&1)
            if [ $? -eq 0 ] && [ "$many" = "$one" ] && [ "$(printf '%s\n' "$one" | grep -c '^{"')" = 1 ]; then
                ok "peftc eval under mpirun -np $n ($run adapter, $dvf): rank 0 prints the one process's line: $(printf '%s' "$one" | cut -c1-110)"
            else
                bad "peftc eval under mpirun -np $n ($run adapter): '$many' vs 1 process '$one'"
            fi
        done
    done
else
    bad "cannot write the task data sets (tests/make_mpi_tasks.py)"
fi

# 8. a hostfile (one line per machine, "host slots=N"): this one machine, 2 slots
printf 'localhost slots=2\n' >"$O/hosts"
$MPIRUN --hostfile "$O/hosts" -np 2 $P train $common --method lora --out "$O/hostfile" >"$O/hostfile.log" 2>&1 &&
    grep -q "2 ranks (" "$O/hostfile.log" &&
    tally "$(compare "$O/lora.1" "$O/hostfile" "mpirun --hostfile (localhost slots=2) -np 2 vs 1 process")" ||
    bad "mpirun --hostfile: $(tail -2 "$O/hostfile.log")"

# 10. the all-reduce overlapped with the backward (--dp-overlap on; buckets
#     of one layer each: --dp-bucket-mb 0.001) against one blocking sum after
#     it (--dp-overlap off): the checkpoint's parameters and AdamW moments
#     bit-identical (every element is summed once over the same ranks,
#     whichever bucket holds it), and the buckets were started from inside
#     the backward (metrics.json allreduce_overlapped_bytes_per_step > 0;
#     none for prefix tuning, whose tensors span every layer and are final
#     only after the backward); LoRA, an adapter, prefix tuning, MAM (prefix
#     + parallel adapter) and full fine-tuning on both families
#     (the tiny BERT; a tiny random Llama with SmolLM2's tokenizer), 2 ranks
#     with --grad-accum 2 (only the last micro-batch's backward starts sums),
#     3 ranks, and 3 ranks at --batch 2 (rank 0's shard is always empty: it
#     starts its buckets after its micro-batches, its peers from the backward;
#     rank 0 reports, so none are counted)
same_bits() {
    "$PY" - "$1" "$2" "$3" "$4" <<'EOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
on, off, what, expect = sys.argv[1:5]
A, B = load_file(f"{on}/checkpoint.safetensors"), load_file(f"{off}/checkpoint.safetensors")
mo, mf = json.load(open(f"{on}/metrics.json")), json.load(open(f"{off}/metrics.json"))
bad = [k for k in A if k not in B or A[k].shape != B[k].shape or A[k].tobytes() != B[k].tobytes()]
early = mo.get("allreduce_overlapped_bytes_per_step", 0)
if bad or sorted(A) != sorted(B) or float(np.abs(A["params"]).max()) == 0:
    print(f"FAIL - {what}: {bad} differ (max |diff| {max(float(np.abs(A[k].astype(np.float64) - B[k]).max()) for k in bad) if bad else 0:.3g})")
elif mo.get("allreduce_overlap") != 1 or (early > 0) != (expect == "some") or mf.get("allreduce_overlap") != 0:
    print(f"FAIL - {what}: overlap {mo.get('allreduce_overlap')}, {early} bytes started in the backward; off: {mf.get('allreduce_overlap')}")
else:
    print(f"ok   - {what}: parameters and AdamW moments bit-identical, {early / mo['allreduce_bytes_per_step']:.0%} of "
          f"{mo['allreduce_bytes_per_step']} bytes started inside the backward in {mo['allreduce_ranges']} sums")
EOF
}
# ab NAME RANKS some|none ARGS...: the run with the overlap on and off (some:
# the backward starts sums)
ab() {
    local name=$1 n=$2 expect=$3; shift 3
    $MPIRUN -np $n $P train "$@" --dp-overlap on --dp-bucket-mb 0.001 --out "$O/ov.$name.on" >"$O/ov.$name.on.log" 2>&1 ||
        { bad "$name, overlap on: $(tail -2 "$O/ov.$name.on.log")"; return; }
    $MPIRUN -np $n $P train "$@" --dp-overlap off --out "$O/ov.$name.off" >"$O/ov.$name.off.log" 2>&1 ||
        { bad "$name, overlap off: $(tail -2 "$O/ov.$name.off.log")"; return; }
    tally "$(same_bits "$O/ov.$name.on" "$O/ov.$name.off" "$name, $n ranks: the all-reduce overlapped with the backward vs after it" $expect)"
}
for m in lora adapter-houlsby prefix mam full; do
    ab "bert $m" 2 "$([ $m = prefix ] && echo none || echo some)" $common --method $m
done
ab "bert full" 3 some $common --method full
ab "bert lora, batch 2" 3 none --model $T/model --train $T/train.tsv --method lora --max-steps 6 --batch 2 --save-every 6
if [ -f "$S" ] && [ -f "$O/alpaca12.json" ] &&
   "$PY" tests/ref_bpe.py hfjson "$S" "$O/tok" 2>"$O/tok.err" && "$PY" tests/ref_lm_eval.py make "$O/tok" "$O/tl" 2>"$O/tl.err"; then
    for m in lora adapter-houlsby prefix mam full; do
        ab "llama $m" 2 "$([ $m = prefix ] && echo none || echo some)" --model "$O/tl" --train "$O/alpaca12.json" --method $m --max-steps 2 --batch 3 --grad-accum 2 --max-len 64 --save-every 2
    done
else
    bad "no tiny Llama for the overlap checks: $(tail -1 "$O/tok.err" "$O/tl.err" 2>/dev/null)"
fi

# 9. built without MPI (the CLI as `make MPI=0` links it): no libmpi, and it
#    refuses to be one of several ranks rather than train alone
mkvar() { make -s --no-print-directory MPI=0 --eval='print-%: ; @echo $($*)' "print-$1"; }
if $(mkvar CC) $(mkvar CFLAGS) -o "$O/peftc.nompi" src/cli/*.c build/libpeftc.a $(mkvar LDLIBS) $(mkvar MPI_LIBS) 2>"$O/nompi.err"; then
    if [ "$(ldd "$O/peftc.nompi" | grep -c libmpi)" -ne 0 ]; then bad "the MPI=0 build still links MPI"
    elif msg=$($MPIRUN -np 2 "$O/peftc.nompi" train $common --method lora --out "$O/nompi" 2>&1); then bad "a peftc without MPI ran as 2 ranks"
    else
        printf '%s' "$msg" | grep -q "built without MPI" && ok "MPI=0 build: no libmpi; under mpirun it refuses: $(printf '%s\n' "$msg" | grep -m1 'built without' | cut -c1-120)" ||
            bad "MPI=0 under mpirun: $(printf '%s\n' "$msg" | head -2)"
        "$O/peftc.nompi" train $common --method lora --out "$O/nompi1" >/dev/null 2>&1 && tally "$(compare "$O/lora.1" "$O/nompi1" "MPI=0 build, one process: the same run")" ||
            bad "the MPI=0 build does not train"
    fi
else
    bad "the CLI does not build with MPI=0: $(head -3 "$O/nompi.err")"
fi
finish
