/* data.h: labelled text datasets (TSV, CSV, JSONL) for sequence classification. */
#ifndef PEFTC_DATA_H
#define PEFTC_DATA_H

#include "core/core.h"

typedef struct data_cols {
    const char *text, *pair, *label;   /* names or 0-based indices; NULL = recognise */
} data_cols;

typedef struct label_set {
    int n;
    char **names;
} label_set;

typedef struct dataset {
    int n;
    char **text, **pair;   /* pair[i] NULL for single sentences */
    char **label_str;      /* raw labels (NULL if unlabelled) */
    int *label;            /* index into the label set; -1 before data_map_labels */
    /* token ids after data_tokenize: row i at ids + off[i], len[i] tokens */
    int32_t *ids, *tts;
    int *len;
    size_t *off;
    long long n_tokens;
    char *path;
    char text_col[64], pair_col[64], label_col[64];   /* as resolved */
    /* token classification (conll.c): sentence i's words are
     * [word_off[i], word_off[i+1]) of word_line / word_tag / word_label */
    int *word_off;
    char **word_line;      /* each word's line as read (all its columns) */
    char **word_tag;       /* its IOB2 tag (NULL: unlabelled) */
    int *word_label;       /* index into the label set; -1 before mapping */
    int32_t *tok_word;     /* per token (laid out as ids): the word it is the first piece of, -1 if none */
    int n_words, n_words_cut; /* words; words lost to truncation (no first piece in the window) */
    /* regression (data_map_targets): the label column as numbers */
    float *target;
    /* multi-label (data_map_multi): (n, n_multi) 0/1, the label column a comma-separated list */
    float *multi;
    int n_multi;
    /* embedding pairs (data_pairs_apart): rows [0, n_pairs) the anchors,
     * [n_pairs, 2 n_pairs) their positives, row i's positive at n_pairs + i */
    int n_pairs;
} dataset;

/* Reads a file; the format comes from the extension (.tsv, .csv, .jsonl/.json). */
peftc_status data_load(const char *path, const data_cols *cols, int need_labels, dataset *d, peftc_error *err);
/* The same from n bytes at text; path names it and picks the format by its
 * ending (.jsonl/.json, .csv, else TSV). */
peftc_status data_parse(const char *text, size_t n, const char *path, const data_cols *cols, int need_labels, dataset *d,
                        peftc_error *err);
/* Builds the label set from a training set: integers in numeric order, else sorted strings. */
peftc_status labels_from_data(const dataset *d, label_set *ls, peftc_error *err);
/* Maps every label of d through ls; a label outside it is an error naming the row. */
peftc_status data_map_labels(dataset *d, const label_set *ls, peftc_error *err);
/* Multi-label: the label column is a list ("a,b", a JSON array in JSONL):
 * labels_from_multi builds the set of every name (sorted as
 * labels_from_data), data_map_multi the 0/1 rows; an empty list or a name
 * outside the set is an error naming the row. */
peftc_status labels_from_multi(const dataset *d, label_set *ls, peftc_error *err);
peftc_status data_map_multi(dataset *d, const label_set *ls, peftc_error *err);
/* Regression: every label as a finite number into d->target; one that is not is an error naming the row. */
peftc_status data_map_targets(dataset *d, peftc_error *err);
/* Embedding pairs: keeps the rows whose label column is a number >= min
 * (STS-B's pairs of score >= 4 as positives); a label that is not a number
 * is an error naming the row, and so is keeping none. */
peftc_status data_keep_min_score(dataset *d, double min, peftc_error *err);
/* Embedding pairs: every row's two texts become two rows (see n_pairs), each
 * encoded alone; a row without a second text is an error naming it. Labels
 * (and targets, when mapped) go with both. */
peftc_status data_pairs_apart(dataset *d, peftc_error *err);
/* encode(user, text, pair, ids, tts, &n, err) tokenises one example into at most max_len ids. */
typedef peftc_status (*encode_fn)(const void *user, const char *text, const char *pair, int32_t *ids,
                                  int32_t *tts, int *n, peftc_error *err);
peftc_status data_tokenize(dataset *d, encode_fn encode, const void *user, int max_len, peftc_error *err);
void data_free(dataset *d);
void labels_free(label_set *ls);
int labels_find(const label_set *ls, const char *name);

#endif
