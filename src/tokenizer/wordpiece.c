/* wordpiece.c: the BERT WordPiece tokenizer, equal to Hugging Face's
 * `tokenizers` (BertNormalizer + BertPreTokenizer + WordPiece +
 * TemplateProcessing "[CLS] A [SEP] (B [SEP])" + LongestFirst truncation).
 *
 * Pipeline for one text (HF order):
 *   1. the raw text is validated as UTF-8 and decoded to code points;
 *   2. added tokens with normalized=false (the special tokens [CLS], [SEP],
 *      [PAD], [UNK], [MASK] of a BERT tokenizer.json) are matched in the raw
 *      text (leftmost-longest, case-sensitive) and become their ids directly;
 *   3. every other piece is normalised: clean text (drop NUL, U+FFFD and
 *      control/format/private-use chars -- unassigned code points stay;
 *      '\t' '\n' '\r' and White_Space -> ' '; \v \f U+0085 are dropped), pad CJK
 *      ideographs with spaces, strip accents (NFD, drop Mn), then lowercase --
 *      strip_accents runs *before* lowercase, exactly as in HF, and lowercase
 *      is Rust's char::to_lowercase (U+0130 becomes "i" U+0307);
 *   4. added tokens with normalized=true are matched in the normalised text;
 *   5. pre-tokenisation splits on whitespace and isolates punctuation;
 *   6. each word goes through greedy longest-match-first WordPiece with the
 *      "##" continuation prefix; a word of more than max_input_chars_per_word
 *      code points, or with an unmatchable piece, becomes [UNK].
 *
 * Unicode data: utf8proc (Unicode 15) for categories, decomposition and
 * lowercase.  HF's Rust crates use older tables for the general categories
 * (unicode_categories) and NFD (unicode-normalization-alignments), and newer
 * ones (Rust std, regex: Unicode 16) for lowercase and \w; the code points
 * where they disagree with utf8proc were found by comparing every code point
 * against the reference and are listed in the hf_* tables below.
 *
 * Truncation is HF's truncate_encodings (LongestFirst, stride 0) on the
 * budget t = max_len - 3 (pair) or max_len - 2: with the shorter side n1 and
 * the longer n2 (on a tie the text counts as the shorter), the shorter keeps
 * min(n1, floor(t/2)) and the longer gets the rest of t.  This differs from
 * "remove one token at a time from the longer" on odd budgets and ties.
 */
#include "tokenizer/wordpiece.h"
#include "tokenizer/utf8.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ------------------------------------------------------------ buffers */

typedef struct { uint32_t *v; size_t n, cap; } cpbuf;
typedef struct { int32_t *v; size_t n, cap; } idbuf;

static int cp_reserve(cpbuf *b, size_t extra)
{
    if (extra > SIZE_MAX / 8 - b->n) return -1;
    size_t need = b->n + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) return -1;
    b->v = v;
    b->cap = cap;
    return 0;
}

static int id_push(idbuf *b, int32_t id)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        if (cap > SIZE_MAX / 8) return -1;
        int32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return 0;
}

/* ------------------------------------------------------------- UTF-8 */


/* ---------------------------------------------------- character classes */

/* Where HF's Unicode tables differ from utf8proc's (Unicode 15).  Generated
 * by running every code point U+0000..U+10FFFF through the reference's
 * components (tokenizers 0.23.3: BertNormalizer with one option at a time,
 * NFD, BertPreTokenizer) and through the utf8proc-based functions below, and
 * keeping the differences.  HF's general categories are older than Unicode 15
 * (unicode_categories), its NFD data too, while its lowercase is Rust's std
 * (newer).  tests/check_tokenizer.sh sweeps every code point to keep this
 * honest. */
