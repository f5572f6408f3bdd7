/* data.c: TSV/CSV/JSONL readers with GLUE column recognition. */
#include "train/data.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct row { char **f; int n, cap; } row;

/* No data layout needs more columns; a line of 20 million commas must not
 * become 20 million allocations. */
#define MAX_FIELDS 4096

static void row_free(row *r)
{
    for (int i = 0; i < r->n; i++) free(r->f[i]);
    free(r->f);
    r->f = NULL;
    r->n = r->cap = 0;
}

/* -1: out of memory, -2: more than MAX_FIELDS fields */
static int row_push(row *r, const char *s, size_t n)
{
    if (r->n >= MAX_FIELDS) return -2;
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 8;
        char **f = realloc(r->f, (size_t)cap * sizeof *f);
        if (!f) return -1;
        r->f = f;
        r->cap = cap;
    }
    char **f = r->f;
    if (!(f[r->n] = malloc(n + 1))) return -1;
    memcpy(f[r->n], s, n);
    f[r->n][n] = 0;
    r->n++;
    return 0;
}

static const char *push_why(int e) { return e == -2 ? "more than 4096 fields in one row (is this the right file and format?)" : "out of memory"; }

/* One TSV line (GLUE: split on TAB, no quoting). */
static int split_tsv(const char *s, size_t n, row *r)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++)
        if (i == n || s[i] == '\t') {
            int e = row_push(r, s + start, i - start);
            if (e) return e;
            start = i + 1;
        }
    return 0;
}

/* One CSV record (RFC 4180: quotes, doubled quotes, newlines inside quotes).
 * *pos advances past the record. Returns 1 on a record, 0 at end, -1 on error. */
static int split_csv(const char *s, size_t n, size_t *pos, row *r, char *buf, const char **why)
{
    size_t i = *pos;
    if (i >= n) return 0;
    for (;;) {
        size_t k = 0;
        if (i < n && s[i] == '"') {
            i++;
            for (;;) {
                if (i >= n) { *why = "unterminated quoted field"; return -1; }
                if (s[i] == '"') {
                    if (i + 1 < n && s[i + 1] == '"') { buf[k++] = '"'; i += 2; continue; }
                    i++;
                    break;
                }
                buf[k++] = s[i++];
            }
            if (i < n && s[i] != ',' && s[i] != '\n' && s[i] != '\r') { *why = "text after a closing quote"; return -1; }
        } else {
            while (i < n && s[i] != ',' && s[i] != '\n' && s[i] != '\r') buf[k++] = s[i++];
        }
        int e = row_push(r, buf, k);
        if (e) { *why = push_why(e); return -1; }
        if (i < n && s[i] == ',') { i++; continue; }
        if (i < n && s[i] == '\r') i++;
        if (i < n && s[i] == '\n') i++;
        break;
    }
    *pos = i;
    return 1;
}

