/* metrics.c: generation metrics (peftc_score): GSM8K's final-number exact
 * match, ROUGE-1/2/L F-measure as Google's rouge-score 0.1.2 computes them
 * with use_stemmer=True, and corpus BLEU as sacreBLEU 2.x computes it by
 * default (13a tokenisation, exp smoothing, brevity penalty). Both reference
 * tools are ported rule for rule (their Python is quoted where the rule is
 * not obvious) so the numbers agree to rounding, which tests/check_metrics.sh
 * checks on real texts. */
#include "train/metrics.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ interning */

/* Tokens become small integers so n-grams compare as integer tuples. */
typedef struct intern {
    char **key;
    uint32_t *id;
    size_t cap, n;
} intern;

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h;
}

static void intern_free(intern *t)
{
    for (size_t i = 0; i < t->cap; i++) free(t->key[i]);
    free(t->key);
    free(t->id);
    memset(t, 0, sizeof *t);
}

static int intern_grow(intern *t)
{
    size_t cap = t->cap ? t->cap * 2 : 1024;
    char **key = calloc(cap, sizeof *key);
    uint32_t *id = calloc(cap, sizeof *id);
    if (!key || !id) { free(key); free(id); return -1; }
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->key[i]) continue;
        size_t j = fnv1a(t->key[i], strlen(t->key[i])) & (cap - 1);
        while (key[j]) j = (j + 1) & (cap - 1);
        key[j] = t->key[i];
        id[j] = t->id[i];
    }
    free(t->key);
    free(t->id);
    t->key = key;
    t->id = id;
    t->cap = cap;
    return 0;
}

/* The id of s[0..n) (new ids count up from 0); -1 out of memory. */
static int64_t intern_get(intern *t, const char *s, size_t n)
{
    if ((t->n + 1) * 2 > t->cap && intern_grow(t)) return -1;
    size_t j = fnv1a(s, n) & (t->cap - 1);
    while (t->key[j]) {
        if (strlen(t->key[j]) == n && !memcmp(t->key[j], s, n)) return t->id[j];
        j = (j + 1) & (t->cap - 1);
    }
    char *k = malloc(n + 1);
    if (!k) return -1;
    memcpy(k, s, n);
    k[n] = 0;
    t->key[j] = k;
    t->id[j] = (uint32_t)t->n;
    return (int64_t)t->n++;
}

/* A growable array of token ids. */
typedef struct ids {
    uint32_t *v;
    size_t n, cap;
} ids;

static int ids_push(ids *a, uint32_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

/* ------------------------------------------------------------ UTF-8 */

/* Decodes one code point at s (jansson has validated the UTF-8 of JSON
 * strings; a stray byte of plain text is taken as itself). */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *len)
{
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (k > n) k = 1;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) { k = 1; break; }
    *len = k;
    if (k == 1) return c;
    uint32_t u = c & (0x7F >> k);
    for (size_t i = 1; i < k; i++) u = (u << 6) | (s[i] & 0x3F);
    return u;
}

/* Python's str.isspace() (what str.split() and str.rstrip() break on). */
static int py_space(uint32_t u)
{
    return (u >= 0x09 && u <= 0x0D) || (u >= 0x1C && u <= 0x20) || u == 0x85 || u == 0xA0 || u == 0x1680 ||
           (u >= 0x2000 && u <= 0x200A) || u == 0x2028 || u == 0x2029 || u == 0x202F || u == 0x205F || u == 0x3000;
}

/* ------------------------------------------------------------ final number */

static int is_digit(int c) { return c >= '0' && c <= '9'; }

/* The number starting at s[i] (a digit, maybe after '-'): -?d[d,]*(.d+)?,
 * canonical (commas and trailing fractional zeros dropped, "-0" = "0") in
 * out; returns the index after it. */
