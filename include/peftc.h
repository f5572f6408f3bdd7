/* peftc.h: the one public header of libpeftc.
 *
 * Conventions (sqlite / llama.cpp style):
 *   - every fallible function returns a peftc_status and, on failure, fills the
 *     caller's peftc_error with one line naming the file or option and the problem;
 *   - objects come back through out-parameters; each _load/_init has a _free;
 *   - the library never prints and never exits.
 */
#ifndef PEFTC_H
#define PEFTC_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */
typedef enum peftc_status {
    PEFTC_OK = 0,
    PEFTC_ERR_IO,          /* a file could not be opened, read or written */
    PEFTC_ERR_FORMAT,      /* a file is malformed: bad header, length or offset */
    PEFTC_ERR_UNSUPPORTED, /* well-formed, but not something peftc can run */
    PEFTC_ERR_INPUT,       /* user input (text, option, data row) is invalid */
    PEFTC_ERR_NOMEM,       /* an allocation failed */
    PEFTC_ERR_NUMERIC      /* a non-finite value appeared (loss, gradient) */
} peftc_status;

typedef struct peftc_error {
    peftc_status code;
    char msg[512];
} peftc_error;

const char *peftc_status_name(peftc_status s);

/* ------------------------------------------------------- safetensors view */
/* Read-only view of a .safetensors file (memory-mapped; every header length,
 * offset and shape is checked against the file size when opened). */
typedef struct peftc_safetensors peftc_safetensors;

typedef struct peftc_tensor_info {
    const char *name;
    const char *dtype;     /* "F32", "F16", "BF16", "I64", ... as in the file */
    int ndim;
    int64_t shape[8];
    size_t nbytes;
} peftc_tensor_info;

peftc_status peftc_safetensors_open(const char *path, peftc_safetensors **out, peftc_error *err);
int peftc_safetensors_count(const peftc_safetensors *st);
void peftc_safetensors_info(const peftc_safetensors *st, int i, peftc_tensor_info *info);
void peftc_safetensors_free(peftc_safetensors *st);

/* ------------------------------------------------------------ tokenizer */
typedef struct peftc_tokenizer peftc_tokenizer;

/* Loads vocab.txt (or tokenizer.json's WordPiece vocabulary) and the
 * normalisation options (tokenizer_config.json / tokenizer.json) from a model
 * directory. */
peftc_status peftc_tokenizer_load(const char *model_dir, peftc_tokenizer **out, peftc_error *err);
void peftc_tokenizer_free(peftc_tokenizer *tok);
int peftc_tokenizer_vocab_size(const peftc_tokenizer *tok);
/* The id of a vocabulary token, or -1. */
int32_t peftc_tokenizer_token_id(const peftc_tokenizer *tok, const char *token);
/* The text of a vocabulary id, or NULL. */
const char *peftc_tokenizer_token_text(const peftc_tokenizer *tok, int32_t id);

/* Encodes one text (pair may be NULL) as [CLS] a [SEP] (b [SEP]), truncated
 * longest-first so that the whole fits in max_len tokens (max_len >= 3 for a
 * single text, >= 4 for a pair). ids and type_ids must hold max_len entries
 * (type_ids may be NULL). Invalid UTF-8 is PEFTC_ERR_INPUT. */
peftc_status peftc_tokenizer_encode(const peftc_tokenizer *tok,
                                    const char *text, size_t text_len,
                                    const char *pair, size_t pair_len,
                                    int max_len, int32_t *ids, int32_t *type_ids,
                                    int *n_out, peftc_error *err);

/* --------------------------------------------------------------- models */
typedef enum peftc_arch {
    PEFTC_ARCH_BERT = 1,   /* encoder (model_type "bert") */
    PEFTC_ARCH_LLAMA = 2   /* decoder (model_type "llama", GGUF "llama") */
} peftc_arch;

/* How the loader stores the base's linear weights (not read from config.json:
 * peftc_model_load_quantized sets it). NF4: QLoRA's 4-bit NormalFloat with
 * double quantisation, exactly as bitsandbytes (about 0.516 bytes per
 * parameter); embeddings, norms and biases stay as they are. */
typedef enum peftc_base_quant { PEFTC_QUANT_NONE = 0, PEFTC_QUANT_NF4 = 1 } peftc_base_quant;

typedef struct peftc_config {
    peftc_arch arch;
    int vocab_size;
    int hidden_size;
    int num_layers;
    int num_heads;
    int intermediate_size;
    int max_position;
    int type_vocab_size;
    int pad_token_id;
    float layer_norm_eps;
    float hidden_dropout;
    float attention_dropout;
    int max_seq_len;       /* sentence_bert_config.json's max_seq_length if the
                              model directory has one, else max_position */
    peftc_base_quant quantize;   /* set by the loader's caller, see peftc_base_quant */
} peftc_config;

/* Parses a Hugging Face config.json, dispatching on its model_type to the
 * family's fields; rejects what peftc cannot run. */
