/* The poll thread: adaptive polling in the style of NAPI.
 *
 * While frames flow, the loop serves every port back to back with kicks
 * off, so a busy guest never pays for a notification.  After idle_us with
 * nothing to do it asks every TX ring for kicks again, checks once more,
 * and sleeps in epoll on the kick eventfds and tap fds: an idle switch
 * costs nothing.
 *
 * The control plane changes what the loop sees only while it is parked:
 * vs_run_pause() raises pause_req and wakes the loop through ctl_fd; the
 * loop acknowledges on ack_fd and waits on ctl_fd until vs_run_resume().
 * The loop rebuilds its epoll set after every pause, since that is when
 * fds can have changed.
 *
 * A loop that moved only a few frames lingers for a moment before the next
 * one (linger_ns, the config's switch.poll_linger_ns), spinning on the TSC:
 * no PAUSE, which a hypervisor may take for a vCPU spinning on a lock, and
 * no syscall.  Without it the switch and a fast guest can settle into
 * trading a frame or two at a time: every poll finds one frame, every store
 * to a ring index pulls a cache line away from the other side, and the
 * pair runs at well under half its speed, for as long as the traffic
 * lasts.  A few microseconds let bursts form again, far below what a
 * guest's own interrupt path costs.  The bar is two bursts (LINGER_BELOW),
 * not a few frames: a loop that finds less than that is still ahead of its
 * front ends, and each look steals the index lines they are writing (with
 * the generator's and the switch's cores in different core complexes, a
 * trip between them each).  The A/B runs that chose the bar and the
 * default linger are in the messages of the commits that set them (git log
 * csrc/vs_run.c).
 *
 * A TX ring set up with no kick eventfd (SET_VRING_KICK's no-fd flag:
 * "poll this ring") has nothing to sleep on, so while one exists the sleep
 * lasts POLL_NOFD_MS at most, and a wake-up that finds nothing goes straight
 * back to sleep instead of busy-polling for idle_us: a thousand cheap looks
 * a second rather than a core.
 *
 * It also ages the MAC table, a slice at a time (vs_fdb_set_max_age):
 * sweeping a big table in one go, or parking the loop for it, would stall
 * every port for milliseconds each second.
 *
 * Pauses are bounded, with a watchdog.  A pause normally waits for the end
 * of one loop, microseconds.  vs_run_pause(timeout_ms) waits that long at
 * most; then it withdraws the request (the loop goes on as if never asked,
 * and a park that raced with the withdrawal ends at once: the pauser waits
 * for an acknowledgement naming both its pause and the resume count it
 * started from, so a late one can never pass for its own) and returns
 * -ETIMEDOUT, and the caller changes nothing.  Before returning it looks at
 * what held the thread up:
 *   - a system call on a peer's eventfd under way (sw->io, vs_peer.c): the
 *     thread is interrupted (VS_SIGWAKE), the call fails with EINTR, and the
 *     port whose eventfd it was is broken;
 *   - the same port served all along (run.serving, with no loop completed:
 *     run.beat) while the thread's CPU clock ran for at least a quarter of
 *     the wait (a preempted thread's barely moves; a spinning one on a
 *     host with more runnable threads than cores may get well under half):
 *     the thread is working in that port, not preempted; it is asked
 *     (run.wedged) to break the port as soon as it returns from it;
 *   - anything else (the thread preempted on a loaded host, or blocked
 *     where we cannot see: a page fault on a slow file): nothing is broken,
 *     the caller is told and may try again.
 * The thread cannot be stopped in the middle of a port from outside: what
 * the watchdog guarantees is that the control plane never waits more than
 * the bound, and that a port which keeps the thread busy is broken once the
 * thread gets out of it.  vs_debug_stall makes the thread spin in one port,
 * for tests: after the fixes to peer I/O and to guest memory faults, no
 * peer action is known to hold the thread that long. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_TSC 1
#endif

#include "vs_internal.h"

#define RUN_BUDGET (4 * VS_BURST)
/* What an epoll event is for: port << TAG_QUEUE_BITS | queue for a kick
 * eventfd, TAG_TAP in place of the queue for a tap fd, TAG_CTL for ctl_fd. */