static size_t number_at(const char *s, size_t i, char *out, size_t cap)
{
    size_t o = 0;
    int neg = s[i] == '-';
    if (neg) i++;
    char buf[128];
    size_t b = 0;
    while (is_digit(s[i]) || (s[i] == ',' && is_digit(s[i + 1]))) {
        if (s[i] != ',' && b + 1 < sizeof buf) buf[b++] = s[i];
        i++;
    }
    if (s[i] == '.' && is_digit(s[i + 1])) {
        size_t dot = b;
        if (b + 1 < sizeof buf) buf[b++] = '.';
        i++;
        while (is_digit(s[i])) { if (b + 1 < sizeof buf) buf[b++] = s[i]; i++; }
        while (b > dot + 1 && buf[b - 1] == '0') b--;
        if (b == dot + 1) b = dot;
    }
    /* leading zeros: "007" is 7 */
    size_t z = 0;
    while (z + 1 < b && buf[z] == '0' && buf[z + 1] != '.') z++;
    int zero = 1;
    for (size_t k = z; k < b; k++) if (buf[k] != '0' && buf[k] != '.') zero = 0;
    if (neg && !zero && o + 1 < cap) out[o++] = '-';
    for (size_t k = z; k < b && o + 1 < cap; k++) out[o++] = buf[k];
    out[o] = 0;
    return i;
}

int metric_final_number(const char *text, char *out, size_t cap)
{
    if (cap) out[0] = 0;
    if (!text || cap < 2) return 0;
    /* GSM8K's answers end "#### N": the number after the last marker wins */
    const char *m = NULL, *p = text;
    while ((p = strstr(p, "####"))) { m = p; p += 4; }
    const char *s = m ? m + 4 : text;
    int found = 0;
    for (size_t i = 0; s[i];) {
        if (is_digit(s[i]) || (s[i] == '-' && is_digit(s[i + 1]))) {
            i = number_at(s, i, out, cap);
            found = 1;
            if (m) break;   /* the first number after the marker */
        } else i++;
    }
    return found;
}

/* ------------------------------------------------------------ Porter stemmer */

/* NLTK's PorterStemmer in its default NLTK_EXTENSIONS mode (what rouge-score
 * calls), on lowercase ASCII words; w is a NUL-terminated buffer with room
 * for the word + 4 bytes (no rule lengthens a word by more). */
typedef struct pword {
    char *s;
    int n;
} pword;

static int vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

/* _is_consonant: a 'y' is a consonant unless after a consonant, decided over
 * a run of y's by parity. */
static int is_cons(const char *w, int i)
{
    if (vowel(w[i])) return 0;
    if (w[i] == 'y') {
        int neg = 0;
        while (i > 0 && w[i] == 'y') { neg = !neg; i--; }
        return (!vowel(w[i])) != neg;
    }
    return 1;
}

/* _consonant_flags, one letter at a time: 'y' is a consonant at 0, else
 * the opposite of the letter before. */
static int next_flag(const char *w, int i, int prev)
{
    if (vowel(w[i])) return 0;
    if (w[i] == 'y') return i == 0 ? 1 : !prev;
    return 1;
}

/* _measure: the count of "vc" in the c/v sequence of w[0..n). */
static int measure(const char *w, int n)
{
    int m = 0, prev = 1;
    for (int i = 0; i < n; i++) {
        int f = next_flag(w, i, prev);
        if (i > 0 && !prev && f) m++;
        prev = f;
    }
    return m;
}

static int contains_vowel(const char *w, int n)
{
    int prev = 1;
    for (int i = 0; i < n; i++) {
        prev = next_flag(w, i, prev);
        if (!prev) return 1;
    }
    return 0;
}

static int ends_double_cons(const char *w, int n) { return n >= 2 && w[n - 1] == w[n - 2] && is_cons(w, n - 1); }

static int ends_cvc(const char *w, int n)
{
    return (n >= 3 && is_cons(w, n - 3) && !is_cons(w, n - 2) && is_cons(w, n - 1) && w[n - 1] != 'w' &&
            w[n - 1] != 'x' && w[n - 1] != 'y') ||
           (n == 2 && !is_cons(w, 0) && is_cons(w, 1));
}

static int ends(const pword *w, const char *suf)
{
    int k = (int)strlen(suf);
    return w->n >= k && !memcmp(w->s + w->n - k, suf, (size_t)k);
}

static void set_end(pword *w, int stem_len, const char *rep)
{
    int k = (int)strlen(rep);
    memcpy(w->s + stem_len, rep, (size_t)k);
    w->n = stem_len + k;
    w->s[w->n] = 0;
}

/* A rule's condition on the stem w[0..n) (the word without the suffix). */
enum { C_NONE, C_M0, C_M1, C_LOGI, C_ION };

typedef struct rule {
    const char *suf, *rep;
    int cond;
} rule;

/* _apply_rule_list for rules without "*d": the first suffix that matches
 * decides (its condition failing leaves the word). */
