/* testlib.h: a minimal test harness. Each check prints one line; the binary
 * ends with "## <passed> <failed>" for tests/run.sh to add up, and exits
 * non-zero if anything failed. */
#ifndef PEFTC_TESTLIB_H
#define PEFTC_TESTLIB_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "peftc.h"

static int tl_passed, tl_failed;

#define CHECK(cond, ...) do {                                   \
        if (cond) { tl_passed++; printf("ok   - "); }           \
        else { tl_failed++; printf("FAIL - %s:%d: ", __FILE__, __LINE__); } \
        printf(__VA_ARGS__); printf("\n");                      \
    } while (0)

static inline int tl_finish(void)
{
    printf("## %d %d\n", tl_passed, tl_failed);
    return tl_failed ? 1 : 0;
}

/* max |a-b| over n floats */
static inline double tl_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

/* records a failed library call as a failed check and ends the test */
static inline int tl_die(const char *what, const peftc_error *err)
{
    CHECK(0, "%s: %s", what, err->msg);
    return tl_finish();
}

/* a malloc'd copy of n floats (the test stops if memory runs out) */
static inline float *tl_dup_floats(const float *p, size_t n)
{
    float *q = malloc(n * sizeof *q);
    if (!q) { perror("malloc"); exit(2); }
    memcpy(q, p, n * sizeof *q);
    return q;
}

#endif
