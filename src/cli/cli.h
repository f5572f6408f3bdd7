/* cli.h: shared helpers of the peftc command-line tool (cli/ layer). */
#ifndef PEFTC_CLI_H
#define PEFTC_CLI_H

#include "peftc.h"
#include <stdio.h>

/* Prints "peftc: <msg>" to stderr and returns exit code 1. */
int cli_fail(const peftc_error *err);
/* Prints "peftc: <printf message>" to stderr and returns the given code. */
int cli_errorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Option parsing: argv is scanned for "--name value" / "--flag". */
typedef struct cli_args {
    int argc;
    char **argv;
    unsigned char *used;
} cli_args;

const char *cli_opt(cli_args *a, const char *name);        /* value or NULL */
int cli_flag(cli_args *a, const char *name);               /* present? */
/* Parses an integer/float option with range; returns 0 and sets *ok=0 on error (message printed). */
int cli_opt_int(cli_args *a, const char *name, int def, int lo, int hi, int *ok);
double cli_opt_double(cli_args *a, const char *name, double def, double lo, double hi, int *ok);
/* Reports the first unknown option, stray argument or option given twice (a
 * second occurrence of a non-repeatable one); returns 0 if all used. */
int cli_check_unused(cli_args *a, const char *cmd);

/* Reads lines from f: strips "\n"/"\r\n"; rejects empty lines and lines over
 * CLI_MAX_LINE bytes with a message naming `what` and the line number. */
#define CLI_MAX_LINE (1u << 20)
typedef struct cli_lines {
    char **line;
    size_t *len;
    int n, cap;
} cli_lines;
int cli_read_lines(FILE *f, const char *what, cli_lines *out);
void cli_lines_free(cli_lines *l);

/* Data parallelism (mpi.c): joins the mpirun job this process belongs to
 * (size 1 when not launched by mpirun; no MPI call then). Returns 0 or an
 * exit code (message printed). */
int cli_comm_init(peftc_comm *c);
/* Leaves the job; failed != 0 aborts every rank (exit code failed). */
void cli_comm_finish(peftc_comm *c, int failed);
/* The job size mpirun announces in the environment (0: not launched by it). */
int cli_comm_launched(void);

int cmd_tokenize(cli_args *a);
int cmd_embed(cli_args *a);
int cmd_inspect(cli_args *a);
int cmd_cpu(cli_args *a, int forced);
int cmd_train(cli_args *a);
int cmd_fuse(cli_args *a);    /* AdapterFusion stage 2 (cmd_train.c) */
int cmd_eval(cli_args *a);
int cmd_predict(cli_args *a);
int cmd_methods(cli_args *a);
int cmd_generate(cli_args *a);
int cmd_chat(cli_args *a);
int cmd_export(cli_args *a);
int cmd_sweep(cli_args *a);
int cmd_report(cli_args *a);
int cmd_quantize(cli_args *a);
int cmd_score(cli_args *a);
int cmd_eval_lm(cli_args *a);   /* eval --task causal-lm (cmd_generate.c) */
/* "\"pairs\": n, ..." of a score result (no braces) to stdout */
void cli_print_score(const peftc_score_result *r);
int cmd_merge_adapters(cli_args *a);
int cmd_merge(cli_args *a);   /* cmd_merge.c: an adapter folded into its base, written as a plain model */

#endif