#define TAG_QUEUE_BITS 8
#define TAG_QUEUE_MASK ((1u << TAG_QUEUE_BITS) - 1)
#define TAG_TAP TAG_QUEUE_MASK
#define TAG_CTL 0xffffffffu
_Static_assert(VS_MAX_QUEUES <= TAG_TAP, "queue numbers must stay below TAG_TAP");
_Static_assert((uint64_t)VS_MAX_PORTS << TAG_QUEUE_BITS <= TAG_CTL,
               "port tags must stay below TAG_CTL");
#define LINGER_BELOW (2 * VS_BURST)     /* frames per loop */
#define POLL_NOFD_MS 1

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#ifdef HAVE_TSC
/* A clock reading and the TSC at the same moment: the TSC read on both
 * sides of the clock, keeping the tightest of a few tries, so a preemption
 * between the two reads (a loaded host) cannot skew the pair. */
static void stamp(uint64_t *t, uint64_t *c)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 16; i++) {
        uint64_t a = __rdtsc(), tt = now_ns(), b = __rdtsc();
        if (b - a < best) {
            best = b - a;
            *t = tt;
            *c = a + (b - a) / 2;
        }
    }
}

/* TSC ticks per linger_ns, measured against the monotonic clock (1 ms). */
static uint64_t linger_ticks(uint64_t linger_ns)
{
    uint64_t t0 = 0, c0 = 0, t1 = 0, c1 = 0;   /* stamp() sets them */
    stamp(&t0, &c0);
    while (now_ns() - t0 < 1000000u)
        ;
    stamp(&t1, &c1);
    return (c1 - c0) * linger_ns / (t1 - t0);
}

static void linger(uint64_t ticks)
{
    uint64_t end = __rdtsc() + ticks;
    while (__rdtsc() < end)
        ;
}
#else
static uint64_t linger_ticks(uint64_t linger_ns)
{
    return linger_ns;
}

static void linger(uint64_t ns)
{
    uint64_t end = now_ns() + ns;
    while (now_ns() < end)
        ;
}
#endif

static void efd_write(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

/* Blocks until fd (non-blocking, one of our own) has a count, then takes it. */
static void efd_read(int fd)
{
    uint64_t v;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (read(fd, &v, sizeof(v)) < 0 && (errno == EINTR || errno == EAGAIN))
        poll(&pfd, 1, -1);
}

static void watch(struct vs_runner *r, int fd, uint32_t tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = tag};
    epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int rebuild(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    if (r->epfd >= 0)
        close(r->epfd);
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0)
        return -errno;
    watch(r, r->ctl_fd, TAG_CTL);
    r->polled = 0;
    for (uint32_t k = 0; k < sw->nopen; k++) {
        uint32_t id = sw->open_ids[k];
        struct vs_port *p = &sw->ports[id];
        if (vs_fd_port(p)) {
            if (p->fd >= 0 && !p->broken)
                watch(r, p->fd, id << TAG_QUEUE_BITS | TAG_TAP);
            continue;
        }
        for (uint32_t q = 0; q < VS_MAX_QUEUES; q++) {
            if (p->vq[q].kick_fd >= 0)
                watch(r, p->vq[q].kick_fd, id << TAG_QUEUE_BITS | q);
            else if (!vs_queue_is_rx(q) && p->vq[q].started)
                r->polled++;
        }
    }
    return 0;
}

