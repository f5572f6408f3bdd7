/* conll.c: CoNLL token-classification files, IOB2, sub-word alignment and
 * seqeval's entity counting. */
#include "train/conll.h"

#include <stdlib.h>
#include <string.h>

#define CONLL_MAX_COLS 64
#define CONLL_MAX_WORDS (1 << 20)   /* per sentence: beyond any real one, and far below int overflow */

typedef struct growbuf { void *p; size_t n, cap, size; } growbuf;

static int grow_push(growbuf *g, const void *x)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 1024;
        void *p = realloc(g->p, cap * g->size);
        if (!p) return -1;
        g->p = p;
        g->cap = cap;
    }
    memcpy((char *)g->p + g->n * g->size, x, g->size);
    g->n++;
    return 0;
}

/* The type of an IOB tag (after "B-" / "I-"), or NULL if tag is not one. */
static const char *iob_type(const char *tag)
{
    return (tag[0] == 'B' || tag[0] == 'I') && tag[1] == '-' && tag[2] ? tag + 2 : NULL;
}

static peftc_status conll_take(char *buf, size_t n, const char *path, int need_labels, dataset *d, long *converted,
                               peftc_error *err);

peftc_status conll_load(const char *path, int need_labels, dataset *d, long *converted, peftc_error *err)
{
    memset(d, 0, sizeof *d);
    if (converted) *converted = 0;
    char *buf;
    size_t n;
    peftc_status rc = peftc_read_file(path, &buf, &n, err);
    if (rc) return rc;
    return conll_take(buf, n, path, need_labels, d, converted, err);
}

peftc_status conll_parse(const char *text, size_t n, const char *path, int need_labels, dataset *d, long *converted,
                         peftc_error *err)
{
    memset(d, 0, sizeof *d);
    if (converted) *converted = 0;
    /* a private NUL-terminated copy: the lines are cut in place */
    char *buf = malloc(n + 1);
    if (!buf) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, n + 1);
    if (n) memcpy(buf, text, n);
    buf[n] = 0;
    return conll_take(buf, n, path, need_labels, d, converted, err);
}

