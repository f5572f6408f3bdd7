/* team.h: the thread count of repeated steps (training steps, decoding
 * steps) chosen by timing them.
 *
 * When other processes hold some of the cores, a parallel region waits at
 * its barrier for a thread that is not running, and the caller's full team
 * can run a step slower than a smaller one. So steps are timed with the
 * caller's team and now and then (a probe) with one thread fewer; the faster
 * setting per unit of work is kept, and probes back off (up to max_every
 * steps apart) while they lose. Only where results do not depend on the
 * thread count (every kernel here: each output is one thread's sum in a
 * fixed order), so a run's numbers stay the same, only its speed changes.
 * PEFTC_TEAM_TUNE=0 in the environment turns it off (the caller's team). */
#ifndef PEFTC_TRAIN_TEAM_H
#define PEFTC_TRAIN_TEAM_H

typedef struct team_tuner {
    int team;           /* the caller's thread count, read at the first step */
    int small;          /* setting in use: 0 the team, 1 one thread fewer */
    int cur, probe;     /* the step being timed: its setting; whether a probe */
    int since, every, max_every;
    int skip;           /* steps still to run untimed (warm-up: packing, page faults) */
    double ewma[2];     /* smoothed seconds per unit of each setting (0: not yet timed) */
    double t0;
} team_tuner;

/* skip: the first steps left untimed; max_every: the longest probe interval */
void team_tuner_init(team_tuner *t, int skip, int max_every);
/* before a step: may lower omp's thread count for it */
void team_tuner_begin(team_tuner *t);
/* after it: units = its work (tokens, or 1), restores the thread count */
void team_tuner_end(team_tuner *t, double units);

#endif
