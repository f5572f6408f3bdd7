/* main.c: the peftc command-line tool: dispatch and the usage text. */
#include "cli/cli.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: peftc COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  tokenize --model DIR [--max-len N] [--pairs]\n"
    "      stdin lines -> WordPiece token ids, space-separated, one line each\n"
    "      (--pairs: a TAB separates a sentence pair)\n"
    "  embed --model DIR [--adapter RUN_DIR] [--pool mean|cls] [--normalize] [--batch N] [--max-len N] [--pairs]\n"
    "      stdin lines -> one line of space-separated floats each; --adapter: a --task embedding\n"
    "      adapter (FEATURE_EXTRACTION) applied, its mean pooling (virtual tokens left out) and max_len\n"
    "  cpu\n"
    "      the kernel tier, AVX-512-BF16 and AMX, the bf16 kernel's measured speed against\n"
    "      sgemm on one thread, and whether frozen weights are multiplied in bf16 by default here\n"
    "  inspect FILE_OR_DIR\n"
    "      architecture, config and every tensor (name, dtype, shape) of a model\n"
    "      directory or a .safetensors file\n"
    "\n"
    "  methods\n"
    "      the method presets, what each expands to, and its parameter count\n"
    "  train --model DIR --train FILE [--eval FILE] --method NAME --out RUN_DIR\n"
    "        [--r R] [--alpha A] [--lora-dropout P] [--rslora] [--target-modules query,value]\n"
    "        [--site ffn|attn] [--scale S] [--learned-scale] [--delta SPEC]...\n"
    "        [--num-virtual N] [--template 'P P {text} P {pair}'] [--encoder mlp|lstm|none] [--encoder-hidden H]\n"
    "        [--prefix-len N] [--prefix-projection | --no-prefix-projection]\n"
    "        [--init-r R] [--target-r R] [--tinit N] [--tfinal N] [--delta-t N] [--beta1 B] [--beta2 B]\n"
    "        [--orth-reg-weight W] [--total-step N]   (adalora)\n"
    "        [--epochs N] [--max-steps N] [--batch B] [--grad-accum K] [--lr LR] [--seed S]\n"
    "        [--max-len T] [--weight-decay W] [--warmup-ratio R] [--schedule linear|cosine|constant]\n"
    "        [--clip C] [--bucket] [--save-every N] [--eval-every N] [--resume RUN_DIR]\n"
    "        [--init-adapter DIR] [--stop-after N] [--quantize nf4|none] [--skip-nonfinite]\n"
    "        [--gradient-checkpointing]\n"
    "        [--text-col C] [--text-pair-col C] [--label-col C] [--dp-overlap on|off|auto] [--dp-bucket-mb MB]\n"
    "        [--task seq-cls|token-cls|regression|multi-label|embedding] [--min-score S]\n"
    "      fine-tunes a sequence classifier; writes RUN_DIR/adapter_config.json,\n"
    "      adapter_model.safetensors and metrics.json\n"
    "      --task embedding: sentence embeddings (mean pooling) from (anchor, positive) pairs with\n"
    "      sentence-transformers' MultipleNegativesRankingLoss (cosine x 20, the batch's other\n"
    "      positives as negatives); the anchor is --text-col, the positive --text-pair-col (a TSV/CSV\n"
    "      header sentence1/sentence2 etc. is recognised; JSONL fields likewise); --min-score S keeps\n"
    "      the pairs whose --label-col is >= S. STS-B: --train glue-stsb/train.tsv --min-score 4.0\n"
    "      (sentence1, sentence2, score recognised); --eval FILE with scored pairs reports the\n"
    "      Pearson / Spearman of the pairs' cosine similarities; the adapter's task_type is\n"
    "      FEATURE_EXTRACTION (peftc embed --adapter RUN_DIR; peftc eval --adapter RUN_DIR --data FILE)\n"
    "  fuse --model DIR --adapters a=DIR,b=DIR,... --train FILE [--eval FILE] --out RUN_DIR [--temperature]\n"
    "        [the optimisation and data options of train]\n"
    "      AdapterFusion (stage 2): the base and the bottleneck adapters frozen, a fusion module per\n"
    "      layer (query/key/value over the adapters' ffn.out outputs, W_V = I, 0.01 ||I - W_V||^2)\n"
    "      and the task's head train; the run holds the adapters (adapters/NAME, with checksums);\n"
    "      eval/predict --adapter RUN_DIR use it, inspect RUN_DIR --model DIR --data FILE prints\n"
    "      the average fusion weight per layer and adapter\n"
    "  eval --model DIR --adapter RUN_DIR --data FILE [--merge]\n"
    "      prints {accuracy, loss[, f1, mcc]} as JSON (an embedding adapter: the pairs' cosine\n"
    "      similarities' Pearson / Spearman against the label column)\n"
    "  eval --task causal-lm --model FILE.gguf|DIR [--adapter DIR]... [--merge] --data FILE.jsonl\n"
    "        [--format F] [--prompt-template T] [--prompt-field F] [--response-field F] [--max-len N]\n"
    "        [--loss-on all] [--metric em-number,rouge,bleu [--pred-out FILE] [--limit N]\n"
    "        [the decoding options of generate]]\n"
    "      mean token loss and perplexity over the target tokens as JSON; --metric also generates\n"
    "      for every record and scores the predictions against the response field\n"
    "  score --metric em-number|rouge|bleu[,...] --pred FILE [--ref FILE] [--pred-field F]\n"
    "        [--ref-field F] [--per-example FILE]\n"
    "      GSM8K final-number exact match, ROUGE-1/2/L F (rouge-score, stemmed), corpus BLEU\n"
    "      (sacreBLEU 13a); JSONL or plain-text lines; without --ref the predictions' \"reference\"\n"
    "  predict --model DIR --adapter RUN_DIR [--probs] [--merge]\n"
    "      stdin lines (a TAB separates a sentence pair) -> one predicted label each\n"
    "  predict --model DIR --adapter NAME=DIR [--adapter NAME=DIR]... [--compose SPEC]\n"
    "        [--adapter-col C] [--drop-layers N] [--probs] [--hex] [--adapter-stats]\n"
    "      several adapters on one base: stack(a,b) average(a,b[,w..]) batchsplit(a:n,b:m)\n"
    "      split(a,b@k) parallel(a,b) (one output each); --adapter-col: each line names its adapter\n"
    "  merge-adapters --adapter [NAME=]DIR --adapter [NAME=]DIR... --out DIR [--weights W1,W2,..]\n"
    "        [--combination linear|cat|svd|ties|dare_linear|dare_ties|magnitude_prune|*_svd]\n"
    "        [--density D] [--svd-rank R] [--majority-sign total|frequency] [--seed S] [--head NAME]\n"
    "      LoRA adapters combined into one, as PEFT's add_weighted_adapter\n"
    "  merge --model DIR|FILE.gguf --adapter DIR|FILE.gguf --out DIR|FILE.gguf [--type f32|f16|bf16|q8_0|q4_1]\n"
    "      the base with a LoRA / (IA)^3 adapter folded in, as a plain model: an HF directory that\n"
    "      transformers loads (BertFor*Classification with the adapter's head; LlamaForCausalLM) or,\n"
    "      for a GGUF base, a GGUF file for llama.cpp (merged weights f32 unless --type)\n"
    "  sweep --model DIR --train FILE [--eval FILE] --methods M1,M2,... --out SWEEP_DIR\n"
    "        [--budgets 0.1%,0.5%,2%] [--seeds 1,2,3] [--steps N] [--batch B] [--max-len T]\n"
    "        [--lr-grid 1|3|5 | --lr auto [--lr-auto-steps N]] [--metric accuracy|f1|mcc] [--save-every N] [--sweep FILE.json]\n"
    "        [--retry-failed] [--format html|md]\n"
    "      every method at every budget (the size whose trainable % is nearest) and seed, each run\n"
    "      in its own process; resumable; writes SWEEP_DIR/<method>-<budget>-s<seed>/ and report.html\n"
    "  report SWEEP_DIR [--format html|md] [--out FILE]\n"
    "      regenerates the sweep's report (self-contained HTML with SVG charts, or a Markdown table)\n"
    "  quantize --model DIR --out DIR [--type nf4]\n"
    "      the base with its linear weights in NF4 (QLoRA; bitsandbytes' bytes, double quantised),\n"
    "      loaded by later runs as it is (--method qlora / --quantize nf4 quantise at load otherwise)\n"
    "\n"
    "  generate --model FILE.gguf|DIR (--prompt TEXT | --prompt-file FILE) [--chat [--system TEXT]]\n"
    "        [--adapter DIR[:SCALE]]... [--merge] [--max-new-tokens N] [--temp T] [--top-k K]\n"
    "        [--top-p P] [--min-p P] [--repeat-penalty R] [--repeat-last-n N] [--seed S]\n"
    "        [--stop STR]... [--ctx N] [--batch N] [--no-bos] [--timings] [--quantize nf4|none]\n"
    "      a decoder's continuation of the prompt, streamed to stdout (greedy unless --temp > 0);\n"
    "      --chat wraps the prompt in the model's chat template\n"
    "  chat --model FILE.gguf|DIR [--system TEXT] [the sampling and adapter options of generate]\n"
    "      an interactive conversation: one user turn per stdin line, an empty line quits\n"
    "  export --format gguf --adapter DIR|FILE.gguf --model BASE.gguf --out FILE.gguf\n"
    "      a decoder's LoRA or AdaLoRA adapter as llama.cpp's GGUF LoRA (llama-cli --lora FILE.gguf)\n"
    "  export --format adapterhub --adapter RUN_DIR --model DIR --out DIR [--name NAME]\n"
    "      a bottleneck adapter (pfeiffer, houlsby-form, parallel, scaled) and its head as AdapterHub's\n"
    "      save_adapter directory (adapters: model.load_adapter(DIR)); eval/predict read such directories\n"    "\n"
    "global options: --threads N (default: all cores)\n"
    "  --bf16   frozen weights in bf16 (the default where it is faster: AMX, or AVX-512-BF16 measured\n"
    "           >= 1.3x sgemm, as on AMD Zen 4; see peftc cpu)\n"
    "  --fp32   frozen weights in fp32 (the default elsewhere)\n";