/* Parses the n bytes at buf (NUL-terminated, modified, freed here). */
static peftc_status conll_take(char *buf, size_t n, const char *path, int need_labels, dataset *d, long *converted,
                               peftc_error *err)
{
    peftc_status rc = PEFTC_OK;
    if (!(d->path = strdup(path))) { free(buf); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    growbuf lines = {.size = sizeof(char *)}, tags = {.size = sizeof(char *)}, offs = {.size = sizeof(int)};
    int zero = 0, ncols = 0, first_line = 0, in_sentence = 0;
    long nconv = 0;
    if (grow_push(&offs, &zero)) goto nomem;
    size_t pos = 0;
    for (int lineno = 1; pos < n; lineno++) {
        size_t e = pos;
        while (e < n && buf[e] != '\n') e++;
        size_t len = e - pos;
        char *s = buf + pos;
        pos = e + 1;
        if (len && s[len - 1] == '\r') len--;
        s[len] = 0;
        if (memchr(s, 0, len)) { rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d holds a NUL byte (not a text file?)", path, lineno); goto fail; }
        size_t k = 0;
        while (k < len && (s[k] == ' ' || s[k] == '\t')) k++;
        if (k == len) {   /* a blank line ends the sentence */
            if (in_sentence) {
                int end = (int)lines.n;
                if (grow_push(&offs, &end)) goto nomem;
                in_sentence = 0;
            }
            continue;
        }
        if (!strncmp(s, "-DOCSTART-", 10) && (s[10] == ' ' || s[10] == '\t' || !s[10])) continue;
        /* the columns: TAB-separated if the line has a TAB, else space-separated */
        char sep = memchr(s, '\t', len) ? '\t' : ' ';
        char *col[CONLL_MAX_COLS];
        int nc = 0;
        char *copy = strdup(s);
        if (!copy) goto nomem;
        for (char *p = copy; *p && nc <= CONLL_MAX_COLS;) {
            while (*p == sep) p++;
            if (!*p) break;
            if (nc == CONLL_MAX_COLS) { nc++; break; }
            col[nc++] = p;
            while (*p && *p != sep) p++;
            if (*p) *p++ = 0;
        }
        if (nc > CONLL_MAX_COLS) {
            free(copy);
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d has more than %d columns", path, lineno, CONLL_MAX_COLS);
            goto fail;
        }
        if (!ncols) { ncols = nc; first_line = lineno; }
        if (nc != ncols) {
            free(copy);
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d has %d columns, line %d has %d (one word per line: word ... tag)",
                            path, lineno, nc, first_line, ncols);
            goto fail;
        }
        if (need_labels && nc < 2) {
            free(copy);
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d has no tag column (one word per line: word ... tag)", path, lineno);
            goto fail;
        }
        char *tag = NULL;
        if (nc >= 2) {
            const char *t = col[nc - 1];
            if (strcmp(t, "O") && !iob_type(t)) {
                int iobes = (t[0] == 'E' || t[0] == 'S') && t[1] == '-';
                rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d: tag '%.60s' %s", path, lineno, t,
                                iobes ? "is IOBES (E-/S-), which is not supported: use IOB1 or IOB2"
                                      : "is of an unknown tag scheme (expected O, B-TYPE or I-TYPE: IOB1 or IOB2)");
                free(copy);
                goto fail;
            }
            if (!(tag = strdup(t))) { free(copy); goto nomem; }
            /* IOB1 -> IOB2: an I-X that does not continue an X begins one */
            const char *prev = in_sentence && tags.n ? ((char **)tags.p)[tags.n - 1] : "O";
            if (tag[0] == 'I') {
                const char *pt = iob_type(prev);
                if (!pt || strcmp(pt, tag + 2)) { tag[0] = 'B'; nconv++; }
            }
        }
        free(copy);
        if ((int)lines.n - ((int *)offs.p)[offs.n - 1] >= CONLL_MAX_WORDS) {
            free(tag);
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %d: a sentence of more than %d words (no blank lines?)", path, lineno, CONLL_MAX_WORDS);
            goto fail;
        }
        char *line = strdup(s);
        if (!line || grow_push(&lines, &line)) { free(line); free(tag); goto nomem; }
        if (grow_push(&tags, &tag)) { free(tag); goto nomem; }
        in_sentence = 1;
    }
    if (in_sentence) {
        int end = (int)lines.n;
        if (grow_push(&offs, &end)) goto nomem;
    }
    free(buf);
    buf = NULL;
    d->n = (int)offs.n - 1;
    d->word_off = offs.p;
    d->word_line = lines.p;
    d->word_tag = tags.p;
    d->n_words = (int)lines.n;
    offs.p = lines.p = tags.p = NULL;
    if (d->n == 0) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no sentences (empty file?)", path); goto fail; }
    /* the sentence-level fields other code walks: empty texts */
    d->text = calloc((size_t)d->n, sizeof *d->text);
    d->pair = calloc((size_t)d->n, sizeof *d->pair);
    d->label_str = calloc((size_t)d->n, sizeof *d->label_str);
    d->label = calloc((size_t)d->n, sizeof *d->label);
    d->word_label = malloc((size_t)(d->n_words ? d->n_words : 1) * sizeof *d->word_label);
    if (!d->text || !d->pair || !d->label_str || !d->label || !d->word_label) goto nomem;
    for (int i = 0; i < d->n_words; i++) d->word_label[i] = -1;
    if (converted) *converted = nconv;
    return PEFTC_OK;
nomem:
    rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
fail:
    free(buf);
    for (size_t i = 0; i < lines.n; i++) free(((char **)lines.p)[i]);
    for (size_t i = 0; i < tags.n; i++) free(((char **)tags.p)[i]);
    free(lines.p); free(tags.p); free(offs.p);
    data_free(d);
    return rc;
}

static int cmp_tag(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    int ox = !strcmp(x, "O"), oy = !strcmp(y, "O");
    if (ox != oy) return oy - ox;
    /* by type, then B before I */
    int c = strcmp(x + (x[1] == '-' ? 2 : 0), y + (y[1] == '-' ? 2 : 0));
    return c ? c : strcmp(x, y);
}