static int is_int_str(const char *s)
{
    if (*s == '-') s++;
    if (!*s) return 0;
    for (; *s; s++) if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* Resolves a column given by name or index against a header (may be NULL). */
static int col_index(const row *hdr, const char *spec, int ncols)
{
    if (!spec) return -1;
    if (hdr) for (int i = 0; i < hdr->n; i++) if (!strcmp(hdr->f[i], spec)) return i;
    if (is_int_str(spec)) {
        int k = atoi(spec);
        return k >= 0 && k < ncols ? k : -2;
    }
    return -2;
}

/* GLUE and common layouts, recognised by header names. */
static void recognise(const row *h, int *t, int *p, int *l)
{
    static const char *pairs[][2] = {
        {"question", "sentence"}, {"sentence1", "sentence2"}, {"#1 String", "#2 String"},
        {"premise", "hypothesis"}, {"question1", "question2"}, {"text", "text_pair"},
        {"anchor", "positive"},   /* sentence-transformers' pair datasets */
    };
    static const char *singles[] = {"sentence", "text"};
    static const char *labels[] = {"label", "Quality", "gold_label", "labels", "score"};   /* score: STS-B */
    *t = *p = *l = -1;
    for (size_t k = 0; k < sizeof pairs / sizeof *pairs && *t < 0; k++) {
        int a = col_index(h, pairs[k][0], h->n), b = col_index(h, pairs[k][1], h->n);
        if (a >= 0 && b >= 0 && !is_int_str(pairs[k][0])) { *t = a; *p = b; }
    }
    for (size_t k = 0; k < sizeof singles / sizeof *singles && *t < 0; k++) {
        int a = col_index(h, singles[k], h->n);
        if (a >= 0) *t = a;
    }
    for (size_t k = 0; k < sizeof labels / sizeof *labels && *l < 0; k++) {
        int a = col_index(h, labels[k], h->n);
        if (a >= 0) *l = a;
    }
}

static int push_example(dataset *d, const char *text, const char *pair, const char *label)
{
    if (d->n % 1024 == 0) {
        size_t cap = (size_t)d->n + 1024;
        char **t = realloc(d->text, cap * sizeof *t);
        if (t) d->text = t;
        char **p = realloc(d->pair, cap * sizeof *p);
        if (p) d->pair = p;
        char **l = realloc(d->label_str, cap * sizeof *l);
        if (l) d->label_str = l;
        if (!t || !p || !l) return -1;
    }
    d->text[d->n] = strdup(text);
    d->pair[d->n] = pair ? strdup(pair) : NULL;
    d->label_str[d->n] = label ? strdup(label) : NULL;
    if (!d->text[d->n] || (pair && !d->pair[d->n]) || (label && !d->label_str[d->n])) return -1;
    d->n++;
    return 0;
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    size_t k = 0;
    while (s[k] && isspace((unsigned char)s[k])) k++;
    if (k) memmove(s, s + k, n - k + 1);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static peftc_status load_table(const char *path, const char *buf, size_t n, int csv, const data_cols *cols,
                               int need_labels, dataset *d, peftc_error *err)
{
    size_t pos = 0;
    if (n >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3)) pos = 3; /* MRPC starts with a BOM */
    row hdr = {0}, r = {0};
    int have_hdr = 0, tcol = -1, pcol = -1, lcol = -1, line = 0;
    peftc_status rc = PEFTC_OK;
    /* one field buffer for the whole file (a field is never longer than it),
     * not one the size of the rest of the file per record */
    char *fbuf = csv ? malloc(n + 1) : NULL;
    if (csv && !fbuf) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, n + 1);
    for (;;) {
        const char *why = NULL;
        int got;
        line++;
        if (csv) {
            got = split_csv(buf, n, &pos, &r, fbuf, &why);
        } else {
            if (pos >= n) got = 0;
            else {
                char *nl = memchr(buf + pos, '\n', n - pos);
                size_t end = nl ? (size_t)(nl - buf) : n, len = end - pos;
                if (len && buf[pos + len - 1] == '\r') len--;
                int e = split_tsv(buf + pos, len, &r);
                got = e ? -1 : 1;
                if (e) why = push_why(e);
                pos = nl ? end + 1 : n;
            }
        }
        if (got < 0) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: %s", path, line, why); goto out; }
        if (got == 0) break;
        if (r.n == 1 && r.f[0][0] == 0) { row_free(&r); continue; } /* blank line */
        if (line == 1) {
            /* a header is a first row that names the columns we look for */
            int t, p, l;
            recognise(&r, &t, &p, &l);
            int named = (cols->text && col_index(&r, cols->text, r.n) >= 0 && !is_int_str(cols->text)) ||
                        (cols->label && col_index(&r, cols->label, r.n) >= 0 && !is_int_str(cols->label));
            if (t >= 0 || named) {
                hdr = r;
                r.f = NULL; r.n = 0; r.cap = 0;
                have_hdr = 1;
                tcol = cols->text ? col_index(&hdr, cols->text, hdr.n) : t;
                pcol = cols->pair ? col_index(&hdr, cols->pair, hdr.n) : (cols->text ? -1 : p);
                lcol = cols->label ? col_index(&hdr, cols->label, hdr.n) : l;
                continue;
            }
        }
        if (!have_hdr && tcol == -1) {
            if (!cols->text) {
                rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no header with known column names (sentence, sentence1/sentence2, "
                                "question/sentence, premise/hypothesis, label); give --text-col and --label-col (names or 0-based indices)", path);
                goto out;
            }
            tcol = col_index(NULL, cols->text, r.n);
            pcol = cols->pair ? col_index(NULL, cols->pair, r.n) : -1;
            lcol = cols->label ? col_index(NULL, cols->label, r.n) : -1;
            have_hdr = -1;
        }
        if (tcol < 0) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: text column '%s' not found", path, cols->text ? cols->text : "?"); goto out; }
        if (cols->pair && pcol < 0) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: sentence-pair column '%s' not found", path, cols->pair); goto out; }
        if (need_labels && lcol < 0) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no label column%s%s%s (give --label-col)", path,
                            cols->label ? " '" : "", cols->label ? cols->label : "", cols->label ? "'" : "");
            goto out;
        }
        int need = tcol;
        if (pcol > need) need = pcol;
        if (lcol > need) need = lcol;
        if (r.n <= need) {
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: row has %d columns, expected at least %d", path, line, r.n, need + 1);
            goto out;
        }
        trim(r.f[tcol]);
        if (pcol >= 0) trim(r.f[pcol]);
        if (lcol >= 0) trim(r.f[lcol]);
        if (!r.f[tcol][0]) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: empty text", path, line); goto out; }
        if (lcol >= 0 && !r.f[lcol][0] && need_labels) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: empty label", path, line); goto out; }
        if (push_example(d, r.f[tcol], pcol >= 0 ? r.f[pcol] : NULL, lcol >= 0 ? r.f[lcol] : NULL)) {
            rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
        row_free(&r);
    }
    snprintf(d->text_col, sizeof d->text_col, "%s", have_hdr == 1 && tcol >= 0 ? hdr.f[tcol] : (cols->text ? cols->text : ""));
    snprintf(d->pair_col, sizeof d->pair_col, "%s", pcol >= 0 ? (have_hdr == 1 ? hdr.f[pcol] : cols->pair) : "");
    snprintf(d->label_col, sizeof d->label_col, "%s", lcol >= 0 ? (have_hdr == 1 ? hdr.f[lcol] : cols->label) : "");
