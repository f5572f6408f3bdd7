/* util.c: option parsing, line reading and error printing for the CLI. */
#include "cli/cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int cli_fail(const peftc_error *err)
{
    fprintf(stderr, "peftc: %s\n", err->msg[0] ? err->msg : peftc_status_name(err->code));
    return 1;
}

int cli_errorf(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("peftc: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* a->used[i]: 0 unused, USED_NAME an option's name (or a positional argument),
 * USED_VALUE an option's value. The distinction lets cli_check_unused tell a
 * second "--method x" (its name was consumed once already) from an unknown
 * option. */
enum { USED_NAME = 1, USED_VALUE = 2 };

static int find(cli_args *a, const char *name)
{
    for (int i = 0; i < a->argc; i++)
        if (!a->used[i] && strcmp(a->argv[i], name) == 0) return i;
    return -1;
}

const char *cli_opt(cli_args *a, const char *name)
{
    int i = find(a, name);
    if (i < 0) return NULL;
    a->used[i] = USED_NAME;
    if (i + 1 >= a->argc) return ""; /* caller sees an empty value: reported as missing */
    a->used[i + 1] = USED_VALUE;
    return a->argv[i + 1];
}

int cli_flag(cli_args *a, const char *name)
{
    int i = find(a, name);
    if (i < 0) return 0;
    a->used[i] = USED_NAME;
    return 1;
}

int cli_opt_int(cli_args *a, const char *name, int def, int lo, int hi, int *ok)
{
    const char *v = cli_opt(a, name);
    if (!v) return def;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        cli_errorf(2, "option %s: expected an integer in [%d, %d], got '%s'", name, lo, hi, v);
        *ok = 0;
        return def;
    }
    return (int)x;
}

double cli_opt_double(cli_args *a, const char *name, double def, double lo, double hi, int *ok)
{
    const char *v = cli_opt(a, name);
    if (!v) return def;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !(x >= lo && x <= hi)) {
        cli_errorf(2, "option %s: expected a number in [%g, %g], got '%s'", name, lo, hi, v);
        *ok = 0;
        return def;
    }
    return x;
}

/* An option that takes one value (or a flag) reads only its first occurrence;
 * a later one is left unused. Repeatable options (--adapter, --delta, --stop)
 * are read in a loop that consumes every occurrence, so what is left here
 * under a consumed name was given twice. */
static int given_twice(cli_args *a, const char *cmd, int i)
{
    if (strncmp(a->argv[i], "--", 2) != 0) return 0;
    for (int j = 0; j < a->argc; j++) {
        if (a->used[j] != USED_NAME || strcmp(a->argv[j], a->argv[i]) != 0) continue;
        if (j + 1 < a->argc && a->used[j + 1] == USED_VALUE) {
            const char *second = i + 1 < a->argc && !a->used[i + 1] ? a->argv[i + 1] : NULL;
            if (second)
                cli_errorf(2, "%s: option %s given twice ('%s', then '%s'); give it once", cmd, a->argv[i],
                           a->argv[j + 1], second);
            else
                cli_errorf(2, "%s: option %s given twice (first '%s'); give it once", cmd, a->argv[i], a->argv[j + 1]);
        } else {
            cli_errorf(2, "%s: option %s given twice; give it once", cmd, a->argv[i]);
        }
        return 1;
    }
    return 0;
}

int cli_check_unused(cli_args *a, const char *cmd)
{
    for (int i = 0; i < a->argc; i++)
        if (!a->used[i]) {
            if (given_twice(a, cmd, i)) return 1;
            cli_errorf(2, "%s: unknown option or argument '%s' (see peftc help)", cmd, a->argv[i]);
            return 1;
        }
    return 0;
}

void cli_lines_free(cli_lines *l)
{
    for (int i = 0; i < l->n; i++) free(l->line[i]);
    free(l->line);
    free(l->len);
    memset(l, 0, sizeof *l);
}

int cli_read_lines(FILE *f, const char *what, cli_lines *out)
{
    memset(out, 0, sizeof *out);
    char *buf = NULL;
    size_t cap = 0;
    ssize_t r;
    long lineno = 0;
    while ((r = getline(&buf, &cap, f)) >= 0) {
        lineno++;
        size_t n = (size_t)r;
        if (n && buf[n - 1] == '\n') n--;
        if (n && buf[n - 1] == '\r') n--;
        if (n == 0) {
            free(buf);
            cli_lines_free(out);
            return cli_errorf(1, "%s:%ld: empty line (give one text per line)", what, lineno);
        }
        if (n > CLI_MAX_LINE) {
            free(buf);
            cli_lines_free(out);
            return cli_errorf(1, "%s:%ld: line of %zu bytes exceeds the %u-byte limit", what, lineno, n, CLI_MAX_LINE);
        }
        if (out->n == out->cap) {
            int nc = out->cap ? 2 * out->cap : 256;
            char **nl = realloc(out->line, (size_t)nc * sizeof *nl);
            if (nl) out->line = nl;
            size_t *nn = realloc(out->len, (size_t)nc * sizeof *nn);
            if (nn) out->len = nn;
            if (!nl || !nn) { free(buf); cli_lines_free(out); return cli_errorf(1, "%s: out of memory", what); }
            out->cap = nc;
        }
        char *copy = malloc(n + 1);
        if (!copy) { free(buf); cli_lines_free(out); return cli_errorf(1, "%s: out of memory", what); }
        memcpy(copy, buf, n);
        copy[n] = 0;
        out->line[out->n] = copy;
        out->len[out->n] = n;
        out->n++;
    }
    free(buf);
    if (ferror(f)) { cli_lines_free(out); return cli_errorf(1, "%s: read error", what); }
    return 0;
}
