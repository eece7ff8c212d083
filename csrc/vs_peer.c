/* What a peer controls besides its rings: the eventfds it hands over and the
 * files behind its memory.  Neither may block the switch or crash it.
 *
 * Eventfds.  O_NONBLOCK is a flag of the open file description, which the
 * front end shares with us through SCM_RIGHTS: whatever we set, it can clear
 * (fcntl on its own copy).  So no read or write of a peer's eventfd may
 * depend on that flag:
 *   - reads use preadv2(RWF_NOWAIT), which never waits whatever the flags
 *     (eventfd has it since Linux 5.12); on an older kernel, a zero-timeout
 *     poll() first, then read();
 *   - writes have no such flag (eventfd's write refuses RWF_NOWAIT), so a
 *     zero-timeout poll(POLLOUT) comes first: a counter the peer has filled
 *     (0xfffffffffffffffe) is signalled already, and nothing is written.
 * poll() and the syscall after it are two steps, and the peer can move the
 * counter in between (read it to zero just before our read, fill it just
 * before our write).  For that window every such call is announced in
 * sw->io (a sequence number, odd while the call runs, and the thread), and
 * vs_watchdog(), which the control plane calls from a thread of its own
 * every half second, interrupts a call it finds under way twice in a row
 * with a signal (VS_SIGWAKE, a handler that does nothing, without
 * SA_RESTART): the call returns EINTR, the write counts as signalled and
 * the port is broken.  A peer that wins that race costs the switch half a
 * second to a second once, and then its port.
 *
 * Memory files.  The switch maps what SET_MEM_TABLE hands over and checks
 * the size then (vs_mem.c); a front end that truncates the file afterwards
 * turns every access to the lost pages into SIGBUS.  vs_mem.c refuses a file
 * that could be sealed against shrinking but is not (QEMU's memfd backend
 * seals, seal=on by default); a file that cannot be sealed (hugetlbfs, a
 * memfd created without MFD_ALLOW_SEALING, as DPDK's) is mapped, and a fault
 * in it is recovered here: see struct vs_guard in vs_internal.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vs_internal.h"

#define VS_SIGWAKE SIGURG   /* ignored by default, unused by Python and its event loops */

/* The guard of the calling thread (innermost), or NULL.  initial-exec: the
 * SIGBUS handler reads it, and the default model for a dlopen()ed module
 * may allocate on a thread's first access. */
static __thread struct vs_guard *cur_guard __attribute__((tls_model("initial-exec")));
static struct sigaction old_bus;
static bool no_rwf_nowait;  /* the kernel refused RWF_NOWAIT on an eventfd once */

static void on_wake(int sig)
{
    (void)sig;  /* only here so a blocked syscall returns EINTR */
}

/* Is addr in a mapping of an open port of sw?  Which one, or -1.  Reads
 * only memory (async-signal-safe). */
static int32_t port_of(const struct vs_switch *sw, uintptr_t addr)
{
    for (uint32_t k = 0; k < sw->nopen; k++) {
        const struct vs_port *p = &sw->ports[sw->open_ids[k]];
        for (uint32_t i = 0; i < p->mem.n; i++) {
            uintptr_t m = (uintptr_t)p->mem.r[i].map;
            if (addr >= m && addr - m < p->mem.r[i].map_len)
                return (int32_t)p->id;
        }
    }
    return -1;
}

static void on_bus(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    struct vs_guard *g = cur_guard;
    /* si_code > 0: a fault of this thread's own access, not a kill(). */
    if (g && si->si_code > 0) {
        int32_t port = port_of(g->sw, (uintptr_t)si->si_addr);
        if (port >= 0) {
            g->fault_port = port;
            g->fault_addr = (uintptr_t)si->si_addr;
            siglongjmp(g->env, 1);
        }
    }
    /* Not ours: as if this handler had never been installed.  A fault is
     * taken again when the access restarts, now by the old disposition (the
     * default kills the process with its core, as before); a sent signal is
     * raised again. */
    sigaction(SIGBUS, &old_bus, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

static void install(void)
{
    struct sigaction sa = {0};
    sa.sa_sigaction = on_bus;
    /* SA_NODEFER: SIGBUS stays unblocked in the handler, so jumping out of
     * it (with a sigjmp_buf saved without the mask) leaves nothing blocked. */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &old_bus) < 0)
        abort();
    struct sigaction wake = {0};
    wake.sa_handler = on_wake;  /* no SA_RESTART: that is the point */
    sigemptyset(&wake.sa_mask);
    sigaction(VS_SIGWAKE, &wake, NULL);
}

void vs_peer_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install);
}

