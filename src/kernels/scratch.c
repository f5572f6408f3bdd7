/* scratch.c: per-thread scratch buffers for the kernels, so a training step
 * does not allocate: each thread's buffer is allocated on its first request,
 * kept, and only reallocated when a larger one is asked for. The buffer hangs
 * off a pthread key (not a table indexed by omp_get_thread_num()), so any
 * number of threads, in any number of OpenMP teams or none, each get their
 * own, and the key's destructor frees it when the thread exits. */
#include <pthread.h>
#include <stdlib.h>
#define PEFTC_KERNELS_INTERNAL
#include "kernels/kernels.h"

typedef struct { void *p; size_t cap; } scratch_buf;
#define N_SLOTS 2

static pthread_key_t scratch_key;
static int scratch_key_ok;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v)
{
    scratch_buf *b = v;
    for (int i = 0; i < N_SLOTS; i++) free(b[i].p);
    free(b);
}

static void scratch_init(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

void *kern_scratch_slot(int slot, size_t bytes)
{
    if (slot < 0 || slot >= N_SLOTS) return NULL;
    if (bytes < 64) bytes = 64;
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_key_ok) return NULL;
    scratch_buf *all = pthread_getspecific(scratch_key);
    if (!all) {
        all = calloc(N_SLOTS, sizeof *all);
        if (!all) return NULL;
        if (pthread_setspecific(scratch_key, all) != 0) { free(all); return NULL; }
    }
    scratch_buf *b = &all[slot];
    if (b->cap >= bytes && b->p) return b->p;
    /* grow by at least half, so a slowly growing size does not realloc each call */
    size_t want = bytes + bytes / 2 > b->cap + b->cap / 2 ? bytes + bytes / 2 : b->cap + b->cap / 2;
    want = (want + 63) / 64 * 64;
    void *p = aligned_alloc(64, want);
    if (!p) {
        want = (bytes + 63) / 64 * 64;   /* the exact size may still fit */
        p = want ? aligned_alloc(64, want) : NULL;
        if (!p) return NULL;            /* the old (smaller) buffer stays for later calls */
    }
    free(b->p);
    b->p = p;
    b->cap = want;
    return p;
}

void *kern_scratch(size_t bytes) { return kern_scratch_slot(0, bytes); }
