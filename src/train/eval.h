/* eval.h: batched evaluation of a task on a tokenised dataset. */
#ifndef PEFTC_EVAL_H
#define PEFTC_EVAL_H

#include "train/task.h"

/* Batch buffers sized for (B, T) (allocated once, reused every step). */
typedef struct batch_buf {
    int32_t *ids, *tts;
    int *lens, *labels, *rows;   /* labels: B (sequences) or B*T (tokens, the batch's T as stride) */
    float *targets;              /* B: regression targets */
    int B, T;
} batch_buf;

peftc_status batch_alloc(batch_buf *b, int B, int T, peftc_error *err);
/* Multi-label: room for (B, K) targets. */
peftc_status batch_alloc_multi(batch_buf *b, int K, peftc_error *err);
void batch_free(batch_buf *b);
/* Pads rows[0..n) of d into b; returns the padded length T. */
int batch_fill(batch_buf *b, const dataset *d, const int *rows, int n);
/* batch_fill padded to T (>= every row's length; a data-parallel shard is
 * padded as the whole batch is). */
void batch_fill_pad(batch_buf *b, const dataset *d, const int *rows, int n, int T);

/* The labelled positions (those batch_fill_pad gives a label >= 0) of
 * rows[0..n) of a token-classification set: a data-parallel shard's loss is
 * normalised by the whole micro-batch's count. */
int batch_count_labelled(const dataset *d, const int *rows, int n);

/* Pearson and Spearman (average ranks for ties, as scipy.stats) correlations of x and y. */
void correlations(const double *x, const double *y, int n, double *pearson, double *spearman);

/* Runs the task without dropout over d (labels mapped) in length-sorted
 * batches of at most t->cap_B; fills accuracy, loss, and f1/mcc when binary.
 * comm (may be NULL): the ranks of a data-parallel job share the batches
 * (batch k on rank k mod size) and sum their counts; every rank gets the result. */
peftc_status task_evaluate(task *t, const dataset *d, batch_buf *b, const peftc_comm *comm, peftc_eval_result *res,
                           peftc_error *err);

/* The labels of an adapter saved without peftc's label list (by PEFT):
 * counted from its classification head, named by the model's id2label. */
peftc_status classifier_default_labels(const char *model_dir, const char *adapter_dir, label_set *labels,
                                       peftc_error *err);

/* The task behind a classifier (merge_model.c writes its merged weights and head). */
task *classifier_task(peftc_classifier *c);

#endif