static void apply_rules(pword *w, const rule *r, int nr, int word_len_for_logi)
{
    for (int i = 0; i < nr; i++) {
        if (!ends(w, r[i].suf)) continue;
        int sl = w->n - (int)strlen(r[i].suf), ok;
        switch (r[i].cond) {
        case C_M0: ok = measure(w->s, sl) > 0; break;
        case C_M1: ok = measure(w->s, sl) > 1; break;
        case C_LOGI: ok = measure(w->s, word_len_for_logi - 3) > 0; break;   /* word[:-3] */
        case C_ION: ok = measure(w->s, sl) > 1 && sl > 0 && (w->s[sl - 1] == 's' || w->s[sl - 1] == 't'); break;
        default: ok = 1;
        }
        if (ok) set_end(w, sl, r[i].rep);
        return;
    }
}

static void step1a(pword *w)
{
    if (ends(w, "ies") && w->n == 4) { set_end(w, 1, "ie"); return; }
    static const rule r[] = {{"sses", "ss", C_NONE}, {"ies", "i", C_NONE}, {"ss", "ss", C_NONE}, {"s", "", C_NONE}};
    apply_rules(w, r, 4, 0);
}

static void step1b(pword *w)
{
    if (ends(w, "ied")) { set_end(w, w->n - 3, w->n == 4 ? "ie" : "i"); return; }
    if (ends(w, "eed")) {
        if (measure(w->s, w->n - 3) > 0) set_end(w, w->n - 3, "ee");
        return;
    }
    int sl = -1;
    if (ends(w, "ed") && contains_vowel(w->s, w->n - 2)) sl = w->n - 2;
    else if (ends(w, "ing") && contains_vowel(w->s, w->n - 3)) sl = w->n - 3;
    if (sl < 0) return;
    w->n = sl;
    w->s[sl] = 0;
    /* the intermediate stem: at->ate, bl->ble, iz->ize, a double consonant
     * (not l, s, z) undoubled, or +e after a short syllable */
    if (ends(w, "at")) { set_end(w, w->n, "e"); return; }
    if (ends(w, "bl")) { set_end(w, w->n, "e"); return; }
    if (ends(w, "iz")) { set_end(w, w->n, "e"); return; }
    if (ends_double_cons(w->s, w->n)) {
        char last = w->s[w->n - 1];
        if (last != 'l' && last != 's' && last != 'z') { w->n -= 1; w->s[w->n] = 0; }
        /* "*d": stem = word[:-2] + word[-1], i.e. one letter dropped; or the word kept */
        return;
    }
    if (measure(w->s, w->n) == 1 && ends_cvc(w->s, w->n)) set_end(w, w->n, "e");
}

static void step1c(pword *w)
{
    /* NLTK: y -> i after a consonant that is not the word's first letter */
    if (ends(w, "y")) {
        int sl = w->n - 1;
        if (sl > 1 && is_cons(w->s, sl - 1)) set_end(w, sl, "i");
    }
}

static void step2(pword *w)
{
    if (ends(w, "alli") && measure(w->s, w->n - 4) > 0) {
        set_end(w, w->n - 4, "al");
        step2(w);
        return;
    }
    static const rule r[] = {
        {"ational", "ate", C_M0}, {"tional", "tion", C_M0}, {"enci", "ence", C_M0}, {"anci", "ance", C_M0},
        {"izer", "ize", C_M0},    {"bli", "ble", C_M0},     {"alli", "al", C_M0},   {"entli", "ent", C_M0},
        {"eli", "e", C_M0},       {"ousli", "ous", C_M0},   {"ization", "ize", C_M0}, {"ation", "ate", C_M0},
        {"ator", "ate", C_M0},    {"alism", "al", C_M0},    {"iveness", "ive", C_M0}, {"fulness", "ful", C_M0},
        {"ousness", "ous", C_M0}, {"aliti", "al", C_M0},    {"iviti", "ive", C_M0}, {"biliti", "ble", C_M0},
        {"fulli", "ful", C_M0},   {"logi", "log", C_LOGI},
    };
    apply_rules(w, r, (int)(sizeof r / sizeof *r), w->n);
}

static void step3(pword *w)
{
    static const rule r[] = {{"icate", "ic", C_M0}, {"ative", "", C_M0}, {"alize", "al", C_M0}, {"iciti", "ic", C_M0},
                             {"ical", "ic", C_M0},  {"ful", "", C_M0},   {"ness", "", C_M0}};
    apply_rules(w, r, (int)(sizeof r / sizeof *r), 0);
}