/* Parks the loop until resumed; false if asked to stop instead. */
static bool park(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    /* Leave on a resume, not on pause_req dropping: a resume followed at
     * once by the next pause must still get its own acknowledgement. */
    uint32_t seq = __atomic_load_n(&r->resume_seq, __ATOMIC_ACQUIRE);
    /* Withdrawn (vs_run_pause timed out) before we got here: go on. */
    if (!__atomic_load_n(&r->pause_req, __ATOMIC_ACQUIRE))
        return true;
    uint64_t pause = __atomic_load_n(&r->pause_seq, __ATOMIC_ACQUIRE);
    uint64_t t0 = now_ns();
    __atomic_store_n(&r->parked, pause << 32 | seq, __ATOMIC_RELEASE);
    efd_write(r->ack_fd);
    while (__atomic_load_n(&r->resume_seq, __ATOMIC_ACQUIRE) == seq &&
           !__atomic_load_n(&r->stop_req, __ATOMIC_ACQUIRE))
        efd_read(r->ctl_fd);
    uint64_t dt = now_ns() - t0;
    sw->st.pause_ns_last = dt;
    if (dt > sw->st.pause_ns_max)
        sw->st.pause_ns_max = dt;
    return !__atomic_load_n(&r->stop_req, __ATOMIC_ACQUIRE);
}

/* Arms every TX ring for kicks; true if one of them has work after all. */
static bool arm_rings(struct vs_switch *sw)
{
    bool work = false;
    for (uint32_t k = 0; k < sw->nopen; k++) {
        struct vs_port *p = &sw->ports[sw->open_ids[k]];
        if (p->kind != VS_PORT_VHOST)
            continue;
        for (uint32_t q = VS_QUEUE_TX; q < VS_MAX_QUEUES; q += VS_QUEUES_PER_PAIR) {
            struct vs_vring *vq = &p->vq[q];
            if (!(vq->ready || vq->drain))
                continue;
            vs_vring_enable_kicks(p, vq, true);
            if (__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE) != vq->last_avail)
                work = true;
        }
    }
    return work;
}

/* arm_rings, recovering from a fault in a port's memory (it reads and
 * writes every TX ring): the port is broken, and the loop looks again. */
static bool arm_all(struct vs_switch *sw)
{
    struct vs_guard g;
    volatile bool work = true;
    vs_guard_enter(&g, sw);
    if (sigsetjmp(g.env, 0) == 0)
        work = arm_rings(sw);
    else
        vs_guard_fault(&g);
    vs_guard_leave(&g);
    return work;
}

/* Ages the share of the MAC table that the time since the last call is
 * worth, the whole table per second: a slice at a time while busy, all of
 * it after a sleep.  *last is when the last slice was taken. */
static void age(struct vs_switch *sw, uint64_t *last)
{
    uint32_t max_age = __atomic_load_n(&sw->run.max_age, __ATOMIC_RELAXED);
    uint64_t t = now_ns(), dt = t - *last;
    if (max_age == 0) {
        *last = t;
        return;
    }
    uint64_t cap = vs_fdb_slots(&sw->fdb);
    if (dt > 1000000000u)
        dt = 1000000000u;
    uint64_t slots = cap * dt / 1000000000u;
    if (slots == 0)
        return;     /* too soon for a whole slot: the time adds up */
    sw->st.fdb_aged += vs_fdb_expire_some(&sw->fdb, sw->now, max_age, (uint32_t)slots);
    *last = t;
}

/* True if it woke only because its time was up. */
static bool sleep_until_kicked(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    struct epoll_event evs[64];
    sw->st.poll_sleeps++;
    /* Entries to age: wake once a second for them. */
    bool aging = __atomic_load_n(&r->max_age, __ATOMIC_RELAXED) && sw->fdb.count > 0;
    int ms = r->polled ? POLL_NOFD_MS : aging ? 1000 : -1;
    int n = epoll_wait(r->epfd, evs, 64, ms);
    for (int i = 0; i < n; i++) {
        uint32_t tag = evs[i].data.u32;
        if (tag == TAG_CTL) {
            /* Take the wake-up: pause and stop are flags the loop checks
             * next, and a count left behind would keep epoll returning. */
            uint64_t v;
            (void)!read(r->ctl_fd, &v, sizeof(v));
            continue;
        }
        uint32_t id = tag >> TAG_QUEUE_BITS, q = tag & TAG_QUEUE_MASK;
        if (q == TAG_TAP) {
            /* A tap fd: the next poll reads it.  A broken one (interface
             * deleted) would report an error forever: stop watching it. */
            if (sw->ports[id].broken)
                epoll_ctl(r->epfd, EPOLL_CTL_DEL, sw->ports[id].fd, NULL);
            continue;
        }
        struct vs_port *p = &sw->ports[id];
        /* Readable a moment ago, but the front end shares the eventfd and
         * may have read it since, with O_NONBLOCK cleared (vs_peer.c). */
        if (vs_efd_take(sw, id, p->vq[q].kick_fd))
            p->st.kicks++;
    }
    return n == 0;
}