peftc_status peftc_config_load(const char *path, peftc_config *cfg, peftc_error *err);

typedef struct peftc_model peftc_model;

/* Loads a model directory (config.json + model.safetensors; weights mapped,
 * converted to fp32 only where the file holds F16/BF16); config.json's
 * model_type picks the model family. */
peftc_status peftc_model_load(const char *dir, peftc_model **out, peftc_error *err);
/* peftc_model_load with the base's linear weights quantised (q; NONE is
 * peftc_model_load). A frozen NF4 weight is never expanded to fp32; one a
 * method must change (merge, full fine-tuning) is refused. */
peftc_status peftc_model_load_quantized(const char *dir, peftc_base_quant q, peftc_model **out, peftc_error *err);
/* Writes the base as loaded (with cfg.quantize NF4: the linear weights as
 * NF4 codes and constants, bitsandbytes' bytes) to out_dir/model.safetensors,
 * with config.json and the tokenizer files copied, so that later runs load
 * it without quantising again (peftc quantize). */
peftc_status peftc_model_save_base(peftc_model *m, const char *out_dir, peftc_error *err);
/* "nf4" / "none" -> *q; PEFTC_ERR_INPUT naming the accepted values otherwise */
peftc_status peftc_base_quant_parse(const char *name, peftc_base_quant *q, peftc_error *err);
/* Bytes the base's linear weights take as loaded, and their parameter count
 * (bytes per parameter: 4 fp32, ~0.516 NF4). */
void peftc_model_linear_bytes(const peftc_model *m, int64_t *bytes, int64_t *params);
void peftc_model_free(peftc_model *m);
const peftc_config *peftc_model_config(const peftc_model *m);
/* The model family's name ("bert"): its config.json model_type. */
const char *peftc_model_family(const peftc_model *m);
/* Number of parameters of the base model (embeddings + encoder). */
int64_t peftc_model_param_count(const peftc_model *m);

/* bf16 path: the frozen linear weights of the encoder (query/key/value,
 * attention output, intermediate, output) are rounded to bf16 and multiplied
 * with AMX tiles (or AVX-512-BF16), accumulating in fp32; trained weights stay
 * fp32. On by default where it is faster: where the CPU and OS allow AMX, and
 * where the AVX-512-BF16 kernel measured (once per process, about 10 ms, on
 * the first query) at least 1.3x OpenBLAS's sgemm on one thread (AMD Zen 4:
 * about 2.2x); fp32 elsewhere. on = 1 forces it (if the CPU has avx512bf16),
 * 0 forces fp32, -1 restores the default; PEFTC_BF16=1 / 0 in the
 * environment does the same at start. Process-wide; returns 1 if bf16 is
 * now in use, else 0. */
int peftc_set_bf16(int on);

/* What the kernels found on this CPU (peftc cpu prints it). */
typedef struct peftc_cpu_info {
    const char *isa;       /* the kernel tier in use: "avx512", "avx2" or "portable" */
    int avx512_bf16;       /* the CPU has AVX-512-BF16 (vdpbf16ps) */
    int amx;               /* bf16 products run on AMX tiles */
    double bf16_speedup;   /* bf16 kernel / sgemm throughput on one thread (0: no bf16) */
    int bf16_default;      /* bf16 is the default here */
    int bf16;              /* bf16 is in use now (peftc_set_bf16) */
} peftc_cpu_info;
void peftc_cpu(peftc_cpu_info *out);

typedef enum peftc_pool {
    PEFTC_POOL_MEAN = 0,
    PEFTC_POOL_CLS = 1
} peftc_pool;

/* Runs the encoder in inference mode on a batch of B sequences padded to T
 * (ids, type_ids: B*T, lens: B real lengths, 1 <= lens[b] <= T).
 * hidden (B*T*hidden_size, may be NULL) receives the last hidden states;
 * pooled (B*hidden_size, may be NULL) the pooled vectors. */
peftc_status peftc_model_encode(peftc_model *m, const int32_t *ids, const int32_t *type_ids,
                                const int *lens, int B, int T, peftc_pool pool,
                                float *hidden, float *pooled, peftc_error *err);

/* ------------------------------------------------------------- training */
/* AdaLoRA (--method adalora): HF PEFT's AdaLoraConfig; 0 means PEFT's default
 * (init_r 12, target_r 8, tinit 0, tfinal 0, deltaT 1, beta1 = beta2 = 0.85,
 * orth_reg_weight 0.5 (set orth_reg_set for an explicit 0), total_step = the
 * run's optimizer steps). */
typedef struct peftc_adalora_opts {
    int init_r, target_r, tinit, tfinal, delta_t, total_step;
    float beta1, beta2, orth_reg_weight;
    int orth_reg_set;
} peftc_adalora_opts;

/* Data parallelism: the processes of one training job, as the caller's
 * transport (the CLI fills it from MPI when built with it; the library itself
 * never links MPI). NULL or size 1: one process. Every rank runs peftc_train
 * with the same options; each computes the gradient of its shard of every
 * global batch, the ranks sum the trainable block's gradient with one
 * allreduce_f32 per optimizer step, and rank 0 alone writes files. */