out:
    free(fbuf);
    row_free(&r);
    row_free(&hdr);
    return rc;
}

static const char *json_field(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    static char num[64];
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_integer(v)) { snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v)); return num; }
    if (json_is_array(v)) {   /* a multi-label list: joined with commas */
        static char list[4096];
        size_t at = 0, i;
        json_t *e;
        list[0] = 0;
        json_array_foreach(v, i, e) {
            char one[64];
            const char *s = json_is_string(e) ? json_string_value(e) : NULL;
            if (!s && json_is_integer(e)) { snprintf(one, sizeof one, "%lld", (long long)json_integer_value(e)); s = one; }
            if (!s) return NULL;
            size_t l = strlen(s);
            if (at + l + 2 >= sizeof list) return NULL;
            if (at) list[at++] = ',';
            memcpy(list + at, s, l + 1);
            at += l;
        }
        return list;
    }
    return NULL;
}

static peftc_status load_jsonl(const char *path, const char *buf, size_t n, const data_cols *cols, int need_labels,
                               dataset *d, peftc_error *err)
{
    static const char *tn[] = {"sentence", "text", "premise", "question", "sentence1", "anchor"};
    static const char *pn[] = {"", "text_pair", "hypothesis", "sentence", "sentence2", "positive"};
    static const char *ln[] = {"label", "gold_label", "labels", "score"};
    size_t pos = 0;
    int line = 0;
    const char *tk = cols->text, *pk = cols->pair, *lk = cols->label;
    while (pos < n) {
        char *nl = memchr(buf + pos, '\n', n - pos);
        size_t end = nl ? (size_t)(nl - buf) : n;
        line++;
        size_t s = pos;
        pos = nl ? end + 1 : n;
        while (s < end && isspace((unsigned char)buf[s])) s++;
        if (s == end) continue;
        json_error_t je;
        json_t *o = json_loadb(buf + s, end - s, 0, &je);
        if (!o || !json_is_object(o)) {
            json_decref(o);
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: not a JSON object (%s)", path, line, o ? "wrong type" : je.text);
        }
        if (!tk) {
            for (size_t k = 0; k < sizeof tn / sizeof *tn && !tk; k++)
                if (json_field(o, tn[k])) { tk = tn[k]; if (pn[k][0] && json_field(o, pn[k])) pk = pn[k]; }
        }
        if (!lk) for (size_t k = 0; k < sizeof ln / sizeof *ln && !lk; k++) if (json_object_get(o, ln[k])) lk = ln[k];
        char tbuf[2][64];
        const char *text = tk ? json_field(o, tk) : NULL;
        char *text_c = text ? strdup(text) : NULL;
        const char *pair = pk ? json_field(o, pk) : NULL;
        char *pair_c = pair ? strdup(pair) : NULL;
        const char *label = lk ? json_field(o, lk) : NULL;
        (void)tbuf;
        peftc_status rc = PEFTC_OK;
        if (!text_c) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no text field%s%s", path, line, tk ? " " : " (give --text-col)", tk ? tk : "");
        else if (pk && !pair_c) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: sentence-pair field '%s' missing", path, line, pk);
        else if (need_labels && !label) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no label field%s%s", path, line, lk ? " " : " (give --label-col)", lk ? lk : "");
        else if (push_example(d, text_c, pair_c, label)) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
        free(text_c);
        free(pair_c);
        json_decref(o);
        if (rc) return rc;
    }
    snprintf(d->text_col, sizeof d->text_col, "%s", tk ? tk : "");
    snprintf(d->pair_col, sizeof d->pair_col, "%s", pk ? pk : "");
    snprintf(d->label_col, sizeof d->label_col, "%s", lk ? lk : "");
    return PEFTC_OK;
}

