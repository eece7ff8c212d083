/* Where the host has put this guest's two vCPUs, sampled while the bench runs.
 *
 * Once a second both threads (one pinned to CPU 0, one to CPU 1, SCHED_FIFO
 * so they preempt the generator and the switch at once) wake at the same
 * absolute time and bounce one cache line between them ROUNDS times; the
 * leader prints the time and the round-trip cost.  About 0.1-0.6 ms of each
 * CPU per second, so the loop being measured hardly notices.
 *
 *   placement_probe SECONDS [PERIOD_MS]
 *   stdout: "<CLOCK_MONOTONIC s> <ns per round trip, median of batches> <round trips done>"
 *
 * A round trip the partner does not answer within TIMEOUT ends the sample
 * early (fewer round trips done): the bench then does not trust it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { ROUNDS = 2000, BATCH = 100 };
static const double TIMEOUT = 0.005;

/* Odd values are the leader's, each answered with value + 1 by the partner. */
static uint64_t line __attribute__((aligned(64)));
static struct timespec base;
static long period_ms = 1000;
static double until;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void sleep_to_period(long k)
{
    long long ns = (long long)base.tv_nsec + (long long)k * period_ms * 1000000LL;
    struct timespec t = {.tv_sec = base.tv_sec + (time_t)(ns / 1000000000LL),
                         .tv_nsec = (long)(ns % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) != 0)
        ;
}

static int place(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (pthread_setaffinity_np(pthread_self(), sizeof s, &s) != 0)
        return -1;
    /* Without real-time priority a sample waits for the busy-polling
     * process's time slice to end; it still works, only later and noisier. */
    struct sched_param p = {.sched_priority = 1};
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &p);
    return 0;
}

static void *partner(void *arg)
{
    (void)arg;
    if (place(1) != 0)
        return NULL;
    uint64_t last = 0;
    for (long k = 1;; k++) {
        sleep_to_period(k);
        if (now() > until)
            break;
        /* All the sample may take: the clock stays out of the round trips. */
        double end = now() + 4 * TIMEOUT;
        for (unsigned i = 0, n = 1; i < ROUNDS; n++) {
            uint64_t v = __atomic_load_n(&line, __ATOMIC_ACQUIRE);
            /* Compare-and-swap: a late answer must not overwrite the
             * leader's next value. */
            if ((v & 1) && v != last &&
                __atomic_compare_exchange_n(&line, &v, v + 1, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                last = v;
                i++;
            } else if (n % 256 == 0 && now() > end) {
                break;
            }
        }
    }
    return NULL;
}

/* Spins until the partner's answer; the clock only every 256 looks, so that
 * reading it does not add to the round trip. */
static bool answered(uint64_t want)
{
    double end = now() + TIMEOUT;
    for (unsigned n = 1;; n++) {
        if (__atomic_load_n(&line, __ATOMIC_ACQUIRE) == want)
            return true;
        if (n % 256 == 0 && now() > end)
            return false;
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SECONDS [PERIOD_MS]\n", argv[0]);
        return 2;
    }
    double secs = atof(argv[1]);
    if (argc > 2)
        period_ms = atol(argv[2]);
    if (secs <= 0 || period_ms < 10) {
        fprintf(stderr, "%s: SECONDS > 0 and PERIOD_MS >= 10\n", argv[0]);
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &base);
    until = now() + secs;
    if (place(0) != 0) {
        fprintf(stderr, "%s: cannot run on CPU 0\n", argv[0]);
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, partner, NULL) != 0) {
        fprintf(stderr, "%s: pthread_create failed\n", argv[0]);
        return 1;
    }
    uint64_t v = 1;
    double batch[ROUNDS / BATCH];
    for (long k = 1;; k++) {
        sleep_to_period(k);
        if (now() > until)
            break;
        int done = 0, nb = 0;
        double t0 = now(), tb = t0;
        for (; done < ROUNDS; done++) {
            __atomic_store_n(&line, v, __ATOMIC_RELEASE);
            if (!answered(v + 1))
                break;
            v += 2;
            if ((done + 1) % BATCH == 0) {
                double tn = now();
                batch[nb++] = (tn - tb) / BATCH * 1e9;
                tb = tn;
            }
        }
        double ns = -1;
        if (nb > 0) {
            /* The median batch: the first may include the partner's wake-up. */
            qsort(batch, (size_t)nb, sizeof batch[0], cmp);
            ns = batch[nb / 2];
        }
        printf("%.3f %.1f %d\n", t0, ns, done);
        fflush(stdout);
    }
    pthread_join(t, NULL);
    return 0;
}