/* clean_text: is_control differs from utf8proc's Cc/Cf/Co/Cs */
static const uint32_t hf_control_flip[][2] = {
    {0x890, 0x891}, {0x8E2, 0x8E2}, {0x110CD, 0x110CD}, {0x13430, 0x1343F},
};
/* strip_accents: Mn differs from utf8proc's category */
static const uint32_t hf_mn_flip[][2] = {
    {0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8E1}, {0x9FE, 0x9FE}, {0xAFA, 0xAFF}, {0xB55, 0xB55},
    {0xC04, 0xC04}, {0xC3C, 0xC3C}, {0xD00, 0xD00}, {0xD3B, 0xD3C}, {0xD81, 0xD81}, {0xEBA, 0xEBA},
    {0xECE, 0xECE}, {0x1734, 0x1734}, {0x180F, 0x180F}, {0x1885, 0x1886}, {0x1ABF, 0x1ACE},
    {0x1DF6, 0x1DFB}, {0xA82C, 0xA82C}, {0xA8C5, 0xA8C5}, {0xA8FF, 0xA8FF}, {0xA9BD, 0xA9BD},
    {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x11073, 0x11074}, {0x110C2, 0x110C2},
    {0x111C9, 0x111C9}, {0x111CF, 0x111CF}, {0x1123E, 0x1123E}, {0x11241, 0x11241},
    {0x1133B, 0x1133B}, {0x11438, 0x1143F}, {0x11442, 0x11444}, {0x11446, 0x11446},
    {0x1145E, 0x1145E}, {0x1182F, 0x11837}, {0x11839, 0x1183A}, {0x1193B, 0x1193C},
    {0x1193E, 0x1193E}, {0x11943, 0x11943}, {0x119D4, 0x119D7}, {0x119DA, 0x119DB},
    {0x119E0, 0x119E0}, {0x11A01, 0x11A0A}, {0x11A33, 0x11A38}, {0x11A3B, 0x11A3E},
    {0x11A47, 0x11A47}, {0x11A51, 0x11A56}, {0x11A59, 0x11A5B}, {0x11A8A, 0x11A96},
    {0x11A98, 0x11A99}, {0x11C30, 0x11C36}, {0x11C38, 0x11C3D}, {0x11C3F, 0x11C3F},
    {0x11C92, 0x11CA7}, {0x11CAA, 0x11CB0}, {0x11CB2, 0x11CB3}, {0x11CB5, 0x11CB6},
    {0x11D31, 0x11D36}, {0x11D3A, 0x11D3A}, {0x11D3C, 0x11D3D}, {0x11D3F, 0x11D45},
    {0x11D47, 0x11D47}, {0x11D90, 0x11D91}, {0x11D95, 0x11D95}, {0x11D97, 0x11D97},
    {0x11EF3, 0x11EF4}, {0x11F00, 0x11F01}, {0x11F36, 0x11F3A}, {0x11F40, 0x11F40},
    {0x11F42, 0x11F42}, {0x13440, 0x13440}, {0x13447, 0x13455}, {0x16F4F, 0x16F4F},
    {0x16FE4, 0x16FE4}, {0x1CF00, 0x1CF2D}, {0x1CF30, 0x1CF46}, {0x1E000, 0x1E006},
    {0x1E008, 0x1E018}, {0x1E01B, 0x1E021}, {0x1E023, 0x1E024}, {0x1E026, 0x1E02A},
    {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF},
    {0x1E4EC, 0x1E4EF}, {0x1E944, 0x1E94A},
};
/* pre-tokenizer: punctuation differs from utf8proc's P* */
static const uint32_t hf_punct_flip[][2] = {
    {0x61D, 0x61D}, {0x9FD, 0x9FD}, {0xA76, 0xA76}, {0xC77, 0xC77}, {0xC84, 0xC84},
    {0x166D, 0x166D}, {0x1B7D, 0x1B7E}, {0x2E43, 0x2E4F}, {0x2E52, 0x2E5D}, {0x10EAD, 0x10EAD},
    {0x10F55, 0x10F59}, {0x10F86, 0x10F89}, {0x111C9, 0x111C9}, {0x1144B, 0x1144F},
    {0x1145A, 0x1145B}, {0x1145D, 0x1145D}, {0x11660, 0x1166C}, {0x116B9, 0x116B9},
    {0x1183B, 0x1183B}, {0x11944, 0x11946}, {0x119E2, 0x119E2}, {0x11A3F, 0x11A46},
    {0x11A9A, 0x11A9C}, {0x11A9E, 0x11AA2}, {0x11B00, 0x11B09}, {0x11C41, 0x11C45},
    {0x11C70, 0x11C71}, {0x11EF7, 0x11EF8}, {0x11F43, 0x11F4F}, {0x11FFF, 0x11FFF},
    {0x12FF1, 0x12FF2}, {0x16E97, 0x16E9A}, {0x16FE2, 0x16FE2}, {0x1E95E, 0x1E95F},
};
/* NFD: combining class 0 in HF's (older) tables */
static const uint32_t hf_ccc_zero[][2] = {
    {0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8D3}, {0x9FE, 0x9FE}, {0xC3C, 0xC3C}, {0xD3B, 0xD3C},
    {0xEBA, 0xEBA}, {0x1715, 0x1715}, {0x1ABF, 0x1ACE}, {0x1DF6, 0x1DFA}, {0xA82C, 0xA82C},
    {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E},
    {0x11839, 0x1183A}, {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0},
    {0x11A34, 0x11A34}, {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42},
    {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1},
    {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF},
    {0x1E4EC, 0x1E4EF},
};
/* NFD: no decomposition in HF's (older) tables */
static const uint32_t hf_no_decomp[][2] = {
    {0x11938, 0x11938},
};
/* lowercase: Rust's (newer) char::to_lowercase where utf8proc has no mapping */
static const uint32_t hf_lower[][2] = {
    {0x1C89, 0x1C8A}, {0xA7CB, 0x264}, {0xA7CC, 0xA7CD}, {0xA7CE, 0xA7CF}, {0xA7D2, 0xA7D3},
    {0xA7D4, 0xA7D5}, {0xA7DA, 0xA7DB}, {0xA7DC, 0x19B}, {0x10D50, 0x10D70}, {0x10D51, 0x10D71},
    {0x10D52, 0x10D72}, {0x10D53, 0x10D73}, {0x10D54, 0x10D74}, {0x10D55, 0x10D75},
    {0x10D56, 0x10D76}, {0x10D57, 0x10D77}, {0x10D58, 0x10D78}, {0x10D59, 0x10D79},
    {0x10D5A, 0x10D7A}, {0x10D5B, 0x10D7B}, {0x10D5C, 0x10D7C}, {0x10D5D, 0x10D7D},
    {0x10D5E, 0x10D7E}, {0x10D5F, 0x10D7F}, {0x10D60, 0x10D80}, {0x10D61, 0x10D81},
    {0x10D62, 0x10D82}, {0x10D63, 0x10D83}, {0x10D64, 0x10D84}, {0x10D65, 0x10D85},
    {0x16EA0, 0x16EBB}, {0x16EA1, 0x16EBC}, {0x16EA2, 0x16EBD}, {0x16EA3, 0x16EBE},
    {0x16EA4, 0x16EBF}, {0x16EA5, 0x16EC0}, {0x16EA6, 0x16EC1}, {0x16EA7, 0x16EC2},
    {0x16EA8, 0x16EC3}, {0x16EA9, 0x16EC4}, {0x16EAA, 0x16EC5}, {0x16EAB, 0x16EC6},
    {0x16EAC, 0x16EC7}, {0x16EAD, 0x16EC8}, {0x16EAE, 0x16EC9}, {0x16EAF, 0x16ECA},
    {0x16EB0, 0x16ECB}, {0x16EB1, 0x16ECC}, {0x16EB2, 0x16ECD}, {0x16EB3, 0x16ECE},
    {0x16EB4, 0x16ECF}, {0x16EB5, 0x16ED0}, {0x16EB6, 0x16ED1}, {0x16EB7, 0x16ED2},
    {0x16EB8, 0x16ED3},
};

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid][0]) hi = mid;
        else if (c > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}
#define IN(table, c) in_ranges(table, sizeof table / sizeof table[0], c)

static uint32_t hf_tolower(uint32_t c)
{
    if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
    uint32_t l = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
    if (l != c) return l;
    size_t lo = 0, hi = sizeof hf_lower / sizeof hf_lower[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < hf_lower[mid][0]) hi = mid;
        else if (c > hf_lower[mid][0]) lo = mid + 1;
        else return hf_lower[mid][1];
    }
    return c;
}

static int hf_ccc(uint32_t c)
{
    int k = utf8proc_get_property((utf8proc_int32_t)c)->combining_class;
    return k && IN(hf_ccc_zero, c) ? 0 : k;
}