typedef struct peftc_comm {
    int rank, size;
    void *ctx;
    /* In place, element-wise sum of buf (n values) over the ranks. Every rank
     * must get bit-identical sums, combined in an order that depends on
     * nothing but the rank count (then a job's trajectory is reproducible). */
    peftc_status (*allreduce_f32)(void *ctx, float *buf, size_t n, peftc_error *err);
    peftc_status (*allreduce_f64)(void *ctx, double *buf, size_t n, peftc_error *err);
    /* Optional (all NULL: the trainer sums with allreduce_f32 after the
     * backward): the same sum, non-blocking, so that the gradients of the
     * layers already done travel while the backward runs the layers below
     * (peftc_train_opts.dp_overlap). iallreduce_init: declares, once before
     * training, an in-place sum of buf (n < 2^30 values) that will be
     * started every step, and returns its handle (the transport makes its
     * requests there, none in a step); start: starts it (buf is untouched by
     * the caller until wait), giving every rank the bits allreduce_f32 would;
     * progress: lets started sums move on (the trainer calls it between
     * layers); wait: completes every started sum. Every rank declares and
     * starts the same sums in the same order. */
    peftc_status (*iallreduce_init)(void *ctx, float *buf, size_t n, int *handle, peftc_error *err);
    peftc_status (*start)(void *ctx, int handle, peftc_error *err);
    peftc_status (*progress)(void *ctx, peftc_error *err);
    peftc_status (*wait)(void *ctx, peftc_error *err);
    void (*iallreduce_free)(void *ctx);   /* after training: drops every declared sum */
    int one_host;   /* every rank on one machine: the sums go through shared memory */
} peftc_comm;

typedef struct peftc_train_opts {
    const char *model_dir;
    const char *train_path;
    const char *eval_path;       /* may be NULL */
    const char *out_dir;
    const char *resume_dir;      /* may be NULL: continue the run saved there */
    const char *init_adapter;    /* may be NULL: start from this adapter's weights */
    int adapterdrop_train;       /* AdapterDrop: each micro-batch skips the deltas of its lowest n layers, n uniform in [0, L) */
    const char *method;          /* a preset (see peftc_method_list) or "custom" */
    const char *quantize;        /* base storage: "nf4" or "none"; NULL: the method's (qlora: nf4; others: none) */
    const char *text_col, *pair_col, *label_col;   /* NULL: recognised from the header */
    int has_min_score;           /* --task embedding: keep only the pairs whose label column is >= min_score */
    double min_score;
    /* method options; 0 / NULL: the preset's default */
    int lora_r;                  /* LoRA rank, or an adapter's bottleneck */
    float lora_alpha;
    float lora_dropout;
    int lora_dropout_given;      /* lora_dropout was set (else the preset's: 0, qlora 0.1) */
    int rslora;
    const char *lora_targets;    /* comma list, e.g. "query,value" */
    const char *site;            /* parallel-adapter: "ffn" or "attn" */
    float scale;                 /* scaled-parallel-adapter: s */
    int learned_scale;
    const char *const *deltas;   /* custom: delta specs "site=...,insert=...,r=..." */
    int n_deltas;
    int num_virtual;             /* prompt, ptuning: number of virtual tokens */
    const char *template_text;   /* ptuning: "P P {text} P {pair}" */
    const char *encoder;         /* ptuning: "mlp" (default), "lstm" or "none" */
    int encoder_hidden;
    int prefix_len;              /* prefix, ptuning-v2, mam, unipelt */
    int prefix_projection;       /* 1: MLP reparameterisation while training, -1: none, 0: the preset's default */
    peftc_adalora_opts adalora;  /* adalora: the rank allocator's schedule */
    const char *fuse_adapters;   /* method "fusion" (peftc fuse): "a=DIR,b=DIR,..." of bottleneck adapters, frozen */
    int fusion_temperature;      /* fusion: softmax temperature annealed 50 -> 1 (AdapterHub's temperature option) */
    /* optimisation */
    int epochs;
    int max_steps;               /* > 0 overrides epochs */
    int batch;
    int grad_accum;
    int max_len;
    float lr;
    float weight_decay;
    float warmup_ratio;
    const char *schedule;        /* "linear", "cosine", "constant" */
    float clip;                  /* max global gradient norm; <= 0 disables */
    float adam_beta1, adam_beta2, adam_eps;
    uint64_t seed;
    int bucket;                  /* length-bucketed batches */
    int save_every;              /* checkpoint every N optimizer steps (0: never) */
    int eval_every;              /* evaluate every N steps (0: each epoch) */
    int stop_after;              /* > 0: stop after this many optimizer steps, as if
                                    interrupted, leaving a checkpoint for resume_dir */
    float lr_end;                /* > lr: a learning-rate range test (Smith 2017): the
                                    rate grows geometrically from lr at the first step to
                                    lr_end at the last, no warm-up or decay */
    /* causal language modelling (the task of decoder models) */
    const char *task;            /* NULL: the model's (causal-lm for decoders, seq-cls for encoders);
                                    encoders also token-cls (CoNLL files), regression, multi-label and
                                    embedding (pairs, MultipleNegativesRankingLoss) */
    int pack;                    /* several examples per row of max_len tokens */
    int loss_on_all;             /* loss on prompt tokens too (default: the response only) */
    const char *data_format;     /* NULL: recognised; text, prompt-response, alpaca, chat, template */
    const char *prompt_template; /* "...{field}...": the prompt from a record's fields */
    const char *prompt_field, *response_field;
    /* reliability */
    volatile sig_atomic_t *stop; /* may be NULL; once *stop is non-zero (a SIGINT/SIGTERM handler sets it),
                                    training ends at the next step boundary: the checkpoint, adapter and
                                    metrics are written as at the end of a run, peftc_train returns
                                    PEFTC_OK and the state is resumable with resume_dir */
    int gradient_checkpointing;  /* keep only each block's input and run its forward again in the backward
                                    (the same gradients, bit for bit; about one more forward per step, for a
                                    fraction of the activations' memory); decoders (causal-lm) */
    int skip_nonfinite;          /* a step whose loss or gradient is not finite is skipped (no update;
                                    counted in metrics.json's skipped_steps) instead of ending the run
                                    with PEFTC_ERR_NUMERIC */
    const peftc_comm *comm;      /* NULL: one process (see peftc_comm) */
    /* data parallelism: the gradient sum overlapped with the backward, in
     * buckets of whole layers of at least dp_bucket_mb MB (0: 1 MB) started as
     * the backward finishes them. dp_overlap 1: on, -1: off (one blocking sum
     * after the backward), 0: the default: off when every rank is on one
     * machine (peftc_comm.one_host: measured slower there, README "Data-parallel
     * training on MPI"), on across machines for a block of more than one
     * bucket. The parameters are bit-identical either way. */
    int dp_overlap;
    float dp_bucket_mb;
} peftc_train_opts;