static void step4(pword *w)
{
    static const rule r[] = {{"al", "", C_M1},   {"ance", "", C_M1}, {"ence", "", C_M1}, {"er", "", C_M1},
                             {"ic", "", C_M1},   {"able", "", C_M1}, {"ible", "", C_M1}, {"ant", "", C_M1},
                             {"ement", "", C_M1}, {"ment", "", C_M1}, {"ent", "", C_M1}, {"ion", "", C_ION},
                             {"ou", "", C_M1},   {"ism", "", C_M1},  {"ate", "", C_M1},  {"iti", "", C_M1},
                             {"ous", "", C_M1},  {"ive", "", C_M1},  {"ize", "", C_M1}};
    apply_rules(w, r, (int)(sizeof r / sizeof *r), 0);
}

static void step5(pword *w)
{
    if (ends(w, "e")) {
        int sl = w->n - 1, m = measure(w->s, sl);
        if (m > 1 || (m == 1 && !ends_cvc(w->s, sl))) { w->n = sl; w->s[sl] = 0; }
    }
    /* 5b: ll -> l when measure(word[:-1]) > 1 */
    if (ends(w, "ll") && measure(w->s, w->n - 1) > 1) { w->n -= 1; w->s[w->n] = 0; }
}

void metric_porter_stem(char *s)
{
    static const char *const pool[][2] = {
        {"sky", "sky"},     {"skies", "sky"},    {"dying", "die"},       {"lying", "lie"},   {"tying", "tie"},
        {"news", "news"},   {"innings", "inning"}, {"inning", "inning"}, {"outings", "outing"},
        {"outing", "outing"}, {"cannings", "canning"}, {"canning", "canning"}, {"howe", "howe"},
        {"proceed", "proceed"}, {"exceed", "exceed"}, {"succeed", "succeed"}};
    for (size_t i = 0; i < sizeof pool / sizeof *pool; i++)
        if (!strcmp(s, pool[i][0])) { strcpy(s, pool[i][1]); return; }
    pword w = {s, (int)strlen(s)};
    if (w.n <= 2) return;
    step1a(&w);
    step1b(&w);
    step1c(&w);
    step2(&w);
    step3(&w);
    step4(&w);
    step5(&w);
}

/* ------------------------------------------------------------ ROUGE */

/* rouge-score's tokenize(text, stemmer): lowercase, every run of characters
 * outside [a-z0-9] a separator, words longer than 3 letters stemmed. Python's
 * lower() maps two non-ASCII letters onto ASCII: U+0130 (to "i" + a combining
 * dot) and the Kelvin sign U+212A (to "k"). */
static peftc_status rouge_tokens(const char *text, intern *tab, ids *out, peftc_error *err)
{
    out->n = 0;
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text), i = 0;
    char *word = malloc(n + 8);
    if (!word) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
    size_t wl = 0;
    peftc_status rc = PEFTC_OK;
    for (;;) {
        int c = -1;   /* the ASCII letter or digit here, -1 a separator, -2 the end */
        int sep_after = 0;
        if (i >= n) c = -2;
        else if (s[i] < 0x80) {
            c = s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i];
            if (!((c >= 'a' && c <= 'z') || is_digit(c))) c = -1;
            i++;
        } else {
            size_t len;
            uint32_t u = utf8_next(s + i, n - i, &len);
            i += len;
            if (u == 0x130) { c = 'i'; sep_after = 1; }
            else if (u == 0x212A) c = 'k';
        }
        if (c >= 0) word[wl++] = (char)c;
        if ((c < 0 || sep_after) && wl) {
            word[wl] = 0;
            if (wl > 3) metric_porter_stem(word);
            int64_t id = intern_get(tab, word, strlen(word));
            if (id < 0 || ids_push(out, (uint32_t)id)) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            wl = 0;
        }
        if (c == -2) break;
    }
    free(word);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double fmeasure(double p, double r) { return p + r > 0 ? 2 * p * r / (p + r) : 0.0; }

/* ROUGE-N F of the n-grams (n = 1, 2) of pred against ref: overlap = the sum
 * of min counts; precision over max(#pred n-grams, 1), recall over
 * max(#ref n-grams, 1). */