void vs_guard_enter(struct vs_guard *g, struct vs_switch *sw)
{
    g->sw = sw;
    g->fault_port = -1;
    g->fault_addr = 0;
    g->faults = 0;
    g->outer = cur_guard;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    cur_guard = g;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void vs_guard_leave(struct vs_guard *g)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    cur_guard = g->outer;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void vs_guard_fault(struct vs_guard *g)
{
    /* Each recovery breaks a port, and a broken port's memory is never
     * touched again: more recoveries than ports means that rule was broken
     * somewhere, and looping on it would hang the switch instead. */
    if (++g->faults > VS_MAX_PORTS)
        abort();
    struct vs_port *p = &g->sw->ports[g->fault_port];
    uintptr_t a = g->fault_addr;
    uint32_t region = 0;
    uint64_t off = 0;
    for (uint32_t i = 0; i < p->mem.n; i++) {
        uintptr_t h = (uintptr_t)p->mem.r[i].host;
        if (a >= h && a - h < p->mem.r[i].size) {
            region = i;
            off = a - h;
        }
    }
    if (!p->broken) {
        snprintf(p->errbuf, sizeof(p->errbuf),
                 "guest memory fault (SIGBUS) at offset %#llx of memory region %u: the front "
                 "end's file no longer backs it (truncated after SET_MEM_TABLE?)",
                 (unsigned long long)off, region);
        vs_port_break(p, p->errbuf);
    } else {
        vs_port_break(p, "");   /* keeps its first error, stops its rings again */
    }
    g->fault_port = -1;
}

/* One marker per thread that may make such calls at the same time (the
 * poll thread and the control plane), so each one's seq stays odd exactly
 * while its own call runs. */
static void io_begin(struct vs_peer_io *io, uint32_t port)
{
    __atomic_store_n(&io->tid, gettid(), __ATOMIC_RELAXED);
    __atomic_store_n(&io->port, port, __ATOMIC_RELAXED);
    __atomic_add_fetch(&io->seq, 1, __ATOMIC_RELEASE);     /* odd */
}

static void io_end(struct vs_peer_io *io)
{
    __atomic_add_fetch(&io->seq, 1, __ATOMIC_RELEASE);     /* even */
}

bool vs_efd_take(struct vs_switch *sw, uint32_t port, int fd)
{
    uint64_t v;
    ssize_t n;
    if (!__atomic_load_n(&no_rwf_nowait, __ATOMIC_RELAXED)) {
        struct iovec iov = {&v, sizeof(v)};
        do
            n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
        while (n < 0 && errno == EINTR);
        if (n >= 0 || (errno != EOPNOTSUPP && errno != ENOSYS))
            return n == sizeof(v);
        __atomic_store_n(&no_rwf_nowait, true, __ATOMIC_RELAXED);
    }
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLIN))
        return false;
    io_begin(&sw->io, port);
    n = read(fd, &v, sizeof(v));
    io_end(&sw->io);
    return n == sizeof(v);
}

static int give(struct vs_peer_io *io, uint32_t port, int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int r;
    do
        r = poll(&pfd, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    if (r == 0 || !(pfd.revents & POLLOUT))
        return 0;   /* full: the peer has a count to read already */
    uint64_t one = 1;
    io_begin(io, port);
    ssize_t n = write(fd, &one, sizeof(one));
    int err = errno;
    io_end(io);
    if (n == sizeof(one))
        return 1;
    if (n < 0 && err == EAGAIN)
        return 0;
    return n < 0 ? -err : -EIO;
}

int vs_efd_give(struct vs_switch *sw, uint32_t port, int fd)
{
    return give(&sw->io, port, fd);
}

int vs_efd_signal(struct vs_switch *sw, int fd)
{
    return give(&sw->io_ctl, UINT32_MAX, fd);
}

/* Interrupts io's call if it was under way at the last look too. */
static int watch(struct vs_peer_io *io)
{
    uint64_t seq = __atomic_load_n(&io->seq, __ATOMIC_ACQUIRE);
    /* Two callers may look at once (the watchdog thread, a timed-out pause). */
    bool stuck = (seq & 1) && __atomic_exchange_n(&io->seen, seq, __ATOMIC_RELAXED) == seq;
    if (!stuck)
        return -1;
    pid_t tid = __atomic_load_n(&io->tid, __ATOMIC_RELAXED);
    uint32_t port = __atomic_load_n(&io->port, __ATOMIC_RELAXED);
    if (__atomic_load_n(&io->seq, __ATOMIC_ACQUIRE) != seq)
        return -1;  /* it ended meanwhile */
    /* tgkill, not pthread_kill: a thread that has ended since is no
     * undefined behaviour, at worst another of our threads sees one EINTR. */
    syscall(SYS_tgkill, getpid(), tid, VS_SIGWAKE);
    return port == UINT32_MAX ? VS_MAX_PORTS : (int)port;
}

int vs_watchdog(struct vs_switch *sw)
{
    int a = watch(&sw->io), b = watch(&sw->io_ctl);
    return a >= 0 ? a : b;
}