peftc_status data_load(const char *path, const data_cols *cols, int need_labels, dataset *d, peftc_error *err)
{
    memset(d, 0, sizeof *d);
    char *buf;
    size_t n;
    peftc_status rc = peftc_read_file(path, &buf, &n, err);
    if (rc) return rc;
    rc = data_parse(buf, n, path, cols, need_labels, d, err);
    free(buf);
    return rc;
}

peftc_status data_parse(const char *text, size_t n, const char *path, const data_cols *cols, int need_labels, dataset *d,
                        peftc_error *err)
{
    memset(d, 0, sizeof *d);
    if (!(d->path = strdup(path))) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
    peftc_status rc;
    const char *buf = text;
    if (ends_with(path, ".jsonl") || ends_with(path, ".json")) rc = load_jsonl(path, buf, n, cols, need_labels, d, err);
    else if (ends_with(path, ".csv")) rc = load_table(path, buf, n, 1, cols, need_labels, d, err);
    else rc = load_table(path, buf, n, 0, cols, need_labels, d, err);
    if (!rc && d->n == 0) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no examples (empty file?)", path);
    if (!rc) {
        d->label = malloc((size_t)d->n * sizeof *d->label);
        if (!d->label) rc = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
        else for (int i = 0; i < d->n; i++) d->label[i] = -1;
    }
    if (rc) data_free(d);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int cmp_num(const void *a, const void *b)
{
    long long x = atoll(*(char *const *)a), y = atoll(*(char *const *)b);
    return x < y ? -1 : x > y;
}

peftc_status labels_from_data(const dataset *d, label_set *ls, peftc_error *err)
{
    memset(ls, 0, sizeof *ls);
    char **all = malloc((size_t)d->n * sizeof *all);
    if (!all) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    int numeric = 1, k = 0;
    for (int i = 0; i < d->n; i++) {
        if (!d->label_str[i]) continue;
        all[k++] = d->label_str[i];
        if (!is_int_str(d->label_str[i])) numeric = 0;
    }
    /* integer labels are compared as numbers (" 1" == "01"): one beyond 64
     * bits would saturate and merge with its neighbours */
    for (int i = 0; i < k && numeric; i++) {
        errno = 0;
        (void)strtoll(all[i], NULL, 10);
        if (errno == ERANGE) {
            peftc_fail(err, PEFTC_ERR_INPUT, "%s: label '%.40s' is an integer beyond 64 bits (labels are ids or names)", d->path, all[i]);
            free(all);
            return PEFTC_ERR_INPUT;
        }
    }
    qsort(all, (size_t)k, sizeof *all, numeric ? cmp_num : cmp_str);
    ls->names = malloc((size_t)(k ? k : 1) * sizeof *ls->names);
    if (!ls->names) { free(all); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < k; i++)
        if (i == 0 || (numeric ? cmp_num(&all[i], &all[i - 1]) : strcmp(all[i], all[i - 1])))
            ls->names[ls->n++] = strdup(all[i]);
    free(all);
    if (ls->n < 2) {
        labels_free(ls);
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: the training data has fewer than two distinct labels", d->path);
    }
    if (ls->n > 1000) {
        labels_free(ls);
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: more than 1000 distinct labels (is the label column right?)", d->path);
    }
    return PEFTC_OK;
}

int labels_find(const label_set *ls, const char *name)
{
    for (int i = 0; i < ls->n; i++) {
        if (!strcmp(ls->names[i], name)) return i;
        if (is_int_str(name) && is_int_str(ls->names[i]) && atoll(name) == atoll(ls->names[i])) return i;
    }
    return -1;
}

peftc_status data_map_labels(dataset *d, const label_set *ls, peftc_error *err)
{
    for (int i = 0; i < d->n; i++) {
        if (!d->label_str[i]) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has no label", d->path, i + 1);
        int k = labels_find(ls, d->label_str[i]);
        if (k < 0) {
            char set[256] = "";
            for (int j = 0; j < ls->n && strlen(set) < 200; j++) { strcat(set, j ? ", " : ""); strncat(set, ls->names[j], 40); }
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has label '%s' outside the label set {%s}",
                              d->path, i + 1, d->label_str[i], set);
        }
        d->label[i] = k;
    }
    return PEFTC_OK;
}

