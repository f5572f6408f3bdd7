/* cmd_merge_adapters.c: `peftc merge-adapters --adapter a=DIR --adapter b=DIR
 * --combination svd --weights 1,0.5 --out DIR`: several LoRA adapters
 * combined into one (PEFT's add_weighted_adapter). */
#include "cli/cli.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define MA_MAX 64

int cmd_merge_adapters(cli_args *a)
{
    char *specs[MA_MAX];
    const char *names[MA_MAX], *dirs[MA_MAX];
    double weights[MA_MAX];
    int n = 0, rc = 0;
    const char *v;
    while ((v = cli_opt(a, "--adapter"))) {
        if (n == MA_MAX) { rc = cli_errorf(2, "--adapter: at most %d adapters", MA_MAX); goto done; }
        if (!(specs[n] = strdup(v))) { rc = cli_errorf(1, "out of memory"); goto done; }
        char *eq = strchr(specs[n], '=');
        names[n] = NULL;
        dirs[n] = specs[n];
        int named = eq && eq != specs[n];
        for (char *p = specs[n]; named && p < eq; p++)
            if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.')) named = 0;
        if (named) { *eq = 0; names[n] = specs[n]; dirs[n] = eq + 1; }
        n++;
    }
    const char *wl = cli_opt(a, "--weights"), *comb = cli_opt(a, "--combination"), *out = cli_opt(a, "--out");
    const char *head = cli_opt(a, "--head"), *maj = cli_opt(a, "--majority-sign"), *rank_s = cli_opt(a, "--svd-rank");
    int ok = 1;
    double density = cli_opt_double(a, "--density", -1, -1, 1e9, &ok);
    int seed = cli_opt_int(a, "--seed", 0, 0, 1 << 30, &ok);
    if (!ok || cli_check_unused(a, "merge-adapters")) { rc = 2; goto done; }
    if (n == 0 || !out || !*out) { rc = cli_errorf(2, "merge-adapters: --adapter [NAME=]DIR (repeatable) and --out DIR are required"); goto done; }
    for (int i = 0; i < n; i++) {
        if (!*dirs[i]) { rc = cli_errorf(2, "--adapter %s=: no directory after the name", names[i] ? names[i] : ""); goto done; }
        for (int j = 0; j < i; j++)
            if (names[i] && names[j] && !strcmp(names[i], names[j])) { rc = cli_errorf(2, "--adapter %s: the name is given twice", names[i]); goto done; }
    }
    int nw = n;
    for (int i = 0; i < n; i++) weights[i] = 1.0;
    if (wl) {
        nw = 0;
        const char *p = wl;
        while (*p) {
            char *end;
            double w = strtod(p, &end);
            if (end == p || (*end && *end != ',')) { rc = cli_errorf(2, "--weights %s: a comma-separated list of numbers", wl); goto done; }
            if (nw < MA_MAX) weights[nw] = w;
            nw++;
            p = *end ? end + 1 : end;
        }
        if (nw != n) { rc = cli_errorf(2, "--weights: %d weights for %d adapters", nw, n); goto done; }
    }
    int svd_rank = 0;
    if (rank_s) {
        char *end;
        long r = strtol(rank_s, &end, 10);
        if (!*rank_s || *end || r <= 0 || r > 1 << 20) { rc = cli_errorf(2, "--svd-rank %s: must be a positive integer", rank_s); goto done; }
        svd_rank = (int)r;
    }
    int hi = 0;
    if (head) {
        hi = -1;
        for (int i = 0; i < n; i++) if (names[i] && !strcmp(names[i], head)) hi = i;
        if (hi < 0) { rc = cli_errorf(2, "--head %s: no adapter of that name", head); goto done; }
    }
    if (maj && strcmp(maj, "total") && strcmp(maj, "frequency")) { rc = cli_errorf(2, "--majority-sign %s: total or frequency", maj); goto done; }
    peftc_merge_opts o = {dirs, n, weights, nw, comb ? comb : "svd", density, svd_rank, rank_s != NULL,
                          maj && !strcmp(maj, "frequency"), (uint64_t)seed, hi, out};
    peftc_error err = {0};
    if (peftc_merge_adapters(&o, &err)) { rc = cli_fail(&err); goto done; }
done:
    for (int i = 0; i < n; i++) free(specs[i]);
    return rc;
}