int vs_run(struct vs_switch *sw, uint32_t idle_us, uint32_t linger_ns)
{
    struct vs_runner *r = &sw->run;
    if (r->running)
        return -EBUSY;
    r->running = true;
    if (pthread_getcpuclockid(pthread_self(), &r->cpu_clock) != 0)
        r->cpu_clock = CLOCK_THREAD_CPUTIME_ID;     /* means none: no CPU check */
    __atomic_store_n(&r->tid, gettid(), __ATOMIC_RELEASE);
    int rc = rebuild(sw);
    uint64_t idle_ns = (uint64_t)idle_us * 1000u, idle_since = 0;
    uint32_t loops = 0;
    uint64_t aged = now_ns();
    uint64_t ticks = linger_ns ? linger_ticks(linger_ns) : 0;
    bool timed_out = false;     /* the last sleep ended on its timer */
    vs_tick(sw);
    while (rc == 0 && !__atomic_load_n(&r->stop_req, __ATOMIC_ACQUIRE)) {
        if (__atomic_load_n(&r->pause_req, __ATOMIC_ACQUIRE)) {
            if (!park(sw))
                break;
            rc = rebuild(sw);
            vs_tick(sw);
            idle_since = 0;
            timed_out = false;
            continue;
        }
        sw->st.poll_loops++;
        __atomic_store_n(&r->beat, sw->st.poll_loops, __ATOMIC_RELAXED);
        /* Clocks cost more than an empty poll here (tens of ns in a VM):
         * the MAC table's seconds are refreshed and a slice of it aged
         * every 256 loops, and the idle time is looked at on every 16th
         * idle loop only. */
        if ((++loops & 255) == 0) {
            vs_tick(sw);
            age(sw, &aged);
        }
        int total = vs_serve_guarded(sw, -1, RUN_BUDGET, false);
        if (total < LINGER_BELOW && ticks)
            linger(ticks);
        if (total > 0) {
            idle_since = 0;
            timed_out = false;
            continue;
        }
        if (!timed_out) {
            if (loops & 15)
                continue;
            uint64_t t = now_ns();
            if (idle_since == 0)
                idle_since = t;
            if (t - idle_since < idle_ns)
                continue;
        }
        timed_out = arm_all(sw) ? false : sleep_until_kicked(sw);
        vs_tick(sw);
        age(sw, &aged);
        idle_since = 0;
    }
    if (r->epfd >= 0) {
        close(r->epfd);
        r->epfd = -1;
    }
    /* The stop is spent, and so are its wake-ups: the next vs_run starts
     * clean.  (A stop asked before the loop started still ends it.) */
    __atomic_store_n(&r->stop_req, 0, __ATOMIC_RELEASE);
    uint64_t stale;
    while (read(r->ctl_fd, &stale, sizeof(stale)) > 0)
        ;
    __atomic_store_n(&r->tid, 0, __ATOMIC_RELAXED);
    r->running = false;
    return rc;
}