void peftc_train_opts_default(peftc_train_opts *o);

/* The method presets, what each expands to and its parameter formula
 * (multi-line text into out). */
void peftc_method_list(char *out, size_t cap);

/* A method's size and place in the design space, without training: the
 * method is built for the model and its tensors are declared (not allocated)
 * and counted. For sweeps (a budget picks the size whose count is nearest). */
typedef struct peftc_method_info {
    int64_t trainable_params;  /* what training updates, the classifier head and reparameterisation
                                  MLPs included (metrics.json's trainable_params) */
    int64_t saved_params;      /* what the adapter keeps (prefix / P-tuning MLPs folded away): the papers' count;
                                  AdaLoRA: at init_r (its pruning happens while training) */
    int64_t total_params;      /* the base model's (peftc_model_param_count) */
    float lr;                  /* o->lr if set, else the method's default */
    char spec[512];            /* what the method expands to: trained base tensors, delta specs, prompt, prefix */
    /* the unified view's four design dimensions (He et al. 2022), from the
     * built method; "+"-joined where its parts differ (MAM: "attention+FFN") */
    char insertion[64];        /* parallel, sequential, input (virtual tokens), weights (full / BitFit) */
    char representation[64];   /* attention, FFN, input embeddings, all weights, biases */
    char composition[64];      /* add, scaled, learned-scale, gated, multiply, concat, replace */
    char functional_form[64];  /* identity (linear), relu, gelu, silu, tanh, softmax (prefix), scale vector, bias */
} peftc_method_info;

/* The method of o (its preset and options; data, steps and paths unused)
 * built on m for a task of num_labels labels. */
peftc_status peftc_method_info_get(peftc_model *m, const peftc_train_opts *o, int num_labels,
                                   peftc_method_info *info, peftc_error *err);

/* The number of distinct labels of a training file (TSV, CSV, JSONL; columns
 * NULL: recognised as peftc_train does): the head's size for
 * peftc_method_info_get. */
peftc_status peftc_data_num_labels(const char *path, const char *text_col, const char *pair_col, const char *label_col,
                                   int *num_labels, peftc_error *err);

typedef enum peftc_progress_kind {
    PEFTC_PROGRESS_START,        /* message: what is being trained */
    PEFTC_PROGRESS_STEP,
    PEFTC_PROGRESS_EVAL,
    PEFTC_PROGRESS_CHECKPOINT,
    PEFTC_PROGRESS_DONE
} peftc_progress_kind;

typedef struct peftc_progress {
    peftc_progress_kind kind;
    int step, total_steps, epoch;
    float loss, lr, grad_norm;
    double tokens_per_s, elapsed_s, eta_s;
    double eval_accuracy, eval_loss, eval_f1, eval_mcc;
    const struct peftc_eval_result *eval;   /* PEFTC_PROGRESS_EVAL / DONE after an evaluation: all of it */
    int64_t trainable_params, total_params;
    const char *message;
    int eval_causal_lm;              /* an EVAL of a causal LM: eval_loss is the mean token loss, eval_perplexity its exp */
    double eval_perplexity;
} peftc_progress;