static double rouge_n(const ids *ref, const ids *pred, int nn, uint64_t *a, uint64_t *b)
{
    size_t na = ref->n >= (size_t)nn ? ref->n - nn + 1 : 0, nb = pred->n >= (size_t)nn ? pred->n - nn + 1 : 0;
    for (size_t i = 0; i < na; i++) a[i] = nn == 1 ? ref->v[i] : ((uint64_t)ref->v[i] << 32) | ref->v[i + 1];
    for (size_t i = 0; i < nb; i++) b[i] = nn == 1 ? pred->v[i] : ((uint64_t)pred->v[i] << 32) | pred->v[i + 1];
    qsort(a, na, sizeof *a, cmp_u64);
    qsort(b, nb, sizeof *b, cmp_u64);
    size_t i = 0, j = 0, overlap = 0;
    while (i < na && j < nb) {
        if (a[i] < b[j]) i++;
        else if (a[i] > b[j]) j++;
        else { overlap++; i++; j++; }
    }
    double p = (double)overlap / (double)(nb > 0 ? nb : 1), r = (double)overlap / (double)(na > 0 ? na : 1);
    return fmeasure(p, r);
}

/* ROUGE-L F: the longest common subsequence over the token lists (0 when
 * either is empty). */
static double rouge_l(const ids *ref, const ids *pred, uint32_t *row)
{
    if (!ref->n || !pred->n) return 0.0;
    size_t m = pred->n;
    memset(row, 0, (m + 1) * sizeof *row);
    for (size_t i = 0; i < ref->n; i++) {
        uint32_t diag = 0;
        for (size_t j = 1; j <= m; j++) {
            uint32_t up = row[j];
            row[j] = ref->v[i] == pred->v[j - 1] ? diag + 1 : (row[j] > row[j - 1] ? row[j] : row[j - 1]);
            diag = up;
        }
    }
    double lcs = row[m];
    return fmeasure(lcs / (double)pred->n, lcs / (double)ref->n);
}

/* ------------------------------------------------------------ BLEU */

/* sacreBLEU's 13a tokeniser (tokenizer_13a.py + tokenizer_re.py) on the
 * rstrip()ed segment; *out malloc'd. The four regular expressions run one
 * after the other over the whole line, each scanning left to right over
 * non-overlapping matches as re.sub does; on UTF-8 bytes they give what they
 * give on characters, since none of the characters they name is non-ASCII. */
static peftc_status tok13a(const char *seg, char **out, peftc_error *err)
{
    size_t n = strlen(seg);
    /* rstrip(): trailing Python whitespace */
    size_t end = 0;
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t u = utf8_next((const unsigned char *)seg + i, n - i, &len);
        i += len;
        if (!py_space(u)) end = i;
    }
    n = end;
    size_t cap = 24 * (n + 2) + 16;   /* pass 1 triples, passes 2-4 at most double */
    char *a = malloc(cap), *b = malloc(cap);
    if (!a || !b) { free(a); free(b); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
    /* <skipped> removed, "-\n" joined, "\n" a space, then the four entities when there is an '&' */
    size_t k = 0;
    a[k++] = ' ';
    {
        char *t = malloc(n + 1), *u = malloc(n + 1);
        if (!t || !u) { free(t); free(u); free(a); free(b); return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); }
        memcpy(t, seg, n);
        t[n] = 0;
        static const char *const reps[][2] = {{"<skipped>", ""}, {"-\n", ""}, {"\n", " "}, {"&quot;", "\""},
                                              {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}};
        int has_amp = 0;
        for (int r = 0; r < 7; r++) {
            if (r == 3) has_amp = strchr(t, '&') != NULL;
            if (r >= 3 && !has_amp) break;
            size_t fl = strlen(reps[r][0]), rl = strlen(reps[r][1]), o = 0;
            for (size_t i = 0; t[i];) {
                if (!strncmp(t + i, reps[r][0], fl)) { memcpy(u + o, reps[r][1], rl); o += rl; i += fl; }
                else u[o++] = t[i++];
            }
            u[o] = 0;
            char *x = t; t = u; u = x;
        }
        size_t tl = strlen(t);
        memcpy(a + k, t, tl);
        k += tl;
        free(t);
        free(u);
    }
    a[k++] = ' ';
    a[k] = 0;
    /* 1: ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 " */
    size_t o = 0;
    for (size_t i = 0; i < k; i++) {
        unsigned c = (unsigned char)a[i];
        int cls = (c >= 0x7B && c <= 0x7E) || (c >= 0x5B && c <= 0x60) || (c >= 0x20 && c <= 0x26) ||
                  (c >= 0x28 && c <= 0x2B) || (c >= 0x3A && c <= 0x40) || c == 0x2F;
        if (cls) { b[o++] = ' '; b[o++] = (char)c; b[o++] = ' '; }
        else b[o++] = (char)c;
    }
    k = o;
    /* 2: ([^0-9])([\.,]) -> "\1 \2 " */
    o = 0;
    for (size_t i = 0; i < k;) {
        if (i + 1 < k && !is_digit(b[i]) && (b[i + 1] == '.' || b[i + 1] == ',')) {
            a[o++] = b[i]; a[o++] = ' '; a[o++] = b[i + 1]; a[o++] = ' ';
            i += 2;
        } else a[o++] = b[i++];
    }
    k = o;
    /* 3: ([\.,])([^0-9]) -> " \1 \2" */
    o = 0;
    for (size_t i = 0; i < k;) {
        if (i + 1 < k && (a[i] == '.' || a[i] == ',') && !is_digit(a[i + 1])) {
            b[o++] = ' '; b[o++] = a[i]; b[o++] = ' '; b[o++] = a[i + 1];
            i += 2;
        } else b[o++] = a[i++];
    }
    k = o;
    /* 4: ([0-9])(-) -> "\1 \2 " */
    o = 0;
    for (size_t i = 0; i < k;) {
        if (i + 1 < k && is_digit(b[i]) && b[i + 1] == '-') {
            a[o++] = b[i]; a[o++] = ' '; a[o++] = '-'; a[o++] = ' ';
            i += 2;
        } else a[o++] = b[i++];
    }
    a[o] = 0;
    free(b);
    *out = a;
    return PEFTC_OK;
}