peftc_status conll_labels(const dataset *d, label_set *ls, peftc_error *err)
{
    memset(ls, 0, sizeof *ls);
    char **all = malloc((size_t)(d->n_words ? d->n_words : 1) * sizeof *all);
    if (!all) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    int k = 0;
    for (int i = 0; i < d->n_words; i++) if (d->word_tag[i]) all[k++] = d->word_tag[i];
    qsort(all, (size_t)k, sizeof *all, cmp_tag);
    ls->names = malloc((size_t)(k ? k : 1) * sizeof *ls->names);
    if (!ls->names) { free(all); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < k; i++)
        if ((i == 0 || strcmp(all[i], all[i - 1])) && ls->n < 1001) ls->names[ls->n++] = strdup(all[i]);
    free(all);
    if (ls->n < 2) {
        labels_free(ls);
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: the training data has fewer than two distinct tags", d->path);
    }
    if (ls->n > 1000) {
        labels_free(ls);
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: more than 1000 distinct tags (is the last column the tag?)", d->path);
    }
    return PEFTC_OK;
}

peftc_status conll_map_labels(dataset *d, const label_set *ls, peftc_error *err)
{
    for (int s = 0; s < d->n; s++)
        for (int w = d->word_off[s]; w < d->word_off[s + 1]; w++) {
            if (!d->word_tag[w])
                return peftc_fail(err, PEFTC_ERR_INPUT, "%s: sentence %d, word %d has no tag", d->path, s + 1, w - d->word_off[s] + 1);
            int k = -1;
            for (int j = 0; j < ls->n && k < 0; j++) if (!strcmp(ls->names[j], d->word_tag[w])) k = j;
            if (k < 0)
                return peftc_fail(err, PEFTC_ERR_INPUT, "%s: sentence %d, word %d ('%.60s') has tag '%s', which the training data does not have",
                                  d->path, s + 1, w - d->word_off[s] + 1, d->word_line[w], d->word_tag[w]);
            d->word_label[w] = k;
        }
    return PEFTC_OK;
}

/* The first column of a word line (its word). */
static size_t word_span(const char *line, const char **start)
{
    char sep = strchr(line, '\t') ? '\t' : ' ';
    while (*line == sep) line++;
    *start = line;
    const char *e = strchr(line, sep);
    return e ? (size_t)(e - line) : strlen(line);
}