typedef void (*peftc_progress_fn)(const peftc_progress *p, void *user);

/* Trains and writes out_dir/{adapter_config.json, adapter_model.safetensors,
 * metrics.json} (and checkpoint.safetensors with save_every). */
peftc_status peftc_train(const peftc_train_opts *o, peftc_progress_fn progress, void *user, peftc_error *err);

/* -------------------------------------------------- evaluation, prediction */
typedef struct peftc_classifier peftc_classifier;

peftc_status peftc_classifier_load(const char *model_dir, const char *adapter_dir,
                                   peftc_classifier **out, peftc_error *err);
void peftc_classifier_free(peftc_classifier *c);
/* Folds the adapter's mergeable deltas (LoRA, (IA)^3) into the base weights so
 * inference costs what the base model costs; PEFTC_ERR_UNSUPPORTED for methods
 * that cannot be merged. */
peftc_status peftc_classifier_merge(peftc_classifier *c, peftc_error *err);
int peftc_classifier_num_labels(const peftc_classifier *c);
const char *peftc_classifier_label(const peftc_classifier *c, int k);

typedef struct peftc_eval_result {
    int n;                   /* examples (token-cls: sentences) */
    double accuracy, loss;   /* token-cls: token accuracy over the labelled words; regression: loss = MSE */
    int binary;              /* f1 and mcc are set for two-label tasks */
    double f1, mcc;
    const char *task;        /* "seq-cls", "token-cls", "regression" */
    /* token-cls: entities as seqeval's default mode counts them (micro average) */
    double precision, recall, entity_f1;
    long long n_words, n_words_cut, n_true, n_pred, n_correct;   /* words scored (all); of them, words without a first
                                                                    piece in the window (scored as O); entities */
    /* regression */
    double pearson, spearman;
    /* multi-label: f1 is the micro average, accuracy the exact-match ratio */
    double macro_f1;
} peftc_eval_result;

peftc_status peftc_classifier_eval(peftc_classifier *c, const char *data_path, const char *text_col,
                                   const char *pair_col, const char *label_col,
                                   peftc_eval_result *res, peftc_error *err);
/* Data-parallel evaluation (comm NULL or size 1: one process): every rank of
 * the job calls peftc_classifier_eval with the same arguments; the batches
 * (the single process's) are dealt out, batch k to rank k mod size, the
 * per-example outputs gathered exactly, and every rank gets the single
 * process's result, bit for bit. comm must outlive the evaluations. */
void peftc_classifier_set_comm(peftc_classifier *c, const peftc_comm *comm);
/* The task the adapter was trained for: "seq-cls", "token-cls", "regression". */
const char *peftc_classifier_task(const peftc_classifier *c);
/* AdapterFusion runs (peftc fuse): the number of fused adapters (0 for any
 * other adapter) and the k-th one's name. */
int peftc_classifier_fusion_count(const peftc_classifier *c);
const char *peftc_classifier_fusion_name(const peftc_classifier *c, int k);
/* The average fusion weight per layer and adapter over the real tokens of
 * every forward since the load (eval, predict, score): w[l * n + k] for
 * layers l < min(n_layers, the model's); *n_layers receives the model's
 * layer count. Layers without a forward yet read 0. Returns 0, or -1 when
 * the adapter is not a fusion. */
int peftc_classifier_fusion_weights(const peftc_classifier *c, double *w, int *n_layers, int cap_layers);
/* Token classification: tags every word of a CoNLL file (one word per line,
 * the last column the tag if there are two or more; see `peftc train --task
 * token-cls`). *out (malloc'd) receives each word's line, a TAB and the
 * predicted tag, a blank line after each sentence (words beyond --max-len
 * get O). */
peftc_status peftc_classifier_tag_conll(peftc_classifier *c, const char *data_path, char **out, peftc_error *err);
/* Embedding adapters (--task embedding, task_type FEATURE_EXTRACTION): the
 * sentence embedding of each of n texts, out[i * dim + c] (dim =
 * peftc_classifier_embedding_dim): the mean of the adapted model's last
 * hidden states over the text's tokens (virtual tokens left out), not
 * normalised; the adapter's max_len. */
int peftc_classifier_embedding_dim(const peftc_classifier *c);
peftc_status peftc_classifier_embed(peftc_classifier *c, const char *const *texts, int n, float *out, peftc_error *err);
/* Regression: one score per text (pairs as for predict). */
peftc_status peftc_classifier_score(peftc_classifier *c, const char *const *texts, const char *const *pairs, int n,
                                    float *scores, peftc_error *err);
/* Predicts n texts (pairs[i] may be NULL; pairs may be NULL): label indices,
 * and probabilities (n * num_labels, may be NULL). */