/* OpenMP threads (ours and OpenBLAS's) spin-wait ~300k iterations between
 * parallel regions by default; when another process holds a core that
 * starves the thread doing the work (3x slower steps measured on 2 cores).
 * A short spin keeps the idle-machine speed. libgomp reads the setting when
 * it loads, before main, so the process restarts itself once with it set. */
static void short_spin_wait(char **argv)
{
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return;
    self[n] = 0;
    setenv("GOMP_SPINCOUNT", "10000", 1);
    execv(self, argv);
    /* if that failed, run on with the default */
}

/* The usage entries of one command (an entry: a line "  NAME ..." and the
 * more deeply indented lines after it; a command may have several forms).
 * 0 if it has none. */
static int command_help(const char *cmd, FILE *out)
{
    size_t cl = strlen(cmd);
    int found = 0, in = 0;
    for (const char *l = usage; *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        int entry = n > 2 && l[0] == ' ' && l[1] == ' ' && l[2] != ' ';
        if (entry) in = n >= 2 + cl && !strncmp(l + 2, cmd, cl) && (n == 2 + cl || l[2 + cl] == ' ');
        else if (n < 4 || strncmp(l, "    ", 4)) in = 0;
        if (in) { fwrite(l, 1, n, out); fputc('\n', out); found = 1; }
        l += n + (e != NULL);
    }
    return found;
}