peftc_status conll_tokenize(dataset *d, const peftc_tokenizer *tok, const prompt_spec *ps, int max_len, peftc_error *err)
{
    int nv = ps->n_virtual > 0 ? ps->n_virtual : 0, room = max_len - nv;
    if (room < 3) return peftc_fail(err, PEFTC_ERR_INPUT, "--max-len %d leaves no room for a word after %d virtual tokens", max_len, nv);
    free(d->ids); free(d->tts); free(d->len); free(d->off); free(d->tok_word);
    size_t cap = (size_t)d->n * max_len;
    d->ids = malloc(cap * sizeof *d->ids);
    d->tts = malloc(cap * sizeof *d->tts);
    d->tok_word = malloc(cap * sizeof *d->tok_word);
    d->len = malloc((size_t)d->n * sizeof *d->len);
    d->off = malloc((size_t)d->n * sizeof *d->off);
    /* one word's pieces ([CLS] w [SEP], at most 512), the sentence before the template, and the template's
     * output of positions */
    int wcap = 512;
    int32_t *wid = malloc((size_t)wcap * sizeof *wid), *wtt = malloc((size_t)wcap * sizeof *wtt);
    int32_t *sid = malloc((size_t)max_len * sizeof *sid), *stt = malloc((size_t)max_len * sizeof *stt);
    int32_t *sw = malloc((size_t)max_len * sizeof *sw), *pos = malloc((size_t)max_len * sizeof *pos);
    int32_t *oi = malloc((size_t)max_len * sizeof *oi), *ot = malloc((size_t)max_len * sizeof *ot);
    peftc_status rc = PEFTC_OK;
    if (!d->ids || !d->tts || !d->tok_word || !d->len || !d->off || !wid || !wtt || !sid || !stt || !sw || !pos || !oi || !ot) {
        rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", d->path);
        goto out;
    }
    int32_t cls = peftc_tokenizer_token_id(tok, "[CLS]"), sepid = peftc_tokenizer_token_id(tok, "[SEP]");
    {   /* the special tokens as the tokenizer places them */
        int m = 0;
        if ((rc = peftc_tokenizer_encode(tok, "", 0, NULL, 0, wcap, wid, wtt, &m, err))) goto out;
        if (m == 2) { cls = wid[0]; sepid = wid[1]; }
        if (cls < 0 || sepid < 0) { rc = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "the tokenizer has no [CLS] / [SEP] tokens"); goto out; }
    }
    size_t at = 0;
    d->n_tokens = 0;
    d->n_words_cut = 0;
    for (int s = 0; s < d->n; s++) {
        int k = 0;
        sid[k] = cls; stt[k] = 0; sw[k] = -1; k++;
        int full = 0;
        for (int w = d->word_off[s]; w < d->word_off[s + 1]; w++) {
            if (full) { d->n_words_cut++; continue; }
            const char *ws;
            size_t wl = word_span(d->word_line[w], &ws);
            int m = 0;
            peftc_error e2 = {0};
            if (peftc_tokenizer_encode(tok, ws, wl, NULL, 0, wcap, wid, wtt, &m, &e2)) {
                rc = peftc_fail(err, e2.code, "%s: sentence %d, word %d: %s", d->path, s + 1, w - d->word_off[s] + 1, e2.msg);
                goto out;
            }
            /* wid = [CLS] pieces [SEP]; a word of more pieces than wcap - 2 was cut by the tokenizer, as the window would */
            int np = m - 2, first = 1;
            if (np <= 0) { d->n_words_cut++; continue; }   /* no pieces (only characters the tokenizer drops): no label, as in HF */
            for (int p = 0; p < np; p++) {
                if (k >= room - 1) { full = 1; break; }   /* truncation, even inside a word: keep room for [SEP] */
                sid[k] = wid[1 + p]; stt[k] = 0; sw[k] = first ? w - d->word_off[s] : -1;
                first = 0;
                k++;
            }
            if (first) d->n_words_cut++;   /* not even the first piece fitted */
        }
        sid[k] = sepid; stt[k] = 0; sw[k] = -1; k++;
        int L = k;
        if (nv > 0) {
            /* the template places positions (0..k-1) and virtual tokens (< 0); the words follow the positions */
            for (int j = 0; j < k; j++) pos[j] = j;
            L = template_apply(ps, pos, stt, k, oi, ot, max_len);
            for (int j = 0; j < L; j++) {
                d->ids[at + j] = oi[j] < 0 ? oi[j] : sid[oi[j]];
                d->tts[at + j] = ot[j];
                /* a [SEP] the template repeats keeps -1; a position's word is placed once */
                d->tok_word[at + j] = oi[j] < 0 ? -1 : sw[oi[j]];
            }
        } else {
            memcpy(d->ids + at, sid, (size_t)L * sizeof *sid);
            memcpy(d->tts + at, stt, (size_t)L * sizeof *stt);
            memcpy(d->tok_word + at, sw, (size_t)L * sizeof *sw);
        }
        d->off[s] = at;
        d->len[s] = L;
        at += (size_t)L;
        d->n_tokens += L;
    }
out:
    free(wid); free(wtt); free(sid); free(stt); free(sw); free(pos); free(oi); free(ot);
    return rc;
}

/* ------------------------------------------------------------ seqeval */