/* The tokens of a tokenised line split on Python whitespace, interned. */
static peftc_status split_ws(const char *s, intern *tab, ids *out, peftc_error *err)
{
    out->n = 0;
    size_t n = strlen(s), start = 0, i = 0;
    int in = 0;
    while (i <= n) {
        size_t len = 1;
        int sp = i == n;
        if (!sp) sp = py_space(utf8_next((const unsigned char *)s + i, n - i, &len));
        if (sp) {
            if (in) {
                int64_t id = intern_get(tab, s + start, i - start);
                if (id < 0 || ids_push(out, (uint32_t)id)) return peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory");
            }
            in = 0;
        } else if (!in) { in = 1; start = i; }
        i += len;
    }
    return PEFTC_OK;
}

/* An n-gram (n <= 4) of token ids, sortable. */
typedef struct gram {
    uint32_t t[4];
    int n;
} gram;

static int cmp_gram(const void *x, const void *y)
{
    const gram *a = x, *b = y;
    if (a->n != b->n) return a->n - b->n;
    for (int i = 0; i < a->n; i++)
        if (a->t[i] != b->t[i]) return a->t[i] < b->t[i] ? -1 : 1;
    return 0;
}

static size_t grams_of(const ids *w, gram *g)
{
    size_t k = 0;
    for (int n = 1; n <= 4; n++)
        for (size_t i = 0; i + n <= w->n; i++) {
            memset(&g[k], 0, sizeof g[k]);
            g[k].n = n;
            memcpy(g[k].t, w->v + i, (size_t)n * sizeof(uint32_t));
            k++;
        }
    qsort(g, k, sizeof *g, cmp_gram);
    return k;
}

/* ------------------------------------------------------------ scoring */

int metric_parse(const char *names)
{
    int mask = 0;
    const char *p = names;
    while (p && *p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 9 && !strncmp(p, "em-number", 9)) mask |= PEFTC_METRIC_EM_NUMBER;
        else if (n == 5 && !strncmp(p, "rouge", 5)) mask |= PEFTC_METRIC_ROUGE;
        else if (n == 4 && !strncmp(p, "bleu", 4)) mask |= PEFTC_METRIC_BLEU;
        else return 0;
        p = e ? e + 1 : NULL;
    }
    return mask;
}