static int is_help(const char *s) { return !strcmp(s, "help") || !strcmp(s, "--help") || !strcmp(s, "-h"); }

int main(int argc, char **argv)
{
    short_spin_wait(argv);
    /* peftc help CMD, peftc CMD --help */
    if (argc >= 3 && (is_help(argv[1]) || is_help(argv[2]))) {
        const char *cmd = is_help(argv[1]) ? argv[2] : argv[1];
        if (command_help(cmd, stdout)) return 0;
        return cli_errorf(2, "unknown command '%s' (try: peftc help)", cmd);
    }
    if (argc < 2 || is_help(argv[1])) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 2; i < argc; i++)   /* peftc COMMAND ... --help: that command's usage (or all of it) */
        if (!strcmp(argv[i], "--help")) {
            if (!command_help(argv[1], stdout)) fputs(usage, stdout);
            return 0;
        }
    cli_args a = {argc - 2, argv + 2, calloc((size_t)argc, 1)};
    if (!a.used) return cli_errorf(1, "out of memory");
    int ok = 1;
    int threads = cli_opt_int(&a, "--threads", 0, 1, 1024, &ok);
    if (!ok) { free(a.used); return 2; }
    if (threads > 0) omp_set_num_threads(threads);
    int want_bf16 = cli_flag(&a, "--bf16"), want_fp32 = cli_flag(&a, "--fp32");
    if (want_bf16 && want_fp32) {
        free(a.used);
        return cli_errorf(2, "--bf16 and --fp32 exclude each other");
    }
    if (want_fp32) peftc_set_bf16(0);
    if (want_bf16 && !peftc_set_bf16(1)) {
        free(a.used);
        return cli_errorf(1, "--bf16: this CPU lacks AVX-512-BF16 (avx512bf16); run without --bf16");
    }

    const char *cmd = argv[1];
    int rc;
    if (!strcmp(cmd, "tokenize")) rc = cmd_tokenize(&a);
    else if (!strcmp(cmd, "embed")) rc = cmd_embed(&a);
    else if (!strcmp(cmd, "inspect")) rc = cmd_inspect(&a);
    else if (!strcmp(cmd, "cpu")) rc = cmd_cpu(&a, want_bf16 || want_fp32);
    else if (!strcmp(cmd, "train")) rc = cmd_train(&a);
    else if (!strcmp(cmd, "fuse")) rc = cmd_fuse(&a);
    else if (!strcmp(cmd, "eval")) rc = cmd_eval(&a);
    else if (!strcmp(cmd, "predict")) rc = cmd_predict(&a);
    else if (!strcmp(cmd, "methods")) rc = cmd_methods(&a);
    else if (!strcmp(cmd, "generate")) rc = cmd_generate(&a);
    else if (!strcmp(cmd, "chat")) rc = cmd_chat(&a);
    else if (!strcmp(cmd, "export")) rc = cmd_export(&a);
    else if (!strcmp(cmd, "sweep")) rc = cmd_sweep(&a);
    else if (!strcmp(cmd, "report")) rc = cmd_report(&a);
    else if (!strcmp(cmd, "quantize")) rc = cmd_quantize(&a);
    else if (!strcmp(cmd, "score")) rc = cmd_score(&a);
    else if (!strcmp(cmd, "merge-adapters")) rc = cmd_merge_adapters(&a);
    else if (!strcmp(cmd, "merge")) rc = cmd_merge(&a);
    else rc = cli_errorf(2, "unknown command '%s' (try: peftc help)", cmd);
    free(a.used);
    return rc;
}