static uint64_t thread_cpu_ns(struct vs_runner *r)
{
    struct timespec ts;
    if (!__atomic_load_n(&r->tid, __ATOMIC_ACQUIRE) || r->cpu_clock == CLOCK_THREAD_CPUTIME_ID ||
        clock_gettime(r->cpu_clock, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* After a pause that timed out: what held the thread (see the top). */
static void watchdog(struct vs_switch *sw, uint64_t beat0, int32_t serving0, uint64_t cpu0,
                     uint64_t waited_ns)
{
    struct vs_runner *r = &sw->run;
    /* Twice: vs_watchdog acts on a call it has seen under way before. */
    if (vs_watchdog(sw) >= 0 || vs_watchdog(sw) >= 0)
        return;
    int32_t serving = __atomic_load_n(&r->serving, __ATOMIC_RELAXED);
    uint64_t cpu = thread_cpu_ns(r);
    if (serving >= 0 && serving == serving0 &&
        __atomic_load_n(&r->beat, __ATOMIC_RELAXED) == beat0 && cpu0 && cpu - cpu0 >= waited_ns / 4)
        __atomic_store_n(&r->wedged, serving, __ATOMIC_RELAXED);
}

int vs_run_pause(struct vs_switch *sw, uint32_t timeout_ms)
{
    struct vs_runner *r = &sw->run;
    uint32_t resume = __atomic_load_n(&r->resume_seq, __ATOMIC_RELAXED);
    uint32_t pause = __atomic_add_fetch(&r->pause_seq, 1, __ATOMIC_RELEASE);
    uint64_t want = (uint64_t)pause << 32 | resume;
    uint64_t beat0 = __atomic_load_n(&r->beat, __ATOMIC_RELAXED);
    int32_t serving0 = __atomic_load_n(&r->serving, __ATOMIC_RELAXED);
    uint64_t cpu0 = thread_cpu_ns(r);
    uint64_t t0 = now_ns(), limit = (uint64_t)timeout_ms * 1000000u;
    __atomic_store_n(&r->pause_req, 1, __ATOMIC_RELEASE);
    efd_write(r->ctl_fd);
    for (;;) {
        if (__atomic_load_n(&r->parked, __ATOMIC_ACQUIRE) == want)
            return 0;
        uint64_t dt = now_ns() - t0;
        if (dt >= limit)
            break;
        struct pollfd pfd = {.fd = r->ack_fd, .events = POLLIN};
        poll(&pfd, 1, (int)((limit - dt + 999999) / 1000000));
        uint64_t v;
        (void)!read(r->ack_fd, &v, sizeof(v));  /* ours, non-blocking; stale acks too */
    }
    /* Withdraw: pause_req first, then the resume count the park waits on. */
    __atomic_store_n(&r->pause_req, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&r->resume_seq, 1, __ATOMIC_RELEASE);
    efd_write(r->ctl_fd);
    watchdog(sw, beat0, serving0, cpu0, now_ns() - t0);
    return -ETIMEDOUT;
}

int vs_run_serving(struct vs_switch *sw)
{
    return __atomic_load_n(&sw->run.serving, __ATOMIC_RELAXED);
}

void vs_debug_stall(struct vs_switch *sw, uint32_t port, uint32_t ms)
{
    __atomic_store_n(&sw->run.stall_ms, ms, __ATOMIC_RELAXED);
    __atomic_store_n(&sw->run.stall_port, (int32_t)port, __ATOMIC_RELAXED);
}

void vs_run_resume(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    __atomic_store_n(&r->pause_req, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&r->resume_seq, 1, __ATOMIC_RELEASE);
    efd_write(r->ctl_fd);
}

/* Wakes the loop to look at its state again (no pause). */
static void run_wake(struct vs_switch *sw)
{
    if (sw->run.ctl_fd >= 0)
        efd_write(sw->run.ctl_fd);
}

void vs_fdb_set_max_age(struct vs_switch *sw, uint32_t max_age)
{
    if (__atomic_exchange_n(&sw->run.max_age, max_age, __ATOMIC_RELAXED) == max_age)
        return;
    /* A thread asleep with no timeout must look again at how long to sleep. */
    run_wake(sw);
}

void vs_run_stop(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    __atomic_store_n(&r->stop_req, 1, __ATOMIC_RELEASE);
    efd_write(r->ctl_fd);
}

int vs_run_init(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    r->epfd = -1;
    r->serving = r->wedged = r->stall_port = -1;
    r->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->ack_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->ctl_fd < 0 || r->ack_fd < 0)
        return -errno;
    return 0;
}

void vs_run_destroy(struct vs_switch *sw)
{
    struct vs_runner *r = &sw->run;
    if (r->ctl_fd >= 0)
        close(r->ctl_fd);
    if (r->ack_fd >= 0)
        close(r->ack_fd);
    r->ctl_fd = r->ack_fd = -1;
}