/* Rust char::is_whitespace (the White_Space property). */
static int is_ws(uint32_t c)
{
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return 1;
    if (c < 0x85) return 0;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int cat(uint32_t c) { return utf8proc_category((utf8proc_int32_t)c); }

/* HF is_control: '\t' '\n' '\r' are whitespace, everything else of general
 * category C* (Cc, Cf, Cs, Co, Cn) is dropped by clean_text. */
static int is_control(uint32_t c)
{
    if (c < 0x80) return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F;
    int k = cat(c);
    int ctl = k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CS ||
              k == UTF8PROC_CATEGORY_CO;
    return ctl != IN(hf_control_flip, c);
}

/* HF is_chinese_char: the CJK Unified Ideographs blocks. */
static int is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* HF is_bert_punc: ASCII punctuation or general category P*. */
static int is_punct(uint32_t c)
{
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126))
        return 1;
    if (c < 128) return 0;
    int k = cat(c);
    int p = k == UTF8PROC_CATEGORY_PC || k == UTF8PROC_CATEGORY_PD || k == UTF8PROC_CATEGORY_PS ||
            k == UTF8PROC_CATEGORY_PE || k == UTF8PROC_CATEGORY_PI || k == UTF8PROC_CATEGORY_PF ||
            k == UTF8PROC_CATEGORY_PO;
    return p != IN(hf_punct_flip, c);
}

/* Mn (nonspacing mark), dropped by strip_accents. */
static int is_mn(uint32_t c)
{
    if (c < 0x300) return 0;
    return (cat(c) == UTF8PROC_CATEGORY_MN) != IN(hf_mn_flip, c);
}

/* single_word: \w differs (Unicode 16 letters, marks and digits in HF's regex crate) */
static const uint32_t hf_word_flip[][2] = {
    {0x897, 0x897}, {0x1C89, 0x1C8A}, {0xA7CB, 0xA7CD}, {0xA7DA, 0xA7DC}, {0x105C0, 0x105F3},
    {0x10D40, 0x10D65}, {0x10D69, 0x10D6D}, {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x10EFC, 0x10EFC},
    {0x11380, 0x11389}, {0x1138B, 0x1138B}, {0x1138E, 0x1138E}, {0x11390, 0x113B5}, {0x113B7, 0x113C0},
    {0x113C2, 0x113C2}, {0x113C5, 0x113C5}, {0x113C7, 0x113CA}, {0x113CC, 0x113D3}, {0x113E1, 0x113E2},
    {0x116D0, 0x116E3}, {0x11BC0, 0x11BE0}, {0x11BF0, 0x11BF9}, {0x11F5A, 0x11F5A}, {0x13460, 0x143FA},
    {0x16100, 0x16139}, {0x16D40, 0x16D6C}, {0x16D70, 0x16D79}, {0x18CFF, 0x18CFF}, {0x1CCF0, 0x1CCF9},
    {0x1E5D0, 0x1E5FA}, {0x2EBF0, 0x2EE5D},
};

/* The regex crate's Unicode \w (Alphabetic, marks, Nd, Pc, Join_Control),
 * which HF uses for added tokens with single_word=true. */
static int is_word_char(uint32_t c)
{
    if (c >= 0x80 && IN(hf_word_flip, c)) return 1;
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (c == 0x200C || c == 0x200D) return 1;
    /* Other_Alphabetic symbols: circled, parenthesized and squared letters */
    if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
        (c >= 0x1F170 && c <= 0x1F189))
        return 1;
    int k = cat(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_MN && k <= UTF8PROC_CATEGORY_ME) || k == UTF8PROC_CATEGORY_ND ||
           k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_PC;
}

/* ---------------------------------------------------------- tokenizer */

typedef struct added_tok {
    uint32_t *cps; /* content as code points (normalised if normalized) */
    size_t n;
    int32_t id;
    unsigned normalized : 1, lstrip : 1, rstrip : 1, single_word : 1;
} added_tok;

struct peftc_tokenizer {
    int32_t n_ids;      /* vocabulary size: highest id + 1 (incl. added tokens) */
    int32_t n_distinct; /* distinct WordPiece entries (HF's model vocab size) */
    char **text;        /* id -> NUL-terminated text (NULL for holes) */
    uint32_t *len;      /* id -> text length in bytes */
    char *store;        /* owns the texts */
    int32_t *slot;      /* hash table of the WordPiece vocabulary: ids, -1 = empty */
    uint64_t *slot_hash;
    size_t mask;
    size_t max_tok_bytes; /* longest vocabulary entry */
    int clean_text, chinese, strip_accents, lowercase;
    int max_chars;
    char prefix[64];
    size_t prefix_len;
    int32_t cls, sep, unk, pad;
    added_tok *added;
    int n_added, any_raw_added, any_norm_added;
    char **owned; /* strdup'd texts of added tokens outside the vocabulary */
    size_t n_owned;
};