peftc_status seqeval_init(seqeval_acc *a, const label_set *ls, peftc_error *err)
{
    memset(a, 0, sizeof *a);
    a->ls = ls;
    int K = ls->n;
    a->tag = calloc((size_t)K, 1);
    a->type = calloc((size_t)K, sizeof *a->type);
    a->type_name = calloc((size_t)K, sizeof *a->type_name);
    a->t_true = calloc((size_t)K, sizeof *a->t_true);
    a->t_pred = calloc((size_t)K, sizeof *a->t_pred);
    a->t_correct = calloc((size_t)K, sizeof *a->t_correct);
    if (!a->tag || !a->type || !a->type_name || !a->t_true || !a->t_pred || !a->t_correct) {
        seqeval_free(a);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; k < K; k++) {
        /* seqeval: tag = chunk[0]; type = chunk[1:].split('-', 1)[-1] or '_' */
        const char *s = ls->names[k];
        a->tag[k] = s[0];
        const char *rest = s[0] ? s + 1 : s, *dash = strchr(rest, '-');
        const char *ty = dash ? dash + 1 : rest;
        if (!*ty) ty = "_";
        int id = -1;
        for (int j = 0; j < a->n_types && id < 0; j++) if (!strcmp(a->type_name[j], ty)) id = j;
        if (id < 0) { id = a->n_types++; a->type_name[id] = (char *)ty; }
        a->type[k] = id;
    }
    return PEFTC_OK;
}

void seqeval_free(seqeval_acc *a)
{
    free(a->tag); free(a->type); free(a->type_name); free(a->t_true); free(a->t_pred); free(a->t_correct);
    memset(a, 0, sizeof *a);
}

static int end_of_chunk(char pt, char t, int ptype, int type)
{
    if (pt == 'E' || pt == 'S') return 1;
    if ((pt == 'B' || pt == 'I') && (t == 'B' || t == 'S' || t == 'O')) return 1;
    return pt != 'O' && pt != '.' && ptype != type;
}

static int start_of_chunk(char pt, char t, int ptype, int type)
{
    if (t == 'B' || t == 'S') return 1;
    if ((pt == 'E' || pt == 'S' || pt == 'O') && (t == 'E' || t == 'I')) return 1;
    return t != 'O' && t != '.' && ptype != type;
}

/* The entities of seq (n labels, then an 'O'), as (type, begin, end) into ent (3 ints each); returns the count. */
static int chunks(const seqeval_acc *a, const int *seq, int n, int *ent)
{
    char pt = 'O';
    int ptype = -1, begin = 0, m = 0;   /* prev_type '' matches no label's type */
    for (int i = 0; i <= n; i++) {
        char t = i < n ? a->tag[seq[i]] : 'O';
        int type = i < n ? a->type[seq[i]] : -2;   /* the closing 'O': type '_' in seqeval, distinct from ''... */
        if (i == n) {   /* ...and from every entity type unless a label's type is '_' */
            type = -3;
            for (int j = 0; j < a->n_types; j++) if (!strcmp(a->type_name[j], "_")) type = j;
        }
        if (end_of_chunk(pt, t, ptype, type)) { ent[3 * m] = ptype; ent[3 * m + 1] = begin; ent[3 * m + 2] = i - 1; m++; }
        if (start_of_chunk(pt, t, ptype, type)) begin = i;
        pt = t;
        ptype = type;
    }
    return m;
}

void seqeval_add(seqeval_acc *a, const int *gold, const int *pred, int n)
{
    /* at most n + 1 entities each; small sentences: on the stack when they fit */
    int stack[2 * 3 * 257], *g = stack, *p;
    int *heap = NULL;
    if (n > 256) {
        heap = malloc((size_t)2 * 3 * (n + 1) * sizeof *heap);
        if (!heap) return;
        g = heap;
    }
    p = g + 3 * (n + 1);
    int ng = chunks(a, gold, n, g), np = chunks(a, pred, n, p);
    /* seqeval's chunks from 'O' labels carry type '_' only for a label literally 'O'-tagged... an 'O' never starts one */
    for (int i = 0; i < ng; i++) { a->n_true++; a->t_true[g[3 * i]]++; }
    for (int j = 0; j < np; j++) { a->n_pred++; a->t_pred[p[3 * j]]++; }
    for (int i = 0; i < ng; i++)
        for (int j = 0; j < np; j++)
            if (g[3 * i] == p[3 * j] && g[3 * i + 1] == p[3 * j + 1] && g[3 * i + 2] == p[3 * j + 2]) {
                a->n_correct++;
                a->t_correct[g[3 * i]]++;
                break;
            }
    free(heap);
}
