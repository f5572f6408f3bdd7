/* team.c: see team.h. */
#include "train/team.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void team_tuner_init(team_tuner *t, int skip, int max_every)
{
    *t = (team_tuner){.every = 8, .max_every = max_every > 8 ? max_every : 8, .skip = skip > 0 ? skip : 0};
    const char *e = getenv("PEFTC_TEAM_TUNE");   /* 0: always the caller's team */
    if (e && !strcmp(e, "0")) t->team = 1;
}

void team_tuner_begin(team_tuner *t)
{
    if (!t->team) t->team = omp_get_max_threads();
    t->cur = t->probe = 0;
    if (t->team >= 2 && !t->skip) {
        t->probe = t->since >= t->every;
        t->cur = t->probe ? !t->small : t->small;
        t->since = t->probe ? 0 : t->since + 1;
        if (t->cur) omp_set_num_threads(t->team - 1);
    }
    t->t0 = now_s();
}

void team_tuner_end(team_tuner *t, double units)
{
    double dt = now_s() - t->t0;
    if (t->cur) omp_set_num_threads(t->team);
    if (t->team < 2) return;
    if (t->skip) { t->skip--; return; }
    if (!(units > 0)) return;
    int s = t->cur;
    dt /= units;
    t->ewma[s] = t->ewma[s] > 0 ? 0.75 * t->ewma[s] + 0.25 * dt : dt;
    if (t->probe) {
        if (t->ewma[s] < t->ewma[!s]) { t->small = s; t->every = 8; }
        else if (t->every < t->max_every) t->every *= 2;
    }
}