static uint64_t fnv_step(uint64_t h, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++) {
        h ^= u[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ULL

/* The id of the WordPiece vocabulary entry pre+s, or -1. */
static int32_t vocab_find(const peftc_tokenizer *t, const char *pre, size_t pn, const char *s, size_t n)
{
    if (pn + n > t->max_tok_bytes) return -1;
    uint64_t h = fnv_step(fnv_step(FNV_INIT, pre, pn), s, n);
    for (size_t i = (size_t)h & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->slot[i];
        if (id < 0) return -1;
        if (t->slot_hash[i] == h && t->len[id] == pn + n && memcmp(t->text[id], pre, pn) == 0 &&
            memcmp(t->text[id] + pn, s, n) == 0)
            return id;
    }
}

/* Inserts id (a later duplicate replaces an earlier one, as in HF);
 * returns 1 for a new entry. */
static int vocab_insert(peftc_tokenizer *t, int32_t id)
{
    uint64_t h = fnv_step(FNV_INIT, t->text[id], t->len[id]);
    for (size_t i = (size_t)h & t->mask;; i = (i + 1) & t->mask) {
        int32_t o = t->slot[i];
        if (o < 0) {
            t->slot[i] = id;
            t->slot_hash[i] = h;
            return 1;
        }
        if (t->slot_hash[i] == h && t->len[o] == t->len[id] && memcmp(t->text[o], t->text[id], t->len[id]) == 0) {
            t->slot[i] = id;
            return 0;
        }
    }
}

static peftc_status build_hash(peftc_tokenizer *t, int32_t n_vocab_ids, peftc_error *err)
{
    size_t cap = 64;
    while (cap < (size_t)n_vocab_ids * 2) cap *= 2;
    t->slot = malloc(cap * sizeof *t->slot);
    t->slot_hash = malloc(cap * sizeof *t->slot_hash);
    if (!t->slot || !t->slot_hash)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "tokenizer: cannot allocate the vocabulary table");
    t->mask = cap - 1;
    for (size_t i = 0; i < cap; i++) t->slot[i] = -1;
    for (int32_t id = 0; id < n_vocab_ids; id++) {
        if (!t->text[id]) continue;
        t->n_distinct += vocab_insert(t, id);
        if (t->len[id] > t->max_tok_bytes) t->max_tok_bytes = t->len[id];
    }
    return PEFTC_OK;
}

/* ------------------------------------------------------------- loading */

/* Trims trailing whitespace (Rust str::trim_end) from s[0..n). */
static size_t trim_end(const char *s, size_t n)
{
    while (n > 0) {
        size_t b = n - 1;
        while (b > 0 && n - b < 4 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        uint32_t cp;
        size_t k = utf8_decode((const unsigned char *)s + b, n - b, &cp);
        if (k != n - b || !is_ws(cp)) break;
        n = b;
    }
    return n;
}

/* vocab.txt: one token per line, id = line index (Rust BufRead::lines). */
static peftc_status load_vocab_txt(peftc_tokenizer *t, const char *data, size_t n, const char *path, peftc_error *err)
{
    /* a private copy: the lines are cut in place and the table points into it */
    char *buf = malloc(n + 1);
    if (!buf) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n + 1);
    if (n) memcpy(buf, data, n);
    buf[n] = 0;
    t->store = buf;
    size_t lines = 0;
    for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
    if (n > 0 && buf[n - 1] != '\n') lines++;
    if (lines == 0) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: empty vocabulary", path);
    if (lines > (size_t)INT32_MAX / 4)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: too many lines (%zu)", path, lines);
    t->text = calloc(lines, sizeof *t->text);
    t->len = calloc(lines, sizeof *t->len);
    if (!t->text || !t->len) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: cannot allocate the vocabulary", path);
    size_t id = 0, p = 0;
    while (p < n) {
        char *nl = memchr(buf + p, '\n', n - p);
        size_t e = nl ? (size_t)(nl - buf) : n;
        size_t bad = utf8_check(buf + p, e - p);
        if (bad != e - p)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: line %zu: invalid UTF-8 at byte %zu", path, id + 1, bad);
        size_t l = trim_end(buf + p, e - p);
        buf[p + l] = 0;
        t->text[id] = buf + p;
        t->len[id] = (uint32_t)l;
        id++;
        p = e + 1;
    }
    t->n_ids = (int32_t)lines;
    return PEFTC_OK;
}

/* tokenizer.json's "model"."vocab" object: token -> id. */
static peftc_status load_vocab_json(peftc_tokenizer *t, json_t *vocab, const char *path, peftc_error *err)
{
    if (!json_is_object(vocab) || json_object_size(vocab) == 0)
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: model.vocab is missing or empty", path);
    const char *key;
    json_t *val;
    size_t bytes = 0;
    json_int_t max_id = -1;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= (1 << 26))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: model.vocab: token \"%.64s\" has an invalid id", path, key);
        if (id > max_id) max_id = id;
        bytes += strlen(key) + 1;
    }
    t->n_ids = (int32_t)(max_id + 1);
    t->text = calloc((size_t)t->n_ids, sizeof *t->text);
    t->len = calloc((size_t)t->n_ids, sizeof *t->len);
    t->store = malloc(bytes);
    if (!t->text || !t->len || !t->store)
        return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: cannot allocate the vocabulary", path);
    char *w = t->store;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_integer_value(val);
        size_t l = strlen(key);
        memcpy(w, key, l + 1);
        t->text[id] = w;
        t->len[id] = (uint32_t)l;
        w += l + 1;
    }
    return PEFTC_OK;
}

static peftc_status load_json(const char *buf, size_t n, const char *path, json_t **out, peftc_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *j = json_loadb(buf, n, 0, &je);
    if (!j) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: invalid JSON at line %d: %s", path, je.line, je.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = j;
    return PEFTC_OK;
}

/* Optional boolean field: returns def when absent or null. */
static int get_bool(json_t *obj, const char *key, int def, int *ok)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) { *ok = 0; return def; }
    return json_is_true(v);
}

static peftc_status decode_cps(const char *s, size_t n, cpbuf *out)
{
    out->n = 0;
    if (cp_reserve(out, n + 1)) return PEFTC_ERR_NOMEM;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = utf8_decode(u + i, n - i, &cp);
        if (!k) return PEFTC_ERR_INPUT;
        out->v[out->n++] = cp;
        i += k;
    }
    return PEFTC_OK;
}

static int normalize(const peftc_tokenizer *t, const uint32_t *in, size_t n, cpbuf *out, cpbuf *tmp);

static peftc_status add_special(peftc_tokenizer *t, const char *content, int32_t id, int normalized,
                                int lstrip, int rstrip, int single_word, const char *path, peftc_error *err)
{
    added_tok *a = &t->added[t->n_added];
    memset(a, 0, sizeof *a);
    cpbuf raw = {0};
    if (decode_cps(content, strlen(content), &raw)) {
        free(raw.v);
        return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: added token \"%.64s\" is not valid UTF-8", path, content);
    }
    if (normalized) {
        cpbuf norm = {0}, tmp = {0};
        int bad = normalize(t, raw.v, raw.n, &norm, &tmp);
        free(raw.v);
        free(tmp.v);
        if (bad) {
            free(norm.v);
            return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
        }
        raw = norm;
    }
    if (raw.n == 0) { /* an empty pattern never matches */
        free(raw.v);
        return PEFTC_OK;
    }
    a->cps = raw.v;
    a->n = raw.n;
    a->id = id;
    a->normalized = normalized != 0;
    a->lstrip = lstrip != 0;
    a->rstrip = rstrip != 0;
    a->single_word = single_word != 0;
    t->n_added++;
    if (normalized) t->any_norm_added = 1;
    else t->any_raw_added = 1;
    return PEFTC_OK;
}

/* Grows the id -> text tables so that they hold id (for added tokens that
 * are not in the WordPiece vocabulary). */
static int grow_ids(peftc_tokenizer *t, int32_t id)
{
    if (id < t->n_ids) return 0;
    size_t n = (size_t)id + 1;
    char **tx = realloc(t->text, n * sizeof *tx);
    if (!tx) return -1;
    t->text = tx;
    uint32_t *ln = realloc(t->len, n * sizeof *ln);
    if (!ln) return -1;
    t->len = ln;
    for (size_t i = (size_t)t->n_ids; i < n; i++) {
        t->text[i] = NULL;
        t->len[i] = 0;
    }
    t->n_ids = (int32_t)n;
    return 0;
}