peftc_status peftc_classifier_predict(peftc_classifier *c, const char *const *texts,
                                      const char *const *pairs, int n, int *labels,
                                      float *probs, peftc_error *err);

/* ------------------------------------------- many adapters on one base model */
/* Several named adapters (delta methods only: LoRA, AdaLoRA, (IA)^3, the
 * bottleneck adapters; each with its own parameters and classification head)
 * sharing one frozen base, combined by a composition (README "Many adapters
 * on one model"). */
typedef struct peftc_multi peftc_multi;

/* names[i] may be NULL or "" for an unnamed adapter (named "0", "1", ...). */
peftc_status peftc_multi_load(const char *model_dir, const char *const *names, const char *const *dirs, int n,
                              peftc_multi **out, peftc_error *err);
void peftc_multi_free(peftc_multi *mc);
/* "stack(a,b)", "parallel(a,b)", "average(a,b[,w1,w2])", "batchsplit(a:n,b:m)",
 * "split(a,b@k)", nested; or one adapter's name. The default is the first adapter. */
peftc_status peftc_multi_compose(peftc_multi *mc, const char *spec, peftc_error *err);
/* Mixed batch: example i goes through the adapter route[i] (peftc_multi_find)
 * in peftc_multi_predict; replaces the composition. */
peftc_status peftc_multi_route(peftc_multi *mc, peftc_error *err);
/* AdapterDrop at inference: no adapter acts in the lowest n layers. */
peftc_status peftc_multi_drop_layers(peftc_multi *mc, int n, peftc_error *err);
int peftc_multi_find(const peftc_multi *mc, const char *name);   /* -1 if not loaded */
int peftc_multi_count(const peftc_multi *mc);
const char *peftc_multi_name(const peftc_multi *mc, int i);
/* Outputs per example: the children of parallel(...), else 1; their names. */
int peftc_multi_outputs(const peftc_multi *mc);
const char *peftc_multi_output_name(const peftc_multi *mc, int o);
/* The largest label count of the loaded heads (the stride of probs below). */
int peftc_multi_max_labels(const peftc_multi *mc);
/* Predicts n texts (pairs may be NULL): for example i and output o, at
 * [i * outputs + o], the label's name (owned by mc), and (probs non-NULL) its
 * head's probabilities at probs[(i * outputs + o) * max_labels + k] with
 * n_probs[i * outputs + o] of them. route: the adapter per example (only
 * after peftc_multi_route; NULL otherwise). */
peftc_status peftc_multi_predict(peftc_multi *mc, const char *const *texts, const char *const *pairs, int n,
                                 const int *route, const char **labels, float *probs, int *n_probs,
                                 peftc_error *err);
/* Rows times adapter applications computed in layer l since loading (the
 * compute AdapterDrop saves: 0 in dropped layers). */
int64_t peftc_multi_rows_applied(const peftc_multi *mc, int layer);
int peftc_multi_layers(const peftc_multi *mc);

/* Several LoRA adapters combined into one new adapter directory, as HF
 * PEFT 0.21's add_weighted_adapter: combination linear, cat, svd, ties,
 * ties_svd, dare_linear, dare_linear_svd, dare_ties, dare_ties_svd,
 * magnitude_prune, magnitude_prune_svd (src/train/merge_adapters.c). */
typedef struct peftc_merge_opts {
    const char *const *dirs;
    int n;
    const double *weights;
    int n_weights;
    const char *combination;
    double density;            /* < 0: not given (needed by every rule but linear, cat, svd) */
    int svd_rank;              /* 0: the largest rank */
    int svd_rank_given;
    int majority_frequency;    /* ties' majority_sign_method "frequency" (else "total") */
    uint64_t seed;             /* DARE's random masks */
    int head;                  /* the adapter whose other tensors (head) and config the result keeps */
    const char *out_dir;
} peftc_merge_opts;
peftc_status peftc_merge_adapters(const peftc_merge_opts *o, peftc_error *err);

/* ------------------------------------------------------ decoders (causal LM) */
/* A decoder language model ready to generate: the model (a GGUF file, or an
 * HF directory with config.json model_type llama), its byte-level BPE
 * tokenizer (from the GGUF metadata or tokenizer.json), a KV cache of n_ctx
 * positions, and any LoRA adapters, applied unmerged or merged. */
typedef struct peftc_lm peftc_lm;

typedef struct peftc_lm_opts {
    int n_ctx;                       /* KV cache positions; 0: min(model context, 4096) */
    int n_batch;                     /* prompt tokens per forward; 0: 512 */
    const char *const *adapters;     /* adapter directories (PEFT layout), n_adapters of them */
    const float *adapter_scales;     /* a multiplier per adapter (NULL: 1 each) */
    int n_adapters;
    int merge;                       /* fold the adapters into the weights (F32/F16/BF16 bases) */
    peftc_base_quant quantize;       /* NF4: an F32/F16/BF16 safetensors base's block weights in NF4
                                        (GGUF bases refused: quantised already) */
} peftc_lm_opts;

