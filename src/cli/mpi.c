/* mpi.c: the data-parallel transport of `peftc train` (peftc_comm over MPI).
 * The library never links MPI: this file fills its communicator interface.
 * Built with MPI (the Makefile's MPI=1, -DPEFTC_MPI) it joins the job only
 * when mpirun launched the process, so a plain `peftc train` never starts an
 * MPI runtime; built without, it refuses to run as one rank of a larger job
 * (each would silently train alone). */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

/* The job size mpirun (OpenMPI, or a PMI launcher) announces, 0 if none. */
static int launcher_size(void)
{
    const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", NULL};
    for (int i = 0; names[i]; i++) {
        const char *v = getenv(names[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

int cli_comm_launched(void) { return launcher_size(); }

#ifdef PEFTC_MPI
#include <mpi.h>
#include <mpi-ext.h>   /* Open MPI's extensions: OMPI_HAVE_MPI_EXT_PCOLLREQ */

static int mpi_on;
static MPI_Op op_f32, op_f64;

/* inout[i] = in[i] + inout[i], declared non-commutative: MPI then combines
 * the ranks' buffers in rank order, the same on every rank and every run
 * (a commutative op lets the library pick an order per message size). */
static void sum_f32(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const float *a = in;
    float *b = inout;
    for (int i = 0; i < *len; i++) b[i] = a[i] + b[i];
}

static void sum_f64(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const double *a = in;
    double *b = inout;
    for (int i = 0; i < *len; i++) b[i] = a[i] + b[i];
}

static peftc_status mpi_fail(int code, const char *what, peftc_error *err)
{
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(code, msg, &n);
    if (err) {
        err->code = PEFTC_ERR_IO;
        snprintf(err->msg, sizeof err->msg, "MPI %s failed (a rank died or lost its connection?): %.*s", what, n, msg);
    }
    return PEFTC_ERR_IO;
}

/* in place; counts above INT_MAX go in chunks (a gradient block of 2^31 floats) */
static peftc_status allreduce(void *buf, size_t n, size_t esz, MPI_Datatype t, MPI_Op op, peftc_error *err)
{
    const size_t chunk = (size_t)1 << 30;
    for (size_t s = 0; s < n; s += chunk) {
        int c = (int)(n - s < chunk ? n - s : chunk);
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + s * esz, c, t, op, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce", err);
    }
    return PEFTC_OK;
}

/* Two ranks: each element is one addition, a + b == b + a exactly, so MPI's
 * own vectorised MPI_SUM gives every rank the same bits whatever its
 * algorithm (the ordered user op measured 2.3x slower on 90 MB). Three or
 * more: the ordered op. */
static int n_ranks;

static peftc_status ar_f32(void *ctx, float *buf, size_t n, peftc_error *err)
{
    (void)ctx;
    return allreduce(buf, n, sizeof *buf, MPI_FLOAT, n_ranks == 2 ? MPI_SUM : op_f32, err);
}

static peftc_status ar_f64(void *ctx, double *buf, size_t n, peftc_error *err)
{
    (void)ctx;
    return allreduce(buf, n, sizeof *buf, MPI_DOUBLE, n_ranks == 2 ? MPI_SUM : op_f64, err);
}

/* The overlapped step's sums (peftc_comm.iallreduce_init), one request each,
 * made before training: persistent collectives where Open MPI has them (the
 * MPIX pcollreq extension: the schedule is built once), else an
 * MPI_Iallreduce per start into the same slot. */
#if defined(OMPI_HAVE_MPI_EXT_PCOLLREQ) && OMPI_HAVE_MPI_EXT_PCOLLREQ
#define PERSISTENT 1
#else
#define PERSISTENT 0
#endif
typedef struct sum_slot { float *buf; int n; } sum_slot;
static MPI_Request *reqs;
static sum_slot *slots;
static int n_slots, cap_slots;

static peftc_status comm_fail(peftc_error *err, peftc_status code, const char *msg)
{
    if (err) {
        err->code = code;
        snprintf(err->msg, sizeof err->msg, "%s", msg);
    }
    return code;
}

/* the same operation as ar_f32: every rank gets the blocking sum's bits */
static MPI_Op f32_op(void) { return n_ranks == 2 ? MPI_SUM : op_f32; }

static peftc_status iar_init(void *ctx, float *buf, size_t n, int *handle, peftc_error *err)
{
    (void)ctx;
    if (n >= (size_t)1 << 30) return comm_fail(err, PEFTC_ERR_INPUT, "MPI: a sum of 2^30 floats or more in one piece");
    if (n_slots == cap_slots) {
        int cap = cap_slots ? 2 * cap_slots : 16;
        MPI_Request *r = realloc(reqs, (size_t)cap * sizeof *r);
        if (r) reqs = r;
        sum_slot *s = realloc(slots, (size_t)cap * sizeof *s);
        if (s) slots = s;
        if (!r || !s) return comm_fail(err, PEFTC_ERR_NOMEM, "out of memory");
        cap_slots = cap;
    }
    reqs[n_slots] = MPI_REQUEST_NULL;
    slots[n_slots] = (sum_slot){buf, (int)n};
#if PERSISTENT
    int rc = MPIX_Allreduce_init(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, f32_op(), MPI_COMM_WORLD, MPI_INFO_NULL,
                                 &reqs[n_slots]);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce set-up", err);
#endif
    *handle = n_slots++;
    return PEFTC_OK;
}

static peftc_status iar_start(void *ctx, int h, peftc_error *err)
{
    (void)ctx;
#if PERSISTENT
    int rc = MPI_Start(&reqs[h]);
#else
    int rc = MPI_Iallreduce(MPI_IN_PLACE, slots[h].buf, slots[h].n, MPI_FLOAT, f32_op(), MPI_COMM_WORLD, &reqs[h]);
#endif
    return rc == MPI_SUCCESS ? PEFTC_OK : mpi_fail(rc, "all-reduce start", err);
}

/* Open MPI moves a non-blocking collective on only inside MPI calls (it runs
 * no progress thread): one test of every sum (those not started are inactive
 * or null, which count as complete). */
static peftc_status ar_progress(void *ctx, peftc_error *err)
{
    (void)ctx;
    int done;
    int rc = MPI_Testall(n_slots, reqs, &done, MPI_STATUSES_IGNORE);
    return rc == MPI_SUCCESS ? PEFTC_OK : mpi_fail(rc, "all-reduce test", err);
}

static peftc_status ar_wait(void *ctx, peftc_error *err)
{
    (void)ctx;
    int rc = MPI_Waitall(n_slots, reqs, MPI_STATUSES_IGNORE);
    return rc == MPI_SUCCESS ? PEFTC_OK : mpi_fail(rc, "all-reduce", err);
}

static void iar_free(void *ctx)
{
    (void)ctx;
#if PERSISTENT
    for (int i = 0; i < n_slots; i++) if (reqs[i] != MPI_REQUEST_NULL) MPI_Request_free(&reqs[i]);
#endif
    n_slots = 0;
}

int cli_comm_init(peftc_comm *c)
{
    memset(c, 0, sizeof *c);
    c->size = 1;
    if (launcher_size() <= 0) return 0;   /* not under mpirun: no MPI at all */
    /* OpenMP threads compute, the main thread alone calls MPI (between layers, outside parallel regions) */
    int level;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &level) != MPI_SUCCESS)
        return cli_errorf(1, "MPI_Init failed (is this an mpirun job of the same MPI peftc was built with?)");
    mpi_on = 1;
    /* errors come back as codes: the library reports them in one line, then the job is aborted */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    n_ranks = c->size;
    /* the ranks sharing this machine's memory: all of them, or not */
    MPI_Comm node;
    int on_node = 0;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &on_node);
        MPI_Comm_free(&node);
    }
    c->one_host = on_node == c->size;
    MPI_Op_create(sum_f32, 0, &op_f32);
    MPI_Op_create(sum_f64, 0, &op_f64);
    c->allreduce_f32 = ar_f32;
    c->allreduce_f64 = ar_f64;
    c->iallreduce_init = iar_init;
    c->start = iar_start;
    c->progress = ar_progress;
    c->wait = ar_wait;
    c->iallreduce_free = iar_free;
    return 0;
}

void cli_comm_finish(peftc_comm *c, int failed)
{
    if (!mpi_on) return;
    /* a rank that failed alone would leave its peers waiting in the next
     * all-reduce: the whole job stops */
    if (failed && c->size > 1) MPI_Abort(MPI_COMM_WORLD, failed);
    MPI_Op_free(&op_f32);
    MPI_Op_free(&op_f64);
    iar_free(NULL);
    free(reqs);
    free(slots);
    reqs = NULL;
    slots = NULL;
    n_slots = cap_slots = 0;
    MPI_Finalize();
    mpi_on = 0;
}

#else

int cli_comm_init(peftc_comm *c)
{
    memset(c, 0, sizeof *c);
    c->size = 1;
    int n = launcher_size();
    if (n > 1)
        return cli_errorf(2, "launched as one of %d MPI ranks, but this peftc was built without MPI "
                             "(install OpenMPI's mpicc and rebuild: make MPI=1)", n);
    return 0;
}

void cli_comm_finish(peftc_comm *c, int failed) { (void)c; (void)failed; }

#endif