static peftc_status load_added_tokens(peftc_tokenizer *t, json_t *arr, const char *path, peftc_error *err)
{
    size_t n = json_array_size(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    t->owned = calloc(n ? n : 1, sizeof *t->owned);
    int32_t max_added = -1;
    if (!t->added || !t->owned) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *c = json_object_get(o, "content");
        json_t *jid = json_object_get(o, "id");
        if (!json_is_object(o) || !json_is_string(c) || !json_is_integer(jid) || json_integer_value(jid) < 0 ||
            json_integer_value(jid) >= (1 << 26))
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: added_tokens[%zu]: needs a string content and an id", path, i);
        const char *content = json_string_value(c);
        int ok = 1;
        int normalized = get_bool(o, "normalized", 1, &ok);
        int lstrip = get_bool(o, "lstrip", 0, &ok);
        int rstrip = get_bool(o, "rstrip", 0, &ok);
        int single = get_bool(o, "single_word", 0, &ok);
        if (!ok) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: added_tokens[%zu]: flags must be booleans", path, i);
        /* HF (AddedVocabulary::add_tokens) gives an added token the id it
         * already has (model vocabulary first, then earlier added tokens);
         * a new one gets the model's vocabulary size, or one more than the
         * highest added id if that is already past it.  The "id" in the
         * file is not used. */
        int32_t id = vocab_find(t, "", 0, content, strlen(content));
        for (int k = 0; id < 0 && k < t->n_added; k++) {
            int32_t prev = t->added[k].id;
            if (t->text[prev] && strcmp(t->text[prev], content) == 0) id = prev;
        }
        if (id < 0) {
            id = max_added >= t->n_distinct ? max_added + 1 : t->n_distinct;
            if (id >= (1 << 26)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: too many added tokens", path);
            if (grow_ids(t, id)) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
            if (!t->text[id]) {
                char *d = strdup(content);
                if (!d) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", path);
                t->owned[t->n_owned++] = d;
                t->text[id] = d;
                t->len[id] = (uint32_t)strlen(d);
            }
        }
        if (id > max_added) max_added = id;
        peftc_status st = add_special(t, content, id, normalized, lstrip, rstrip, single, path, err);
        if (st) return st;
    }
    return PEFTC_OK;
}

void peftc_tokenizer_free(peftc_tokenizer *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n_owned; i++) free(t->owned[i]);
    free(t->owned);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].cps);
    free(t->added);
    free(t->text);
    free(t->len);
    free(t->store);
    free(t->slot);
    free(t->slot_hash);
    free(t);
}

static peftc_status read_normalizer(peftc_tokenizer *t, json_t *tj, const char *path, peftc_error *err)
{
    json_t *nz = json_object_get(tj, "normalizer");
    if (!nz || json_is_null(nz)) {
        if (nz) t->clean_text = t->chinese = t->lowercase = t->strip_accents = 0;
        return PEFTC_OK;
    }
    json_t *type = json_object_get(nz, "type");
    if (!json_is_string(type) || strcmp(json_string_value(type), "BertNormalizer") != 0)
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: normalizer type %s is not supported (only BertNormalizer)",
                          path, json_is_string(type) ? json_string_value(type) : "(missing)");
    int ok = 1;
    t->clean_text = get_bool(nz, "clean_text", 1, &ok);
    t->chinese = get_bool(nz, "handle_chinese_chars", 1, &ok);
    t->lowercase = get_bool(nz, "lowercase", 1, &ok);
    t->strip_accents = get_bool(nz, "strip_accents", t->lowercase, &ok);
    if (!ok) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: normalizer options must be booleans", path);
    return PEFTC_OK;
}

static peftc_status read_model(peftc_tokenizer *t, json_t *model, const char *path, char *unk, size_t unk_cap,
                               peftc_error *err)
{
    if (!json_is_object(model)) return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: no \"model\" object", path);
    json_t *type = json_object_get(model, "type");
    if (type && !(json_is_string(type) && strcmp(json_string_value(type), "WordPiece") == 0))
        return peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: model type %s is not supported (only WordPiece)", path,
                          json_is_string(type) ? json_string_value(type) : "(not a string)");
    json_t *v = json_object_get(model, "unk_token");
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) >= unk_cap)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: model.unk_token is too long", path);
        strcpy(unk, json_string_value(v));
    }
    v = json_object_get(model, "continuing_subword_prefix");
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) >= sizeof t->prefix)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: model.continuing_subword_prefix is too long", path);
        strcpy(t->prefix, json_string_value(v));
        t->prefix_len = strlen(t->prefix);
    }
    v = json_object_get(model, "max_input_chars_per_word");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return peftc_fail(err, PEFTC_ERR_FORMAT, "%s: model.max_input_chars_per_word is not a count", path);
        json_int_t m = json_integer_value(v);
        t->max_chars = m > INT_MAX ? INT_MAX : (int)m;
    }
    return PEFTC_OK;
}

/* Reads the file at path if it is there: *buf NULL if it is not. */
static peftc_status read_if_present(const char *path, char **buf, size_t *n, peftc_error *err)
{
    *buf = NULL;
    *n = 0;
    return peftc_file_exists(path) ? peftc_read_file(path, buf, n, err) : PEFTC_OK;
}

peftc_status peftc_tokenizer_load(const char *model_dir, peftc_tokenizer **out, peftc_error *err)
{
    if (out) *out = NULL;
    if (!model_dir || !out) return peftc_fail(err, PEFTC_ERR_INPUT, "tokenizer: no model directory given");
    char vocab_path[4096], tj_path[4096], cfg_path[4096];
    peftc_status st;
    if ((st = peftc_path_join(vocab_path, sizeof vocab_path, model_dir, "vocab.txt", err)) ||
        (st = peftc_path_join(tj_path, sizeof tj_path, model_dir, "tokenizer.json", err)) ||
        (st = peftc_path_join(cfg_path, sizeof cfg_path, model_dir, "tokenizer_config.json", err)))
        return st;
    if (!peftc_file_exists(vocab_path) && !peftc_file_exists(tj_path))
        return peftc_fail(err, PEFTC_ERR_IO, "%s: no vocab.txt or tokenizer.json (is this a model directory?)", model_dir);
    wordpiece_files f = {vocab_path, NULL, 0, tj_path, NULL, 0, cfg_path, NULL, 0};
    char *v = NULL, *tj = NULL, *cfg = NULL;
    if (!(st = read_if_present(vocab_path, &v, &f.vocab_len, err)) && !(st = read_if_present(tj_path, &tj, &f.tj_len, err)) &&
        /* tokenizer_config.json is read only without tokenizer.json */
        !(st = tj ? PEFTC_OK : read_if_present(cfg_path, &cfg, &f.cfg_len, err))) {
        f.vocab = v; f.tj = tj; f.cfg = cfg;
        st = wordpiece_load_mem(&f, model_dir, out, err);
    }
    free(v);
    free(tj);
    free(cfg);
    return st;
}

