/* A small thread pool for a loop over independent tasks (pythia._quant's tiles of weight rows).

   Why not an OpenMP loop: it ends with a barrier that waits for every thread of the team, so on
   a busy machine a worker that has not been given a core holds the caller up for the worker's
   whole share; 2 threads were measured slower than 1 at load average 6 on 2 cores. Here the
   caller and the workers claim chunks of tasks from a shared counter, and the caller waits only
   for chunks a worker has already claimed: a worker that never gets a core costs nothing, the
   caller does its share too. Workers spin PP_SPIN_NS after a loop, then sleep on a condition
   variable. A decode step's products are separated by attention, norms and Python (up to ~0.2
   ms on GPT-2-small), so a worker that spun only 50 us slept through most of those gaps and was
   woken for nearly every product: GPT-2-small int8 decode on 2 threads ran at 100-102 tok/s
   with 50 us and 122 with 500 us (medians of 6 rounds, one build at a time; 250 us and 2 ms
   gave 116 and 114). A chat waiting for its user leaves the workers asleep after 0.5 ms.

   One caller at a time: a second thread calling while the pool is busy runs its loop alone. A
   forked child starts without workers (they are not copied) and starts its own when it calls. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PP_PAUSE() _mm_pause()
#else
#define PP_PAUSE() ((void)0)
#endif

#define PP_MAX_WORKERS 63
#define PP_SPIN_NS 500000.0           /* 500 us: longer than a decode step's gaps between products */

typedef void (*pp_fn)(const void* job, Py_ssize_t t0, Py_ssize_t t1);

static pthread_mutex_t pp_mu = PTHREAD_MUTEX_INITIALIZER;    /* guards the job fields below */
static pthread_cond_t pp_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t pp_busy = PTHREAD_MUTEX_INITIALIZER;  /* held by the one caller using the pool */
static _Atomic unsigned long pp_gen = 0;     /* number of the job last posted */
static _Atomic Py_ssize_t pp_done = 0;       /* tasks of that job finished by workers */
static pp_fn pp_job_fn;
static const void* pp_job;
static Py_ssize_t pp_next, pp_count, pp_chunk;
static int pp_helpers, pp_started, pp_sleeping, pp_atfork;

static double pp_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* the next chunk [t0, t1) of job `gen` for worker idx (-1: the caller); 0 when it has none left.
   A claim can only succeed while the job is unfinished, so `job` is still the caller's. */
static int pp_claim(unsigned long gen, int idx, pp_fn* fn, const void** job, Py_ssize_t* t0, Py_ssize_t* t1) {
    int ok = 0;
    pthread_mutex_lock(&pp_mu);
    if (atomic_load(&pp_gen) == gen && pp_next < pp_count && idx < pp_helpers) {
        *fn = pp_job_fn;
        *job = pp_job;
        *t0 = pp_next;
        pp_next = pp_next + pp_chunk < pp_count ? pp_next + pp_chunk : pp_count;
        *t1 = pp_next;
        ok = 1;
    }
    pthread_mutex_unlock(&pp_mu);
    return ok;
}

static void* pp_worker(void* arg) {
    const int idx = (int)(intptr_t)arg;
    unsigned long seen = atomic_load(&pp_gen);
    for (;;) {
        const double t = pp_now_ns();
        while (atomic_load(&pp_gen) == seen && pp_now_ns() - t < PP_SPIN_NS) PP_PAUSE();
        if (atomic_load(&pp_gen) == seen) {
            pthread_mutex_lock(&pp_mu);
            pp_sleeping++;
            while (atomic_load(&pp_gen) == seen) pthread_cond_wait(&pp_cv, &pp_mu);
            pp_sleeping--;
            pthread_mutex_unlock(&pp_mu);
        }
        seen = atomic_load(&pp_gen);
        pp_fn fn;
        const void* job;
        Py_ssize_t t0, t1;
        while (pp_claim(seen, idx, &fn, &job, &t0, &t1)) {
            fn(job, t0, t1);
            atomic_fetch_add(&pp_done, t1 - t0);
        }
    }
    return NULL;
}

static void pp_child_reset(void) {
    pthread_mutex_init(&pp_mu, NULL);
    pthread_cond_init(&pp_cv, NULL);
    pthread_mutex_init(&pp_busy, NULL);
    pp_started = pp_sleeping = 0;
}

/* fn(job, t0, t1) over tasks [0, count), on the caller and up to threads - 1 workers */
static void pythia_pool_run(pp_fn fn, const void* job, Py_ssize_t count, int threads) {
    if (threads > PP_MAX_WORKERS + 1) threads = PP_MAX_WORKERS + 1;
    if (threads <= 1 || count < 2 || pthread_mutex_trylock(&pp_busy) != 0) {
        fn(job, 0, count);
        return;
    }
    pthread_mutex_lock(&pp_mu);
    if (!pp_atfork) pp_atfork = pthread_atfork(NULL, NULL, pp_child_reset) == 0;
    while (pp_started < threads - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int err = pthread_create(&th, &attr, pp_worker, (void*)(intptr_t)pp_started);
        pthread_attr_destroy(&attr);
        if (err) break;                  /* fewer workers: the caller does the rest */
        pp_started++;
    }
    pp_job_fn = fn;
    pp_job = job;
    pp_next = 0;
    pp_count = count;
    pp_helpers = threads - 1;
    pp_chunk = count / (4 * threads) > 0 ? count / (4 * threads) : 1;   /* ~4 chunks a thread */
    atomic_store(&pp_done, 0);
    const unsigned long gen = atomic_fetch_add(&pp_gen, 1) + 1;
    if (pp_sleeping) pthread_cond_broadcast(&pp_cv);
    pthread_mutex_unlock(&pp_mu);
    pp_fn f;
    const void* j;
    Py_ssize_t t0, t1, mine = 0;
    while (pp_claim(gen, -1, &f, &j, &t0, &t1)) {
        fn(job, t0, t1);
        mine += t1 - t0;
    }
    /* what is left was claimed by workers that are running it */
    for (int spins = 0; atomic_load(&pp_done) + mine < count; spins++) {
        if (spins < 4096) PP_PAUSE(); else sched_yield();
    }
    pthread_mutex_unlock(&pp_busy);
}
