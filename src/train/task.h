/* task.h: a model fitted for sequence classification with a PEFT method:
 * base model + method (trainable block, deltas) + head + label set. Shared by
 * training, evaluation and prediction. */
#ifndef PEFTC_TASK_H
#define PEFTC_TASK_H

#include "model/model.h"
#include "model/cls_head.h"
#include "model/tok_head.h"
#include "model/emb_head.h"
#include "peft/methods.h"
#include "train/data.h"
#include "peft/prompt.h"

/* What the head predicts: a label per sequence (BertForSequenceClassification),
 * a label per token (BertForTokenClassification), or one number per sequence
 * (BertForSequenceClassification with num_labels 1, problem_type regression). */
/* TASK_EMBEDDING: no head; the mean-pooled hidden states are the sentence
 * embedding, trained on (anchor, positive) pairs with sentence-transformers'
 * MultipleNegativesRankingLoss (PEFT's task_type FEATURE_EXTRACTION). */
typedef enum task_kind { TASK_SEQ_CLS = 0, TASK_TOKEN_CLS, TASK_REGRESSION, TASK_MULTI_LABEL, TASK_EMBEDDING } task_kind;

typedef struct task {
    task_kind kind;
    peftc_model *m;
    peftc_tokenizer *tok;
    method_opts mo;
    label_set labels;
    int max_len;
    param_block pb;
    delta_set ds;
    float **grads;            /* the base tensors' gradient slots (the family's tensor order; NULL = frozen) */
    cls_head head;            /* TASK_SEQ_CLS, TASK_REGRESSION */
    tok_head thead;           /* TASK_TOKEN_CLS */
    emb_head ehead;           /* TASK_EMBEDDING */
    int p_cls_w, p_cls_b, p_pool_w, p_pool_b;   /* head params (pooler only if trainable) */
    model_acts *acts;         /* the family's activation buffers */
    float *d_hidden;
    int cap_B, cap_T;
    int merged;
    prompt_module prompt;     /* when mo.prompt.n_virtual > 0 */
    prefix_module prefix;     /* when mo.prefix.n > 0 */
    adalora_state ada;        /* when mo.adalora: the rank allocator's state */
    int64_t row0;             /* data parallelism: the next batch's first row in the whole batch (model_run.row0) */
    /* AdapterFusion (mo.fusion.n >= 2): the fused adapters, each a task of its
     * own on the same model (frozen: only their deltas are used), and the
     * fusion module the delta set stands for (ds.fuse) */
    fusion_module fu;
    struct task *fu_child;
    int fu_n;
    /* model_run.layer_done for task_backward (NULL: none): the trainer's
     * data-parallel sum, set for a step's last micro-batch only */
    void (*layer_done)(void *ctx, int layer);
    void *layer_done_ctx;
    const float *targets;     /* TASK_REGRESSION: the batch's targets (B); TASK_MULTI_LABEL: (B,K) 0/1;
                                 set before forward/backward */
} task;

/* How examples become model input: the tokenizer, then the method's virtual
 * tokens (template), within max_len. */
typedef struct encoder_ctx {
    const peftc_tokenizer *tok;
    prompt_spec ps;
    int max_len;
    int32_t *tmp_ids, *tmp_tts;
    int type_vocab;            /* > 0 (encoder_bind_model): token types must be below it */
    const char *model_dir;     /* for the error naming config.json */
} encoder_ctx;

peftc_status encoder_init(encoder_ctx *e, const peftc_tokenizer *tok, const prompt_spec *ps, int max_len, peftc_error *err);
void encoder_free(encoder_ctx *e);
/* Checks the tokenizer against the model once, before any text is encoded
 * (every id the tokenizer can emit indexes the embedding table), and makes
 * encoder_encode refuse token types the model has no row for (a sentence
 * pair on a type_vocab_size 1 model): otherwise both read past the tables. */
peftc_status encoder_bind_model(encoder_ctx *e, const peftc_model *m, const char *model_dir, peftc_error *err);
/* An encode_fn (data.h) with user = encoder_ctx*. ids/tts hold max_len entries. */
peftc_status encoder_encode(const void *user, const char *text, const char *pair, int32_t *ids, int32_t *tts,
                            int *n, peftc_error *err);
/* Encodes texts[0..B) (pairs may be NULL) into one padded batch: ids, tts
 * (B * L each, L = the encoder's max_len) end up packed at the batch's
 * length *T (zero padding), lens[b] each row's. one, one_t: L-entry scratch. */