peftc_status wordpiece_load_mem(const wordpiece_files *f, const char *model_dir, peftc_tokenizer **out, peftc_error *err)
{
    *out = NULL;
    peftc_status st;
    const char *vocab_path = f->vocab_name, *tj_path = f->tj_name, *cfg_path = f->cfg_name;
    int have_vocab = f->vocab != NULL, have_tj = f->tj != NULL;
    if (!have_vocab && !have_tj)
        return peftc_fail(err, PEFTC_ERR_IO, "%s: no vocab.txt or tokenizer.json (is this a model directory?)", model_dir);

    peftc_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", model_dir);
    t->clean_text = t->chinese = t->lowercase = t->strip_accents = 1;
    t->max_chars = 100;
    strcpy(t->prefix, "##");
    t->prefix_len = 2;
    char unk[256] = "[UNK]";
    json_t *tj = NULL;

    if (have_tj) {
        if ((st = load_json(f->tj, f->tj_len, tj_path, &tj, err))) goto fail;
        if ((st = read_normalizer(t, tj, tj_path, err))) goto fail;
        json_t *pre = json_object_get(tj, "pre_tokenizer");
        json_t *pt = json_object_get(pre, "type");
        if (pre && !(json_is_string(pt) && strcmp(json_string_value(pt), "BertPreTokenizer") == 0)) {
            st = peftc_fail(err, PEFTC_ERR_UNSUPPORTED, "%s: pre_tokenizer %s is not supported (only BertPreTokenizer)",
                            tj_path, json_is_string(pt) ? json_string_value(pt) : "null");
            goto fail;
        }
        if ((st = read_model(t, json_object_get(tj, "model"), tj_path, unk, sizeof unk, err))) goto fail;
    } else if (f->cfg) {
        json_t *cfg;
        if ((st = load_json(f->cfg, f->cfg_len, cfg_path, &cfg, err))) goto fail;
        int ok = 1;
        t->lowercase = get_bool(cfg, "do_lower_case", 1, &ok);
        t->strip_accents = get_bool(cfg, "strip_accents", t->lowercase, &ok);
        t->chinese = get_bool(cfg, "tokenize_chinese_chars", 1, &ok);
        json_t *u = json_object_get(cfg, "unk_token");
        if (json_is_string(u) && strlen(json_string_value(u)) < sizeof unk) strcpy(unk, json_string_value(u));
        json_decref(cfg);
        if (!ok) {
            st = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: do_lower_case, strip_accents and tokenize_chinese_chars must be booleans", cfg_path);
            goto fail;
        }
    }

    if (have_vocab) st = load_vocab_txt(t, f->vocab, f->vocab_len, vocab_path, err);
    else st = load_vocab_json(t, json_object_get(json_object_get(tj, "model"), "vocab"), tj_path, err);
    if (st) goto fail;
    const char *vpath = have_vocab ? vocab_path : tj_path;
    int32_t n_vocab_ids = t->n_ids;
    if ((st = build_hash(t, n_vocab_ids, err))) goto fail;

    struct { const char *text; int32_t *id; } need[] = {
        {"[CLS]", &t->cls}, {"[SEP]", &t->sep}, {unk, &t->unk}, {"[PAD]", &t->pad}};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        *need[i].id = vocab_find(t, "", 0, need[i].text, strlen(need[i].text));
        if (*need[i].id < 0) {
            st = peftc_fail(err, PEFTC_ERR_FORMAT, "%s: the vocabulary has no %s token", vpath, need[i].text);
            goto fail;
        }
    }

    json_t *added = tj ? json_object_get(tj, "added_tokens") : NULL;
    if (json_is_array(added)) {
        if ((st = load_added_tokens(t, added, tj_path, err))) goto fail;
    } else {
        /* vocab.txt only: BertTokenizer never splits its special tokens. */
        const char *sp[] = {"[PAD]", unk, "[CLS]", "[SEP]", "[MASK]"};
        t->added = calloc(5, sizeof *t->added);
        if (!t->added) { st = peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", model_dir); goto fail; }
        for (int i = 0; i < 5; i++) {
            int32_t id = vocab_find(t, "", 0, sp[i], strlen(sp[i]));
            if (id >= 0 && (st = add_special(t, sp[i], id, 0, 0, 0, 0, vpath, err))) goto fail;
        }
    }
    json_decref(tj);
    *out = t;
    return PEFTC_OK;

fail:
    json_decref(tj);
    peftc_tokenizer_free(t);
    return st;
}

int peftc_tokenizer_vocab_size(const peftc_tokenizer *tok) { return tok ? tok->n_ids : 0; }

int32_t peftc_tokenizer_token_id(const peftc_tokenizer *tok, const char *token)
{
    if (!tok || !token) return -1;
    size_t n = strlen(token);
    for (int i = 0; i < tok->n_added; i++) {
        const added_tok *a = &tok->added[i];
        if (tok->text[a->id] && tok->len[a->id] == n && memcmp(tok->text[a->id], token, n) == 0) return a->id;
    }
    return vocab_find(tok, "", 0, token, n);
}

const char *peftc_tokenizer_token_text(const peftc_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->n_ids) return NULL;
    return tok->text[id];
}

/* ------------------------------------------------------------ encoding */

#define DECOMP_MAX 32

/* Full canonical decomposition of c into d (DECOMP_MAX entries). */
static size_t decompose(uint32_t c, uint32_t *d)
{
    utf8proc_int32_t tmp[DECOMP_MAX];
    int bc = 0;
    if (c < 0xC0 || IN(hf_no_decomp, c)) {
        d[0] = c;
        return 1;
    }
    utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)c, tmp, DECOMP_MAX, UTF8PROC_DECOMPOSE, &bc);
    if (k <= 0 || k > DECOMP_MAX) {
        d[0] = c;
        return 1;
    }
    for (utf8proc_ssize_t j = 0; j < k; j++) d[j] = (uint32_t)tmp[j];
    return (size_t)k;
}

/* Canonical ordering (the last step of NFD): stable sort of every run of
 * non-starters by combining class. */
static void canonical_order(uint32_t *v, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        int ci = hf_ccc(v[i]);
        if (ci == 0) continue;
        size_t j = i;
        uint32_t c = v[i];
        while (j > 0) {
            int cj = hf_ccc(v[j - 1]);
            if (cj <= ci) break;
            v[j] = v[j - 1];
            j--;
        }
        v[j] = c;
    }
}