peftc_status data_map_targets(dataset *d, peftc_error *err)
{
    free(d->target);
    if (!(d->target = malloc((size_t)d->n * sizeof *d->target))) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", d->path);
    for (int i = 0; i < d->n; i++) {
        const char *s = d->label_str[i];
        if (!s) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has no label", d->path, i + 1);
        char *end;
        double v = strtod(s, &end);
        while (*end == ' ') end++;
        if (end == s || *end || !isfinite(v) || fabs(v) > 1e30)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d: label '%.60s' (column %s) is not a number, which regression needs",
                              d->path, i + 1, s, d->label_col);
        d->target[i] = (float)v;
        d->label[i] = 0;
    }
    return PEFTC_OK;
}

peftc_status data_keep_min_score(dataset *d, double min, peftc_error *err)
{
    int k = 0;
    for (int i = 0; i < d->n; i++) {
        const char *s = d->label_str[i];
        if (!s) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has no score (label column) for --min-score", d->path, i + 1);
        char *end;
        double v = strtod(s, &end);
        while (*end == ' ') end++;
        if (end == s || *end || !isfinite(v))
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d: score '%.60s' (column %s) is not a number, which --min-score needs",
                              d->path, i + 1, s, d->label_col);
        if (v >= min) {   /* kept, moved down in file order */
            char *t = d->text[i], *p = d->pair[i], *l = d->label_str[i];
            d->text[i] = d->pair[i] = d->label_str[i] = NULL;
            d->text[k] = t; d->pair[k] = p; d->label_str[k] = l;
            d->label[k] = d->label[i];
            k++;
        } else {
            free(d->text[i]); free(d->pair[i]); free(d->label_str[i]);
            d->text[i] = d->pair[i] = d->label_str[i] = NULL;
        }
    }
    int n0 = d->n;
    d->n = k;
    if (k == 0) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: none of the %d examples has a score >= %g (--min-score)", d->path, n0, min);
    return PEFTC_OK;
}

peftc_status data_pairs_apart(dataset *d, peftc_error *err)
{
    int n = d->n;
    for (int i = 0; i < n; i++)
        if (!d->pair[i] || !d->pair[i][0])
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has one text; an embedding pair needs two (anchor and positive: "
                              "--text-col and --text-pair-col, or a header such as sentence1 / sentence2)", d->path, i + 1);
    if (n > (1 << 29)) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: too many pairs (%d)", d->path, n);
    char **t = realloc(d->text, (size_t)2 * n * sizeof *t);
    if (t) d->text = t;
    char **p = realloc(d->pair, (size_t)2 * n * sizeof *p);
    if (p) d->pair = p;
    char **l = realloc(d->label_str, (size_t)2 * n * sizeof *l);
    if (l) d->label_str = l;
    int *lb = realloc(d->label, (size_t)2 * n * sizeof *lb);
    if (lb) d->label = lb;
    float *tg = d->target ? realloc(d->target, (size_t)2 * n * sizeof *tg) : NULL;
    if (tg) d->target = tg;
    if (!t || !p || !l || !lb || (d->target && !tg)) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", d->path);
    for (int i = 0; i < n; i++) {
        d->text[n + i] = d->pair[i];
        d->pair[i] = d->pair[n + i] = NULL;
        d->label_str[n + i] = d->label_str[i] ? strdup(d->label_str[i]) : NULL;
        d->label[n + i] = d->label[i];
        if (d->target) d->target[n + i] = d->target[i];
        if (d->label_str[i] && !d->label_str[n + i]) {
            d->n = n + i;   /* what is there is freed with the rest */
            return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", d->path);
        }
    }
    d->n = 2 * n;
    d->n_pairs = n;
    return PEFTC_OK;
}

