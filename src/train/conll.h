/* conll.h: CoNLL-format token-classification data (internal): reading,
 * IOB1 -> IOB2, word-to-sub-word alignment, and seqeval's entity metrics. */
#ifndef PEFTC_CONLL_H
#define PEFTC_CONLL_H

#include "train/data.h"
#include "peft/prompt.h"

/* The label of a token the loss ignores (Hugging Face's ignore_index). */
#define TOK_IGNORE (-100)

/* Reads a CoNLL file: one word per line, columns split on TABs if the line
 * has one, else on spaces; the last column is the tag (a file of one column
 * is unlabelled: need_labels refuses it); a blank line ends a sentence;
 * -DOCSTART- lines are skipped. Every word line must have the first's column
 * count; tags must be O, B-TYPE or I-TYPE (IOB1 or IOB2; IOB1 is converted to
 * IOB2: an I-X that does not continue an X becomes B-X). Errors name the
 * line. *converted (may be NULL) counts the tags IOB1 -> IOB2 changed. */
peftc_status conll_load(const char *path, int need_labels, dataset *d, long *converted, peftc_error *err);
/* The same from n bytes at text (path names it in messages). */
peftc_status conll_parse(const char *text, size_t n, const char *path, int need_labels, dataset *d, long *converted,
                         peftc_error *err);
/* Labels from d's tags: O first, then the rest sorted (B-X before I-X). */
peftc_status conll_labels(const dataset *d, label_set *ls, peftc_error *err);
/* Maps every tag through ls; one outside it is an error naming the word. */
peftc_status conll_map_labels(dataset *d, const label_set *ls, peftc_error *err);
/* Tokenises every sentence as [CLS] pieces of word 1 ... [SEP] (each word
 * alone through the WordPiece tokenizer, as Hugging Face's
 * is_split_into_words does), truncated inside a word if need be at max_len
 * (minus the virtual tokens), then the template ps places the virtual tokens.
 * tok_word marks each word's first piece; the other pieces, [CLS], [SEP] and
 * virtual tokens get -1 (no label). */
peftc_status conll_tokenize(dataset *d, const peftc_tokenizer *tok, const prompt_spec *ps, int max_len, peftc_error *err);

/* seqeval's default-mode entities (conlleval's chunking) over a sequence of
 * label indices: counts of true, predicted and exactly matching (type, start,
 * end) entities, per sentence; sentence ends close entities. */
typedef struct seqeval_acc {
    const label_set *ls;
    char *tag;            /* per label: its first character ('B', 'I', 'O', ...) */
    int *type;            /* per label: an id of its type (the text after the first '-') */
    long long n_true, n_pred, n_correct;
    long long *t_true, *t_pred, *t_correct;   /* per type id */
    int n_types;
    char **type_name;
} seqeval_acc;

peftc_status seqeval_init(seqeval_acc *a, const label_set *ls, peftc_error *err);
/* One sentence: gold[i], pred[i] label indices, n words. */
void seqeval_add(seqeval_acc *a, const int *gold, const int *pred, int n);
void seqeval_free(seqeval_acc *a);

#endif