/* BertNormalizer: in -> out (tmp is scratch).  Returns non-zero on OOM. */
static int normalize(const peftc_tokenizer *t, const uint32_t *in, size_t n, cpbuf *out, cpbuf *tmp)
{
    cpbuf *a = out, *b = tmp;
    a->n = 0;
    if (n > SIZE_MAX / 16 || cp_reserve(a, n * 3 + 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (t->clean_text) {
            if (c == 0 || c == 0xFFFD || is_control(c)) continue;
            if (is_ws(c)) c = ' ';
        }
        if (t->chinese && is_cjk(c)) {
            a->v[a->n++] = ' ';
            a->v[a->n++] = c;
            a->v[a->n++] = ' ';
        } else {
            a->v[a->n++] = c;
        }
    }
    if (t->strip_accents) {
        b->n = 0;
        for (size_t i = 0; i < a->n; i++) {
            uint32_t d[DECOMP_MAX];
            size_t k = decompose(a->v[i], d);
            if (cp_reserve(b, k)) return -1;
            for (size_t j = 0; j < k; j++) b->v[b->n++] = d[j];
        }
        canonical_order(b->v, b->n);
        a->n = 0;
        if (cp_reserve(a, b->n)) return -1;
        for (size_t i = 0; i < b->n; i++)
            if (!is_mn(b->v[i])) a->v[a->n++] = b->v[i];
    }
    if (t->lowercase) {
        size_t extra = 0;
        for (size_t i = 0; i < a->n; i++) extra += a->v[i] == 0x130;
        if (extra) {
            if (cp_reserve(b, a->n + extra)) return -1;
            b->n = 0;
            for (size_t i = 0; i < a->n; i++) {
                if (a->v[i] == 0x130) {
                    b->v[b->n++] = 'i';
                    b->v[b->n++] = 0x307;
                } else {
                    b->v[b->n++] = a->v[i];
                }
            }
            cpbuf s = *a;
            *a = *b;
            *b = s;
        }
        for (size_t i = 0; i < a->n; i++) a->v[i] = hf_tolower(a->v[i]);
    }
    return 0;
}

typedef struct scratch {
    cpbuf raw, norm, tmp;
    char *bytes;
    size_t *off;
    size_t cap;
} scratch;

/* WordPiece on one word w[0..n). */
static int wordpiece(const peftc_tokenizer *t, const uint32_t *w, size_t n, idbuf *out, scratch *s)
{
    if (n > (size_t)t->max_chars) return id_push(out, t->unk);
    if (n + 1 > s->cap) {
        size_t cap = (n + 1) * 2;
        char *b = realloc(s->bytes, cap * 4);
        if (!b) return -1;
        s->bytes = b;
        size_t *o = realloc(s->off, cap * sizeof *o);
        if (!o) return -1;
        s->off = o;
        s->cap = cap;
    }
    s->off[0] = 0;
    for (size_t i = 0; i < n; i++) s->off[i + 1] = s->off[i] + utf8_encode(w[i], s->bytes + s->off[i]);
    size_t mark = out->n;
    size_t start = 0;
    while (start < n) {
        const char *pre = start ? t->prefix : "";
        size_t pn = start ? t->prefix_len : 0;
        size_t end = n;
        int32_t id = -1;
        /* pieces longer than the longest vocabulary entry cannot match */
        while (end > start && pn + s->off[end] - s->off[start] > t->max_tok_bytes) end--;
        for (; end > start; end--) {
            id = vocab_find(t, pre, pn, s->bytes + s->off[start], s->off[end] - s->off[start]);
            if (id >= 0) break;
        }
        if (id < 0) {
            out->n = mark;
            return id_push(out, t->unk);
        }
        if (id_push(out, id)) return -1;
        start = end;
    }
    return 0;
}

/* BertPreTokenizer + WordPiece on normalised text. */
static int pretokenize(const peftc_tokenizer *t, const uint32_t *v, size_t n, idbuf *out, scratch *s)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = v[i];
        if (is_ws(c)) { i++; continue; }
        if (is_punct(c)) {
            if (wordpiece(t, v + i, 1, out, s)) return -1;
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && !is_ws(v[j]) && !is_punct(v[j])) j++;
        if (wordpiece(t, v + i, j - i, out, s)) return -1;
        i = j;
    }
    return 0;
}

/* Finds the next added-token match (leftmost-longest, then HF's single_word,
 * lstrip and rstrip rules) in v[from..n) among tokens of the given kind.
 * Returns 1 and the span [*ms, *me) with its id, or 0. */
static int next_added(const peftc_tokenizer *t, const uint32_t *v, size_t n, size_t from, size_t floor,
                      int normalized, size_t *ms, size_t *me, int32_t *id)
{
    size_t i = from;
    while (i < n) {
        const added_tok *best = NULL;
        for (int k = 0; k < t->n_added; k++) {
            const added_tok *a = &t->added[k];
            if ((int)a->normalized != normalized || a->n > n - i || a->cps[0] != v[i]) continue;
            if (best && a->n <= best->n) continue;
            if (memcmp(a->cps, v + i, a->n * sizeof *v) == 0) best = a;
        }
        if (!best) { i++; continue; }
        size_t s = i, e = i + best->n;
        if (best->single_word) {
            int left_word = s > 0 && is_word_char(v[s - 1]);
            int right_word = e < n && is_word_char(v[e]);
            if (left_word || right_word) { i = e; continue; } /* skipped, as in HF */
        }
        if (best->lstrip) {
            while (s > floor && is_ws(v[s - 1])) s--;
        }
        if (best->rstrip) {
            while (e < n && is_ws(v[e])) e++;
        }
        *ms = s;
        *me = e;
        *id = best->id;
        return 1;
    }
    return 0;
}

/* Normalised piece: split at normalized added tokens, pre-tokenise the rest. */
static int encode_normalized(const peftc_tokenizer *t, const uint32_t *v, size_t n, idbuf *out, scratch *s)
{
    if (!t->any_norm_added) return pretokenize(t, v, n, out, s);
    size_t pos = 0, ms, me;
    int32_t id;
    size_t search = 0;
    while (next_added(t, v, n, search, pos, 1, &ms, &me, &id)) {
        if (ms > pos && pretokenize(t, v + pos, ms - pos, out, s)) return -1;
        if (id_push(out, id)) return -1;
        pos = me > pos ? me : pos;
        search = me;
    }
    return pos < n ? pretokenize(t, v + pos, n - pos, out, s) : 0;
}

static int encode_raw_piece(const peftc_tokenizer *t, const uint32_t *v, size_t n, idbuf *out, scratch *s)
{
    if (n == 0) return 0;
    if (normalize(t, v, n, &s->norm, &s->tmp)) return -1;
    return encode_normalized(t, s->norm.v, s->norm.n, out, s);
}