void peftc_lm_opts_default(peftc_lm_opts *o);
peftc_status peftc_lm_load(const char *model_path, const peftc_lm_opts *o, peftc_lm **out, peftc_error *err);
void peftc_lm_free(peftc_lm *lm);
/* One line describing the model (architecture, layers, widths, weight types). */
const char *peftc_lm_describe(const peftc_lm *lm);
int peftc_lm_n_ctx(const peftc_lm *lm);

typedef struct peftc_gen_opts {
    float temperature;               /* <= 0: greedy (the default) */
    int top_k;                       /* 0: off */
    float top_p;                     /* 1: off */
    float min_p;                     /* 0: off */
    float repeat_penalty;            /* 1: off */
    int repeat_last_n;               /* tokens the penalty looks back (default 64) */
    uint64_t seed;
    int max_new_tokens;              /* default 256; generation also stops at EOS and end-of-turn tokens */
    const char *const *stop;         /* stop strings (not printed), n_stop of them */
    int n_stop;
    int add_bos;                     /* -1: as the model says; 0 / 1 */
    int parse_special;               /* special tokens written in the prompt become their ids (chat prompts) */
    int ignore_eos;                  /* go on past EOS / end of turn (benchmarks: a fixed token count) */
} peftc_gen_opts;

void peftc_gen_opts_default(peftc_gen_opts *o);

/* Streaming: called with each piece of text as soon as it is complete UTF-8
 * and cannot be the start of a stop string; return non-zero to stop. */
typedef int (*peftc_gen_fn)(const char *text, size_t len, void *user);

typedef struct peftc_gen_stats {
    int prompt_tokens;               /* evaluated for this call (a prefix already in the KV cache is reused) */
    int cached_tokens;               /* reused from the previous call */
    int gen_tokens;
    double prompt_s, gen_s;          /* wall time of prompt processing and of decoding */
    const char *stop_reason;         /* "eos", "stop", "length", "context", "callback" */
} peftc_gen_stats;

/* Generates a continuation of prompt. The KV cache keeps the tokens of the
 * last call, so a chat that re-sends the conversation evaluates only what is
 * new. stats may be NULL. */
peftc_status peftc_lm_generate(peftc_lm *lm, const char *prompt, const peftc_gen_opts *o, peftc_gen_fn fn,
                               void *user, peftc_gen_stats *stats, peftc_error *err);

typedef struct peftc_chat_msg {
    const char *role;                /* "system", "user", "assistant" */
    const char *content;
} peftc_chat_msg;

/* The model's chat template applied to msgs (*out malloc'd, free()). */
peftc_status peftc_lm_chat_format(const peftc_lm *lm, const peftc_chat_msg *msgs, int n,
                                  int add_generation_prompt, char **out, peftc_error *err);
/* Token ids of text (*ids malloc'd). */
peftc_status peftc_lm_tokenize(const peftc_lm *lm, const char *text, size_t len, int add_bos, int parse_special,
                               int32_t **ids, int *n, peftc_error *err);
/* Logits (n_vocab) after the tokens ids[0..n) from position 0 (a fresh cache);
 * all != 0: every position's logits (n * n_vocab). For evaluation and tests. */
int peftc_lm_vocab_size(const peftc_lm *lm);
peftc_status peftc_lm_logits(peftc_lm *lm, const int32_t *ids, int n, int all, float *logits, peftc_error *err);

/* ------------------------------------------ causal-LM evaluation and metrics */
/* How a data file's records become prompts and targets: the options of
 * `peftc train` on a decoder (README, Fine-tuning decoders). NULL fields are
 * the format's defaults. */
typedef struct peftc_lm_data_opts {
    const char *format;              /* text, prompt-response, alpaca, chat, template; NULL: recognised */
    const char *prompt_template;     /* "...{field}..." (the template format) */
    const char *prompt_field, *response_field;
    int loss_on_all;                 /* targets on the prompt tokens too */
    int max_len;                     /* tokens per example, longer ones truncated (0: the model's context) */
} peftc_lm_data_opts;

typedef struct peftc_lm_eval_result {
    int n_examples, n_truncated, n_dropped;
    long long n_targets;
    double loss;                     /* mean cross-entropy (nats) over every target token */
    double perplexity;               /* exp(loss) */
} peftc_lm_eval_result;

/* Mean token loss over the target tokens of a data file (teacher forcing, one
 * example at a time from a fresh cache; truncated examples counted). */
peftc_status peftc_lm_eval_loss(peftc_lm *lm, const char *data_path, const peftc_lm_data_opts *d,
                                peftc_lm_eval_result *r, peftc_error *err);

/* Called after each generated example (i of n); non-zero stops. */
typedef int (*peftc_lm_gen_progress)(int i, int n, const char *prediction, const peftc_gen_stats *st, void *user);

typedef struct peftc_lm_gen_summary {
    int n;                           /* examples generated */
    long long prompt_tokens, gen_tokens;
    double seconds;
    int n_eos, n_stop, n_length;     /* why each ended */
} peftc_lm_gen_summary;