peftc_status encoder_encode_batch(const encoder_ctx *e, const char *const *texts, const char *const *pairs, int B, int L,
                                  int32_t *ids, int32_t *tts, int *lens, int32_t *one, int32_t *one_t, int *T,
                                  peftc_error *err);

/* Builds everything; labels are copied. rng initialises the new parameters.
 * task_init is task_init_kind for TASK_SEQ_CLS. */
peftc_status task_init(task *t, peftc_model *m, peftc_tokenizer *tok, const method_opts *mo,
                       const label_set *labels, int max_len, peftc_rng *rng, peftc_error *err);
peftc_status task_init_kind(task *t, task_kind kind, peftc_model *m, peftc_tokenizer *tok, const method_opts *mo,
                            const label_set *labels, int max_len, peftc_rng *rng, peftc_error *err);
/* "seq-cls", "token-cls", "regression", "multi-label" (problem_type
 * multi_label_classification: a sigmoid per label, BCE), "embedding"; parse
 * returns 0 for an unknown name. */
const char *task_kind_name(task_kind k);
int task_kind_parse(const char *s, task_kind *k);
/* Activation buffers for batches up to B x T; train adds backward buffers. */
peftc_status task_alloc(task *t, int B, int T, int train, peftc_error *err);
void task_free(task *t);

/* Forward on a padded batch; returns the mean loss if labels != NULL. Logits
 * and probabilities are left in t->head (t->thead for tokens). labels: B
 * label indices (TASK_SEQ_CLS); B*T per-token labels, < 0 ignored
 * (TASK_TOKEN_CLS); for TASK_REGRESSION the targets are t->targets (B floats)
 * and labels only says whether to compute the loss. TASK_EMBEDDING: the
 * embeddings are left in t->ehead (emb, unit); with labels != NULL the B rows
 * are B/2 anchors then their B/2 positives and the loss is
 * MultipleNegativesRankingLoss's (labels' values are not read). */
float task_forward(task *t, const int32_t *ids, const int32_t *tts, const int *lens, const int *labels,
                   int B, int T, int train, peftc_rng *rng);
/* Backward of loss*scale after task_forward(train=1): accumulates gradients. */
void task_backward(task *t, const int32_t *ids, const int32_t *tts, const int *lens, const int *labels,
                   int B, int T, float scale, peftc_rng *rng);

/* Number of trainable values (excluding alignment padding). */
int64_t task_trainable_count(const task *t);
/* The trainable values task_init would make for mo on m with num_labels
 * labels, from the declared shapes alone (nothing of the size of the
 * parameters is allocated). */
peftc_status task_count_params(peftc_model *m, const method_opts *mo, int num_labels, int64_t *count, peftc_error *err);
/* The method options of a peftc_train_opts (method_info.c). */
void method_args_from_opts(const peftc_train_opts *o, method_args *ma);

/* adapter_config.json + adapter_model.safetensors in dir (atomic writes). */
peftc_status task_save_adapter(const task *t, const char *dir, const char *base_model, peftc_error *err);
/* Reads an adapter directory's config into mo/labels/max_len (before task_init). */
/* basename of an adapter's base_model_name_or_path (NULL if absent or
 * unreadable), malloc'd: adapters on one base must agree on it */
char *adapter_base_name(const char *dir);
peftc_status adapter_read_config(const char *dir, method_opts *mo, label_set *labels, int *max_len, peftc_error *err);
/* The same from adapter_config.json's len bytes at text (path names it). */
peftc_status adapter_parse_config(const char *text, size_t len, const char *path, method_opts *mo, label_set *labels,
                                  int *max_len, peftc_error *err);
/* The task an adapter directory was trained for: peftc.task, else PEFT's
 * task_type (TOKEN_CLS, SEQ_CLS, FEATURE_EXTRACTION; none: SEQ_CLS); others
 * are refused. */
peftc_status adapter_read_task(const char *dir, task_kind *kind, peftc_error *err);
/* AdapterFusion: 0.01 * sum ||I - W_V||^2 into the gradients (returns it; 0
 * without fusion); the temperature after `forwards` training forwards. */
double task_fusion_regularize(task *t);
void task_fusion_anneal(task *t, long forwards);
/* Loads the tensors of an adapter directory into an initialised task. */
peftc_status task_load_weights(task *t, const char *dir, peftc_error *err);

#endif