static peftc_status encode_one(const peftc_tokenizer *t, const char *text, size_t len, const char *what,
                               idbuf *out, scratch *s, peftc_error *err)
{
    size_t bad = utf8_check(text, len);
    if (bad != len) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: invalid UTF-8 at byte %zu", what, bad);
    if (decode_cps(text, len, &s->raw)) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", what);
    const uint32_t *v = s->raw.v;
    size_t n = s->raw.n;
    int oom = 0;
    if (!t->any_raw_added) {
        oom = encode_raw_piece(t, v, n, out, s);
    } else {
        size_t pos = 0, search = 0, ms, me;
        int32_t id;
        while (!oom && next_added(t, v, n, search, pos, 0, &ms, &me, &id)) {
            if (ms > pos) oom = encode_raw_piece(t, v + pos, ms - pos, out, s);
            if (!oom) oom = id_push(out, id);
            pos = me > pos ? me : pos;
            search = me;
        }
        if (!oom && pos < n) oom = encode_raw_piece(t, v + pos, n - pos, out, s);
    }
    if (oom) return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: out of memory", what);
    return PEFTC_OK;
}

/* Bounded work on huge inputs: a text longer than the cap is encoded from a
 * prefix cut at ASCII whitespace (the pre-tokenizer splits there, so the
 * prefix's tokens are the first tokens of the whole text), grown 4x until it
 * yields at least `need` tokens. Truncation then keeps exactly what the whole
 * text would keep, and a 100 MB line costs a few times max_len in memory and
 * time instead of normalising all of it. *cut: 1 if a prefix was used. */
static peftc_status encode_capped(const peftc_tokenizer *t, const char *text, size_t len, const char *what, size_t cap,
                                  size_t need, idbuf *out, scratch *s, int *cut, peftc_error *err)
{
    for (;;) {
        size_t L = len;
        *cut = 0;
        if (len > cap) {
            size_t k = cap;
            while (k > cap / 2 && !(text[k] == ' ' || text[k] == '\t' || text[k] == '\n' || text[k] == '\r')) k--;
            if (k <= cap / 2)   /* no space near the cap: the next one after it */
                for (k = cap; k < len && !(text[k] == ' ' || text[k] == '\t' || text[k] == '\n' || text[k] == '\r'); k++) {}
            if (k < len) { L = k; *cut = 1; }
        }
        free(out->v);
        memset(out, 0, sizeof *out);
        peftc_status st = encode_one(t, text, L, what, out, s, err);
        if (st || !*cut || out->n >= need) return st;
        cap = cap > len / 4 ? len : cap * 4;
    }
}

peftc_status peftc_tokenizer_encode(const peftc_tokenizer *tok,
                                    const char *text, size_t text_len,
                                    const char *pair, size_t pair_len,
                                    int max_len, int32_t *ids, int32_t *type_ids,
                                    int *n_out, peftc_error *err)
{
    if (n_out) *n_out = 0;
    if (!tok || !ids || !n_out || (!text && text_len))
        return peftc_fail(err, PEFTC_ERR_INPUT, "tokenizer: encode called without a tokenizer, text or output");
    if (!pair && pair_len) return peftc_fail(err, PEFTC_ERR_INPUT, "tokenizer: pair length given without a pair");
    int need = pair ? 4 : 3;
    if (max_len < need)
        return peftc_fail(err, PEFTC_ERR_INPUT, "max_len %d is too small (need at least %d for %s)", max_len, need,
                          pair ? "a sentence pair" : "a text");
    scratch s = {0};
    idbuf a = {0}, b = {0};
    /* HF truncates after encoding the whole text; the cap gives the same ids
     * (see encode_capped) for what is kept. budget + 1 tokens decide it. */
    size_t budget0 = (size_t)max_len - (size_t)need + 1, cap = 4096 + 64 * (size_t)max_len;
    int cut_a = 0, cut_b = 0;
    peftc_status st = encode_capped(tok, text ? text : "", text_len, "text", cap, budget0 + 1, &a, &s, &cut_a, err);
    if (!st && pair) st = encode_capped(tok, pair, pair_len, "pair", cap, budget0 + 1, &b, &s, &cut_b, err);
    /* longest-first compares the two lengths: a cut side must stay on the
     * same side of the comparison as its whole text (when only one is cut) */
    if (!st && pair && cut_a && !cut_b && a.n <= b.n)
        st = encode_capped(tok, text, text_len, "text", cap, b.n + 1, &a, &s, &cut_a, err);
    if (!st && pair && cut_b && !cut_a && b.n < a.n)
        st = encode_capped(tok, pair, pair_len, "pair", cap, a.n, &b, &s, &cut_b, err);
    free(s.raw.v);
    free(s.norm.v);
    free(s.tmp.v);
    free(s.bytes);
    free(s.off);
    if (st) {
        free(a.v);
        free(b.v);
        return st;
    }
    /* HF truncate_encodings, LongestFirst, stride 0, on the budget left after
     * the special tokens: the shorter side (the text on a tie) keeps
     * min(its length, budget / 2), the longer one gets the rest. */
    size_t budget = (size_t)max_len - (size_t)need + 1;
    size_t n1 = a.n, n2 = b.n;
    /* both sides cut (each over the budget): which one is longer is taken
     * from the byte lengths, the best guess without encoding either whole */
    if (cut_a && cut_b) {
        size_t lo = budget + 1;
        n1 = text_len > pair_len ? lo + 1 : lo;
        n2 = text_len > pair_len ? lo : lo + 1;
    }
    if (!pair) {
        if (n1 > budget) n1 = budget;
    } else if (n1 + n2 > budget) {
        size_t *shorter = n1 > n2 ? &n2 : &n1, *longer = n1 > n2 ? &n1 : &n2;
        if (*shorter > budget / 2) *shorter = budget / 2;
        *longer = budget - *shorter;
    }
    int n = 0;
    ids[n] = tok->cls;
    if (type_ids) type_ids[n] = 0;
    n++;
    for (size_t i = 0; i < n1; i++, n++) {
        ids[n] = a.v[i];
        if (type_ids) type_ids[n] = 0;
    }
    ids[n] = tok->sep;
    if (type_ids) type_ids[n] = 0;
    n++;
    if (pair) {
        for (size_t i = 0; i < n2; i++, n++) {
            ids[n] = b.v[i];
            if (type_ids) type_ids[n] = 1;
        }
        ids[n] = tok->sep;
        if (type_ids) type_ids[n] = 1;
        n++;
    }
    free(a.v);
    free(b.v);
    *n_out = n;
    return PEFTC_OK;
}