/* Generates a continuation of every record's prompt (the data options' prompt
 * rendering: the template, Alpaca's prompt, a chat up to its last assistant
 * turn with the generation prompt) with the decoding options, and writes
 * out_path (JSONL, temp + rename): {"index", "prediction", "reference" (the
 * response field / last assistant turn), "stop", "gen_tokens"} per record.
 * limit > 0: the first limit records. predictions/references (may be NULL)
 * receive the n strings (malloc'd, free each and the arrays). */
peftc_status peftc_lm_generate_data(peftc_lm *lm, const char *data_path, const peftc_lm_data_opts *d,
                                    const peftc_gen_opts *g, int limit, const char *out_path,
                                    peftc_lm_gen_progress fn, void *user, peftc_lm_gen_summary *sum,
                                    char ***predictions, char ***references, peftc_error *err);

/* Metrics of generated text against references. */
enum { PEFTC_METRIC_EM_NUMBER = 1, PEFTC_METRIC_ROUGE = 2, PEFTC_METRIC_BLEU = 4 };
#define PEFTC_SCORE_PER 4            /* per-example values: em, rouge1, rouge2, rougeL (NaN if not asked) */

typedef struct peftc_score_result {
    int n, metrics;
    double em;                       /* em-number: fraction whose final numbers agree */
    int n_pred_numbers;              /* predictions that had a number at all */
    double rouge1, rouge2, rougeL;   /* mean F-measure over the pairs (rouge-score, use_stemmer=True) */
    double bleu;                     /* corpus BLEU, 0..100 (sacreBLEU default: 13a, exp smoothing) */
    double bleu_precisions[4], bleu_bp;
    long long bleu_correct[4], bleu_total[4], sys_len, ref_len;
} peftc_score_result;

/* "em-number", "rouge", "bleu" or a comma list of them -> mask; 0 unknown. */
int peftc_metric_parse(const char *names);
/* Scores n pairs; per (may be NULL): n * PEFTC_SCORE_PER values. */
peftc_status peftc_score(int metrics, const char *const *preds, const char *const *refs, int n,
                         peftc_score_result *r, double *per, peftc_error *err);
/* Reads the texts to score: JSONL (.jsonl/.json: the string field `field`,
 * or when NULL the first of prediction, reference, response, answer, output,
 * summary, target, text that the first record has) or plain text (one segment
 * a line). *texts malloc'd; *index (may be NULL) gets each record's integer
 * "index" field or -1. */
peftc_status peftc_score_read(const char *path, const char *field, char ***texts, int **index, int *n,
                              peftc_error *err);

/* Exports a decoder's LoRA adapter (a PEFT directory or a GGUF LoRA) as
 * llama.cpp's GGUF LoRA (general.type adapter, adapter.type lora,
 * blk.N.<weight>.weight.lora_a/.lora_b) for the GGUF base base_model: q/k
 * lora_B rows in the base's row order, rsLoRA / alpha_pattern / rank_pattern
 * scales folded into B so llama.cpp's alpha / r gives the trained result. */
peftc_status peftc_export_gguf_lora(const char *adapter, const char *base_model, const char *out_path, peftc_error *err);
/* A peftc bottleneck adapter run (sequential / parallel / scaled, at attn.out
 * and/or ffn.out) with its classification head as an AdapterHub directory
 * (adapters' save_adapter(out_dir, name, with_head=True, use_safetensors=True)
 * layout) on base model_dir; what AdapterHub's config cannot express is
 * PEFTC_ERR_UNSUPPORTED saying what. name NULL: "peftc". */
peftc_status peftc_export_adapterhub(const char *adapter, const char *model_dir, const char *out_dir, const char *name, peftc_error *err);

/* Writes the base model with the adapter's LoRA / (IA)^3 deltas folded into
 * its weights, as a plain model other tools load without any adapter code:
 *   - a Hugging Face base (a BERT encoder, a Llama directory): out is a
 *     directory with config.json (an encoder's: architectures
 *     BertForSequenceClassification / BertForTokenClassification with the
 *     adapter's labels and problem_type), model.safetensors (every tensor,
 *     the head included) and the tokenizer files; type f32 (NULL), f16 or
 *     bf16 for every floating tensor;
 *   - a GGUF base: out is a GGUF file with every key and tensor of the base,
 *     the adapted block weights dequantised, merged and written as type
 *     (f32 when NULL); a type given also re-encodes every other block linear
 *     weight (f32, f16, bf16, q8_0, q4_1). Untouched tensors keep their bytes.
 * Methods that cannot be merged (adapters, prompts, prefixes) are refused
 * with PEFTC_ERR_UNSUPPORTED naming the method. Written temp + rename. */
peftc_status peftc_merge_model(const char *model, const char *adapter, const char *out, const char *type,
                               peftc_error *err);

#ifdef __cplusplus
}
#endif
#endif /* PEFTC_H */