peftc_status peftc_score(int metrics, const char *const *preds, const char *const *refs, int n, peftc_score_result *r,
                         double *per, peftc_error *err)
{
    memset(r, 0, sizeof *r);
    if (n < 1) return peftc_fail(err, PEFTC_ERR_INPUT, "score: no prediction/reference pairs");
    if (!(metrics & (PEFTC_METRIC_EM_NUMBER | PEFTC_METRIC_ROUGE | PEFTC_METRIC_BLEU)))
        return peftc_fail(err, PEFTC_ERR_INPUT, "score: no metric (em-number, rouge, bleu)");
    r->n = n;
    r->metrics = metrics;
    peftc_status rc = PEFTC_OK;
    intern tab = {0};
    ids a = {0}, b = {0};
    uint64_t *ga = NULL, *gb = NULL;
    uint32_t *row = NULL;
    gram *gh = NULL, *gr = NULL;
    size_t cap = 0, gcap = 0;
    long long correct[4] = {0}, total[4] = {0};
    int n_em = 0, n_pred_num = 0;
    for (int i = 0; i < n && !rc; i++) {
        double *pe = per ? per + (size_t)i * PEFTC_SCORE_PER : NULL;
        if (pe) for (int k = 0; k < PEFTC_SCORE_PER; k++) pe[k] = NAN;
        if (metrics & PEFTC_METRIC_EM_NUMBER) {
            char x[128], y[128];
            int hx = metric_final_number(preds[i], x, sizeof x), hy = metric_final_number(refs[i], y, sizeof y);
            int em = hx && hy && !strcmp(x, y);
            n_pred_num += hx;
            n_em += em;
            if (pe) pe[0] = em;
        }
        if (metrics & PEFTC_METRIC_ROUGE) {
            if ((rc = rouge_tokens(refs[i], &tab, &a, err)) || (rc = rouge_tokens(preds[i], &tab, &b, err))) break;
            size_t need = (a.n > b.n ? a.n : b.n) + 2;
            if (need > cap) {
                free(ga); free(gb); free(row);
                ga = malloc(need * sizeof *ga);
                gb = malloc(need * sizeof *gb);
                row = malloc(need * sizeof *row);
                cap = need;
                if (!ga || !gb || !row) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            }
            double r1 = rouge_n(&a, &b, 1, ga, gb), r2 = rouge_n(&a, &b, 2, ga, gb), rl = rouge_l(&a, &b, row);
            r->rouge1 += r1;
            r->rouge2 += r2;
            r->rougeL += rl;
            if (pe) { pe[1] = r1; pe[2] = r2; pe[3] = rl; }
        }
        if (metrics & PEFTC_METRIC_BLEU) {
            char *th = NULL, *tr = NULL;
            if ((rc = tok13a(preds[i], &th, err)) || (rc = tok13a(refs[i], &tr, err)) ||
                (rc = split_ws(th, &tab, &a, err)) || (rc = split_ws(tr, &tab, &b, err))) {
                free(th); free(tr);
                break;
            }
            free(th);
            free(tr);
            size_t need = 4 * (a.n > b.n ? a.n : b.n) + 4;
            if (need > gcap) {
                free(gh); free(gr);
                gh = malloc(need * sizeof *gh);
                gr = malloc(need * sizeof *gr);
                gcap = need;
                if (!gh || !gr) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            }
            size_t nh = grams_of(&a, gh), nr = grams_of(&b, gr);
            for (int k = 0; k < 4; k++) total[k] += a.n >= (size_t)(k + 1) ? (long long)(a.n - k) : 0;
            size_t x = 0, y = 0;
            while (x < nh && y < nr) {
                int c = cmp_gram(&gh[x], &gr[y]);
                if (c < 0) x++;
                else if (c > 0) y++;
                else { correct[gh[x].n - 1]++; x++; y++; }
            }
            r->sys_len += (long long)a.n;
            r->ref_len += (long long)b.n;
        }
    }
    intern_free(&tab);
    free(a.v); free(b.v); free(ga); free(gb); free(row); free(gh); free(gr);
    if (rc) return rc;
    r->em = (double)n_em / n;
    r->n_pred_numbers = n_pred_num;
    r->rouge1 /= n;
    r->rouge2 /= n;
    r->rougeL /= n;
    if (metrics & PEFTC_METRIC_BLEU) {
        /* sacrebleu BLEU.compute_bleu, smooth_method 'exp', no effective order */
        double bp = 1.0;
        if (r->sys_len < r->ref_len) bp = r->sys_len > 0 ? exp(1.0 - (double)r->ref_len / (double)r->sys_len) : 0.0;
        r->bleu_bp = bp;
        int any = 0;
        for (int k = 0; k < 4; k++) any |= correct[k] != 0;
        for (int k = 0; k < 4; k++) { r->bleu_correct[k] = correct[k]; r->bleu_total[k] = total[k]; }
        if (!any) { r->bleu = 0.0; return PEFTC_OK; }
        double smooth = 1.0, logsum = 0;
        for (int k = 0; k < 4; k++) {
            if (total[k] == 0) break;
            if (correct[k] == 0) { smooth *= 2; r->bleu_precisions[k] = 100.0 / (smooth * (double)total[k]); }
            else r->bleu_precisions[k] = 100.0 * (double)correct[k] / (double)total[k];
        }
        for (int k = 0; k < 4; k++) logsum += r->bleu_precisions[k] == 0.0 ? -9999999999.0 : log(r->bleu_precisions[k]);
        r->bleu = bp * exp(logsum / 4.0);
    }
    return PEFTC_OK;
}

