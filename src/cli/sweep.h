/* sweep.h: `peftc sweep` and `peftc report` (cli/ layer): the sweep
 * directory's files, shared by the runner (cmd_sweep.c) and the report
 * writer (report.c).
 *
 * DIR/sweep.json          the plan: every run's directory, method, budget,
 *                         seed, lr, size, counts and design dimensions
 * DIR/<run>/metrics.json  written by peftc_train
 * DIR/<run>/run.json      written by the sweep when the run's child exits:
 *                         status, peak RSS (getrusage of the child), wall time
 * DIR/<run>/loss.csv      step,loss from the progress callback
 * DIR/report.html, DIR/report.md */
#ifndef PEFTC_CLI_SWEEP_H
#define PEFTC_CLI_SWEEP_H

#include <stddef.h>

/* Writes data to path through path.tmp and rename (a reader never sees half a
 * file); 0 on success, else -1 with errno set. */
int cli_write_atomic(const char *path, const char *data, size_t len);

/* Reads DIR/sweep.json and the runs' files and writes DIR/report.html
 * (format "html") or DIR/report.md ("md"), or out_path if not NULL.
 * Returns 0, or prints one "peftc: ..." line and returns 1. */
int sweep_report(const char *dir, const char *format, const char *out_path);

#endif