peftc_status data_tokenize(dataset *d, encode_fn encode, const void *user, int max_len, peftc_error *err)
{
    free(d->ids); free(d->tts); free(d->len); free(d->off);
    d->ids = malloc((size_t)d->n * max_len * sizeof *d->ids);
    d->tts = malloc((size_t)d->n * max_len * sizeof *d->tts);
    d->len = malloc((size_t)d->n * sizeof *d->len);
    d->off = malloc((size_t)d->n * sizeof *d->off);
    if (!d->ids || !d->tts || !d->len || !d->off) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", d->path);
    size_t pos = 0;
    d->n_tokens = 0;
    for (int i = 0; i < d->n; i++) {
        peftc_error e2 = {0};
        int n;
        if (encode(user, d->text[i], d->pair[i], d->ids + pos, d->tts + pos, &n, &e2))
            return peftc_fail(err, e2.code, "%s: example %d: %s", d->path, i + 1, e2.msg);
        d->off[i] = pos;
        d->len[i] = n;
        pos += (size_t)n;
        d->n_tokens += n;
    }
    return PEFTC_OK;
}

/* The i-th name of a comma-separated list into out (trimmed); returns 0 past the end. */
static int list_item(const char *s, int i, char *out, size_t cap)
{
    for (int k = 0; k < i && s; k++) { s = strchr(s, ','); if (s) s++; }
    if (!s) return 0;
    const char *e = strchr(s, ',');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    while (n && (*s == ' ' || *s == '[' || *s == '"' || *s == '\'')) { s++; n--; }
    while (n && (s[n - 1] == ' ' || s[n - 1] == ']' || s[n - 1] == '"' || s[n - 1] == '\'')) n--;
    if (n >= cap) n = cap - 1;
    memcpy(out, s, n);
    out[n] = 0;
    return 1;
}

peftc_status labels_from_multi(const dataset *d, label_set *ls, peftc_error *err)
{
    /* every name once: a fake dataset of the names, through labels_from_data */
    dataset all = {0};
    size_t cap = 0;
    char one[256];
    peftc_status rc = PEFTC_OK;
    for (int i = 0; i < d->n && !rc; i++) {
        if (!d->label_str[i]) continue;
        for (int k = 0; list_item(d->label_str[i], k, one, sizeof one); k++) {
            if (!one[0]) continue;
            if ((size_t)all.n == cap) {
                cap = cap ? 2 * cap : 256;
                char **p = realloc(all.label_str, cap * sizeof *p);
                if (!p) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
                all.label_str = p;
            }
            if (!(all.label_str[all.n] = strdup(one))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            all.n++;
        }
    }
    all.path = d->path;
    if (!rc) rc = labels_from_data(&all, ls, err);
    for (int i = 0; i < all.n; i++) free(all.label_str[i]);
    free(all.label_str);
    return rc;
}

peftc_status data_map_multi(dataset *d, const label_set *ls, peftc_error *err)
{
    int K = ls->n;
    free(d->multi);
    if (!(d->multi = calloc((size_t)d->n * K, sizeof *d->multi))) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", d->path);
    d->n_multi = K;
    char one[256];
    for (int i = 0; i < d->n; i++) {
        const char *s = d->label_str[i];
        int got = 0;
        for (int k = 0; s && list_item(s, k, one, sizeof one); k++) {
            if (!one[0]) continue;
            int j = labels_find(ls, one);
            if (j < 0) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has label '%s' outside the label set", d->path, i + 1, one);
            d->multi[(size_t)i * K + j] = 1.0f;
            got++;
        }
        if (!got)
            return peftc_fail(err, PEFTC_ERR_INPUT, "%s: example %d has an empty label list (multi-label: names separated by commas)", d->path, i + 1);
        d->label[i] = 0;
    }
    return PEFTC_OK;
}

void data_free(dataset *d)
{
    for (int i = 0; i < d->n; i++) {
        free(d->text[i]);
        if (d->pair) free(d->pair[i]);
        if (d->label_str) free(d->label_str[i]);
    }
    free(d->text); free(d->pair); free(d->label_str); free(d->label);
    free(d->ids); free(d->tts); free(d->len); free(d->off); free(d->path);
    if (d->word_off) for (int i = 0; i < d->word_off[d->n]; i++) { free(d->word_line[i]); free(d->word_tag[i]); }
    free(d->word_off); free(d->word_line); free(d->word_tag); free(d->word_label); free(d->tok_word);
    free(d->target);
    free(d->multi);
    memset(d, 0, sizeof *d);
}

void labels_free(label_set *ls)
{
    for (int i = 0; i < ls->n; i++) free(ls->names[i]);
    free(ls->names);
    memset(ls, 0, sizeof *ls);
}