int peftc_metric_parse(const char *names) { return metric_parse(names); }

/* ------------------------------------------------------------ reading */

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

peftc_status peftc_score_read(const char *path, const char *field, char ***texts, int **index, int *n,
                              peftc_error *err)
{
    *texts = NULL;
    if (index) *index = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot open", path);
    int jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json");
    char **t = NULL;
    int *ix = NULL, cnt = 0, cap = 0, line = 0;
    char *buf = NULL;
    size_t bcap = 0;
    ssize_t len;
    peftc_status rc = PEFTC_OK;
    char fbuf[64] = "";
    if (field) snprintf(fbuf, sizeof fbuf, "%s", field);
    while ((len = getline(&buf, &bcap, f)) >= 0) {
        line++;
        if (len > 0 && buf[len - 1] == '\n') buf[--len] = 0;
        if (len > 0 && buf[len - 1] == '\r') buf[--len] = 0;
        if (jsonl && len == 0) continue;
        if (cnt == cap) {
            if (cap > (1 << 26)) { rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: more than %d records", path, 1 << 26); break; }
            int nc = cap ? cap * 2 : 256;
            char **nt = realloc(t, (size_t)nc * sizeof *nt);
            if (nt) t = nt;
            int *ni = nt ? realloc(ix, (size_t)nc * sizeof *ni) : NULL;
            if (!nt || !ni) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            ix = ni;
            cap = nc;
        }
        ix[cnt] = -1;
        if (!jsonl) {
            if (!(t[cnt] = strdup(buf))) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
            cnt++;
            continue;
        }
        json_error_t je;
        json_t *o = json_loadb(buf, (size_t)len, 0, &je);
        if (!o || !json_is_object(o)) {
            json_decref(o);
            rc = peftc_fail(err, PEFTC_ERR_FORMAT, "%s:%d: not a JSON object%s%s", path, line, o ? "" : ": ", o ? "" : je.text);
            break;
        }
        if (!*fbuf) {
            static const char *const names[] = {"prediction", "reference", "response", "answer", "output", "summary", "target", "text"};
            for (size_t k = 0; k < sizeof names / sizeof *names && !*fbuf; k++)
                if (json_is_string(json_object_get(o, names[k]))) snprintf(fbuf, sizeof fbuf, "%s", names[k]);
            if (!*fbuf) {
                json_decref(o);
                rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field prediction, reference, response, answer, output, summary, target or text (name one)", path, line);
                break;
            }
        }
        json_t *v = json_object_get(o, fbuf), *id = json_object_get(o, "index");
        if (!json_is_string(v)) {
            json_decref(o);
            rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s:%d: no string field \"%s\"", path, line, fbuf);
            break;
        }
        if (json_is_integer(id) && json_integer_value(id) >= 0 && json_integer_value(id) < (1 << 30)) ix[cnt] = (int)json_integer_value(id);
        t[cnt] = strdup(json_string_value(v));
        json_decref(o);
        if (!t[cnt]) { rc = peftc_fail(err, PEFTC_ERR_NOMEM, "out of memory"); break; }
        cnt++;
    }
    if (!rc && ferror(f)) rc = peftc_fail(err, PEFTC_ERR_IO, "%s: read error", path);
    free(buf);
    fclose(f);
    if (!rc && cnt == 0) rc = peftc_fail(err, PEFTC_ERR_INPUT, "%s: no records", path);
    if (rc) {
        for (int i = 0; i < cnt; i++) free(t[i]);
        free(t);
        free(ix);
        return rc;
    }
    *texts = t;
    if (index) *index = ix;
    else free(ix);
    *n = cnt;
    return PEFTC_OK;
}
