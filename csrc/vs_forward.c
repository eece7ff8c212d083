/* Forwarding: a burst at a time, from one port to the others.
 *
 * One burst: take up to VS_BURST frames from a port's TX ring, learn each
 * source, queue each frame on its destination port (or every other up port
 * when flooding), then give every destination its queue in one enqueue, so
 * each egress ring gets one used-index update and at most one interrupt.
 * vs_port_kick and vs_poll serve from the event loop; the poll thread
 * (vs_run.c) calls vs_serve itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <string.h>
#include <time.h>

#include "vs_capture.h"
#include "vs_internal.h"
#include "vs_vlan.h"

#define KICK_BUDGET (8 * VS_BURST)

static inline uint64_t mac_at(const uint8_t *b)
{
    return (uint64_t)b[0] << 40 | (uint64_t)b[1] << 32 | (uint64_t)b[2] << 24 |
           (uint64_t)b[3] << 16 | (uint64_t)b[4] << 8 | (uint64_t)b[5];
}

/* A TAP or VXLAN port's output. */
static inline uint32_t fd_enqueue(struct vs_port *p, struct vs_pkt **pkts, uint32_t n)
{
    return p->kind == VS_PORT_VXLAN ? vs_vxlan_enqueue(p, pkts, n) : vs_tap_enqueue(p, pkts, n);
}

/* Can the port take frames now? */
static inline bool can_take(const struct vs_port *p)
{
    return vs_fd_port(p) ? p->fd >= 0 && !p->broken : p->nrxq > 0;
}

/* The used index of ring q of port was published: decide on an interrupt
 * at the next vs_flush_signals. */
static inline void signal_due(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_vring *vq = &sw->ports[port].vq[q];
    if (!vq->signal_due) {
        vq->signal_due = true;
        sw->signal[sw->nsignal++] = port * VS_MAX_QUEUES + q;
    }
}

void vs_flush_signals(struct vs_switch *sw)
{
    if (sw->nsignal == 0)
        return;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < sw->nsignal; i++) {
        struct vs_port *p = &sw->ports[sw->signal[i] / VS_MAX_QUEUES];
        struct vs_vring *vq = &p->vq[sw->signal[i] % VS_MAX_QUEUES];
        vq->signal_due = false;
        /* A port broken since (a guest memory fault) is never touched again. */
        if (!p->broken)
            vs_vring_signal(p, vq);
    }
    sw->nsignal = 0;
}

/* Learns a source address on port in and counts what became of it. */
static inline void learn(struct vs_switch *sw, struct vs_port *ip, uint64_t src, uint16_t vlan,
                         uint16_t remote)
{
    switch (vs_fdb_learn_at(&sw->fdb, src, vlan, ip->id, remote, ip->mac_limit, sw->now)) {
    case VS_LEARN_NEW:
        ip->st.fdb_learned++;
        break;
    case VS_LEARN_MOVED:
        ip->st.fdb_moved++;
        break;
    case VS_LEARN_LIMIT:
        ip->st.fdb_limit++;
        break;
    case VS_LEARN_FULL:
        sw->st.fdb_full++;
        break;
    case VS_LEARN_SEEN:
    case VS_LEARN_STATIC:
        break;
    }
}

static inline void queue_on(struct vs_switch *sw, uint32_t port, struct vs_pkt *pkt)
{
    struct vs_port *d = &sw->ports[port];
    if (d->npending == 0)
        sw->dirty[sw->ndirty++] = port;
    d->pending[d->npending++] = pkt;
}

/* Mirrors (vs_port_set_mirror) are worked out once a burst is queued,
 * before it is delivered, and only when some port mirrors another
 * (sw->mirroring: one branch per burst otherwise).  Each mirror port
 * collects, as bits by index in the burst, the frames it should copy: all of
 * them when it mirrors the sender's rx, those queued on a port whose tx it
 * mirrors; then its own queue is rebuilt in burst order from those and the
 * frames queued on it already (each frame once), and delivered.  Copies are
 * worked out from the queues as forwarding left them, so a copy is never
 * mirrored again, and the sender never gets its own frames back. */
_Static_assert(VS_BURST <= 32, "a burst's frames are bits of a uint32_t");

static inline uint32_t burst_bits(uint32_t n)
{
    return n >= 32 ? ~0U : (1U << n) - 1;
}

/* Adds the frames in bits to what each port in set should get a copy of. */
static void mirror_want(struct vs_switch *sw, uint32_t in, const uint64_t *set, uint32_t bits)
{
    for (uint32_t w = 0; w < VS_MAX_PORTS / 64; w++) {
        for (uint64_t m = set[w]; m != 0; m &= m - 1) {
            uint32_t o = w * 64 + (uint32_t)__builtin_ctzll(m);
            struct vs_port *d = &sw->ports[o];
            if (o == in || !d->open || !can_take(d))
                continue;
            if (d->mir_want == 0)
                sw->mir_due[sw->nmir++] = o;
            d->mir_want |= bits;
        }
    }
}

/* Delivers to mirror port o its burst: the frames queued on it and its
 * copies, in burst order, each once.  The delivery is the normal one (one
 * enqueue); the copies it took are counted from where the enqueue stopped. */
static void mirror_deliver(struct vs_switch *sw, uint32_t o)
{
    struct vs_port *d = &sw->ports[o];
    uint32_t queued = 0;
    for (uint32_t j = 0; j < d->npending; j++)
        queued |= 1U << vs_burst_index(sw, d->pending[j]);
    if (d->npending > 0) {
        /* Out of the burst's delivery list: delivered here instead. */
        for (uint32_t k = 0; k < sw->ndirty; k++) {
            if (sw->dirty[k] == o) {
                sw->dirty[k] = sw->dirty[--sw->ndirty];
                break;
            }
        }
    }
    uint32_t copies = d->mir_want & ~queued, all = d->mir_want | queued;
    d->mir_want = 0;
    /* Frames too long for the port are dropped here, as the enqueue would
     * drop them, so that what it delivers is a prefix of the queue. */
    uint32_t np = 0, copy_at = 0, ncopies = (uint32_t)__builtin_popcount(copies), got = 0;
    for (; all != 0; all &= all - 1) {
        uint32_t j = (uint32_t)__builtin_ctz(all);
        struct vs_pkt *view = vs_vlan_view(sw, d, j);
        if (view->len > d->mtu + 18) {
            d->st.tx_drop_too_long++;
            continue;
        }
        if (copies >> j & 1)
            copy_at |= 1U << np;
        d->pending[np++] = view;
    }
    d->npending = 0;
    if (vs_fd_port(d)) {
        /* One write per frame anyway: each one's outcome is known. */
        for (uint32_t j = 0; j < np; j++) {
            if (d->broken) {
                d->st.tx_drop_port_down += np - j;
                break;
            }
            if (fd_enqueue(d, &d->pending[j], 1) > 0)
                got += copy_at >> j & 1;
        }
    } else {
        /* A vring enqueue delivers its queue up to the first frame that
         * finds no room (vs_vring_rx.c), once none is too long.  A mirror
         * port's frames all go to its first RX queue, so that what it got
         * is that prefix (and an analyser sees them in the switch's order). */
        uint32_t q = d->nrxq > 0 ? d->rxq[0] : VS_QUEUE_RX;
        uint32_t sent = vs_vring_enqueue(d, &d->vq[q], d->pending, np);
        if (sent > 0)
            signal_due(sw, o, q);
        got = (uint32_t)__builtin_popcount(copy_at & burst_bits(sent));
    }
    d->st.tx_mirror += got;
    d->st.mirror_drops += ncopies - got;
}

/* taken: the frames of the burst the switch took in (not dropped for
 * their VLAN), as bits. */
static void mirror_burst(struct vs_switch *sw, uint32_t in, uint32_t taken)
{
    struct vs_port *ip = &sw->ports[in];
    if (ip->mirrored & VS_MIRROR_RX)
        mirror_want(sw, in, ip->mir[0], taken);
    for (uint32_t k = 0; k < sw->ndirty; k++) {
        struct vs_port *d = &sw->ports[sw->dirty[k]];
        if (!(d->mirrored & VS_MIRROR_TX))
            continue;
        uint32_t queued = 0;
        for (uint32_t j = 0; j < d->npending; j++)
            queued |= 1U << vs_burst_index(sw, d->pending[j]);
        mirror_want(sw, in, d->mir[1], queued);
    }
    /* One at a time off the list, so that a fault in one mirror port's
     * memory leaves the rest to vs_forward_recover. */
    while (sw->nmir > 0)
        mirror_deliver(sw, sw->mir_due[--sw->nmir]);
}

/* Gives port o the frames queued on it.  With one RX queue ready they all
 * go there; with more, each goes to the queue its flow hashes to, so one
 * flow stays in order on one queue, and each queue gets one enqueue (one
 * used-index update) for its share of the burst. */
static void deliver(struct vs_switch *sw, uint32_t o, struct vs_pkt **pkts, uint32_t n)
{
    struct vs_port *d = &sw->ports[o];
    if (vs_fd_port(d)) {
        fd_enqueue(d, pkts, n);
        return;
    }
    if (__builtin_expect(d->nrxq <= 1, 1)) {
        uint32_t q = d->nrxq == 1 ? d->rxq[0] : VS_QUEUE_RX;
        if (vs_vring_enqueue(d, &d->vq[q], pkts, n) > 0)
            signal_due(sw, o, q);
        return;
    }
    struct vs_pkt *by[VS_MAX_QUEUES / VS_QUEUES_PER_PAIR][VS_BURST];
    uint32_t count[VS_MAX_QUEUES / VS_QUEUES_PER_PAIR] = {0};
    for (uint32_t i = 0; i < n && i < VS_BURST; i++) {
        uint32_t k = vs_flow_hash(pkts[i]) % d->nrxq;
        by[k][count[k]++] = pkts[i];
    }
    for (uint32_t k = 0; k < d->nrxq; k++) {
        uint32_t q = d->rxq[k];
        if (count[k] > 0 && vs_vring_enqueue(d, &d->vq[q], by[k], count[k]) > 0)
            signal_due(sw, o, q);
    }
}

/* Frames of one burst mostly share their addresses (a flow, a bulk
 * transfer), so the last source learned and the last destination looked up
 * are remembered for the burst, with their VLAN.  Learning can only change
 * the entry of the address it learns, and it forgets the destination when
 * it runs.  vs_vlan_view gives each port its view of frame i of pkts (the
 * burst, recorded in sw->burst for it). */
void vs_forward(struct vs_switch *sw, uint32_t in, struct vs_pkt *pkts, uint32_t n)
{
    struct vs_port *ip = &sw->ports[in];
    uint64_t last_src = ~0ULL, last_dst = ~0ULL;
    int64_t last_out = -1;
    uint32_t taken = burst_bits(n);
    bool vlan_aware = ip->trunk || ip->vlan != 0;
    sw->burst = pkts;
    sw->tagged_made = 0;
    /* VXLAN: the remote behind the destination, and the sender's (a VXLAN
     * ingress port's frames may come from several remotes in a burst). */
    uint16_t last_remote = 0, last_src_remote = 0;
    bool vx_in = ip->kind == VS_PORT_VXLAN;
    for (uint32_t i = 0; i < n; i++) {
        struct vs_pkt *pkt = &pkts[i];
        pkt->tx_remote = 0;
        if (vs_capturing(ip, VS_CAP_RX))
            vs_capture_frame(ip, VS_CAP_RX, pkt);
        if (__builtin_expect(vlan_aware, 0)) {
            if (!vs_vlan_ingress(sw, ip, pkt)) {
                taken &= ~(1U << i);
                continue;
            }
        } else {
            pkt->vlan = 0;
            pkt->pcp_dei = 0;
        }
        uint16_t vlan = pkt->vlan;
        uint64_t dst = mac_at(pkt->eth), src = mac_at(pkt->eth + 6);
        /* The caches' keys: VLAN and address, as the MAC table's. */
        uint64_t vsrc = (uint64_t)vlan << 48 | src, vdst = (uint64_t)vlan << 48 | dst;
        uint16_t src_remote = vx_in ? pkt->rx_remote : 0;
        if (vsrc != last_src || src_remote != last_src_remote) {
            /* Group and all-zero sources are never stations. */
            if (!(src & (1ULL << 40)) && src != 0)
                learn(sw, ip, src, vlan, src_remote);
            last_src = vsrc;
            last_src_remote = src_remote;
            last_dst = ~0ULL;
        }
        if (!(dst & (1ULL << 40))) {
            if (vdst != last_dst) {
                last_out = vs_fdb_lookup_at(&sw->fdb, dst, vlan, &last_remote);
                last_dst = vdst;
            }
            int64_t out = last_out;
            if (out >= 0) {
                if ((uint32_t)out == in)
                    continue;
                /* An entry is only ever on a port that carries its VLAN
                 * (vs_port_set_vlans, vs_fdb_add). */
                pkt->tx_remote = last_remote;
                pkt->tx_port = (uint32_t)out;
                struct vs_port *d = &sw->ports[out];
                if (d->open && can_take(d))
                    queue_on(sw, (uint32_t)out, vs_vlan_view(sw, d, i));
                else if (d->open)
                    d->st.tx_drop_port_down++;
                continue;
            }
        }
        sw->st.flooded++;
        for (uint32_t k = 0; k < sw->nopen; k++) {
            uint32_t o = sw->open_ids[k];
            struct vs_port *d = &sw->ports[o];
            if (o != in && can_take(d) && vs_carries(d, vlan)) {
                d->st.tx_flood++;
                queue_on(sw, o, vs_vlan_view(sw, d, i));
            }
        }
    }
    if (__builtin_expect(sw->mirroring != 0, 0))
        mirror_burst(sw, in, taken);
    for (uint32_t k = 0; k < sw->ndirty; k++) {
        struct vs_port *d = &sw->ports[sw->dirty[k]];
        deliver(sw, sw->dirty[k], d->pending, d->npending);
        d->npending = 0;
    }
    sw->ndirty = 0;
}

static int serve_tap(struct vs_switch *sw, uint32_t port, uint32_t budget)
{
    struct vs_port *p = &sw->ports[port];
    uint32_t total = 0;
    while (total < budget) {
        int n = vs_tap_dequeue(p, sw->pkts, VS_BURST);
        if (n <= 0)
            return total > 0 ? (int)total : n;
        vs_forward(sw, port, sw->pkts, (uint32_t)n);
        total += (uint32_t)n;
    }
    return (int)total;
}

/* Serves TX ring q of a port until it is empty or the budget is spent.
 * With arm, an empty ring is left asking the guest for kicks (event mode);
 * the poll loop arms rings only before it sleeps, so a busy guest never
 * kicks. */
static int serve_txq(struct vs_switch *sw, uint32_t port, uint32_t q, uint32_t budget, bool arm)
{
    struct vs_port *p = &sw->ports[port];
    struct vs_vring *vq = &p->vq[q];
    uint32_t total = 0, spent = 0;
    vs_vring_enable_kicks(p, vq, false);
    /* Every chain consumed, dropped or not, and every pass spends budget,
     * and a chain spends one unit per VS_BUDGET_DESCS descriptors read: a
     * guest cannot keep us here with runts, long chains or a ring that
     * never settles; a port whose chains are long gets fewer frames. */
    while (spent < budget) {
        uint32_t consumed, descs;
        uint64_t left = (uint64_t)(budget - spent) * VS_BUDGET_DESCS;
        int n = vs_vring_dequeue(p, vq, sw->pkts, VS_BURST,
                                 left < UINT32_MAX ? (uint32_t)left : UINT32_MAX, &consumed, &descs);
        if (n < 0) {
            if (vs_vring_complete(p, vq, consumed))
                signal_due(sw, port, q);
            return total > 0 ? (int)total : n;
        }
        for (int i = 0; i < n; i++)
            vq->bytes += sw->pkts[i].len;
        vq->packets += (uint32_t)n;
        WRITE_ONCE(sw->flight_q, q);
        WRITE_ONCE(sw->flight, consumed);
        vs_forward(sw, port, sw->pkts, (uint32_t)n);
        if (vs_vring_complete(p, vq, consumed))
            signal_due(sw, port, q);
        WRITE_ONCE(sw->flight, 0);
        total += (uint32_t)n;
        uint32_t units = (descs + VS_BUDGET_DESCS - 1) / VS_BUDGET_DESCS;
        spent += (units > consumed ? units : consumed) + 1;
        if (consumed > 0)
            continue;
        if (!arm)
            return (int)total;
        /* Ring looked empty: ask for kicks, then look once more so a frame
         * added in between is not left waiting for a kick that never comes. */
        vs_vring_enable_kicks(p, vq, true);
        uint16_t idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
        if (idx == vq->last_avail)
            return (int)total;
        vs_vring_enable_kicks(p, vq, false);
    }
    /* Budget spent with kicks off: the caller comes back (see vs_port_kick). */
    return (int)(total > 0 ? total : 1);
}

/* Serves a VXLAN port's socket for up to budget datagrams, each batch's
 * frames forwarded a port at a time.  Datagrams count against the budget,
 * dropped ones too: a flood of bad ones cannot keep us here. */
static int serve_vxlan(struct vs_switch *sw, uint32_t port, uint32_t budget)
{
    uint32_t total = 0;
    while (total < budget) {
        uint32_t group[VS_BURST], count[VS_BURST], ng;
        int n = vs_vxlan_dequeue(sw, port, sw->pkts, group, count, &ng);
        if (n <= 0)
            return total > 0 ? (int)total : n;
        total += (uint32_t)n;
        for (uint32_t g = 0, at = 0; g < ng; at += count[g], g++)
            vs_forward(sw, group[g], sw->pkts + at, count[g]);
    }
    return (int)total;
}

/* Serves a port: a TAP or VXLAN port's descriptor, or every TX ring of a
 * vhost-user port that is ready or draining, the budget shared between
 * them so that a port's queue count does not buy it more of the loop.  The
 * caller keeps sw->now fresh (vs_tick). */
int vs_serve(struct vs_switch *sw, uint32_t port, uint32_t budget, bool arm)
{
    struct vs_port *p = &sw->ports[port];
    if (p->kind == VS_PORT_VXLAN)
        return serve_vxlan(sw, port, budget);
    if (vs_fd_port(p))
        return serve_tap(sw, port, budget);
    uint32_t rings[VS_MAX_QUEUES / VS_QUEUES_PER_PAIR], nrings = 0;
    for (uint32_t q = VS_QUEUE_TX; q < VS_MAX_QUEUES; q += VS_QUEUES_PER_PAIR) {
        if (p->vq[q].ready || p->vq[q].drain)
            rings[nrings++] = q;
    }
    if (nrings == 0)
        return p->broken ? -EIO : 0;
    uint32_t share = budget / nrings > 0 ? budget / nrings : 1;
    int total = 0;
    for (uint32_t k = 0; k < nrings; k++) {
        /* A ring an earlier one's frames broke the port of is not served. */
        if (!p->vq[rings[k]].ready && !p->vq[rings[k]].drain)
            break;
        int n = serve_txq(sw, port, rings[k], share, arm);
        if (n < 0)
            return total > 0 ? total : n;
        total += n;
    }
    return total;
}

int vs_port_kick(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vs_tick(sw);
    if (vs_fd_port(p))
        return vs_serve_guarded(sw, (int32_t)port, KICK_BUDGET, true);
    /* The front end can read the count away first, or clear O_NONBLOCK:
     * never a blocking read (vs_peer.c). */
    if (vq->kick_fd >= 0 && vs_efd_take(sw, port, vq->kick_fd))
        p->st.kicks++;
    if (vs_queue_is_rx(q))
        return 0;   /* RX buffers added: nothing waits for them, we never queue */
    return vs_serve_guarded(sw, (int32_t)port, KICK_BUDGET, true);
}

int vs_poll(struct vs_switch *sw, uint32_t budget)
{
    vs_tick(sw);
    return vs_serve_guarded(sw, -1, budget, true);
}

/* The test-only stall (vs_debug_stall): spin in this port, checking nothing,
 * as a port the thread could not get out of would. */
static void debug_stall(struct vs_switch *sw)
{
    uint32_t ms = __atomic_exchange_n(&sw->run.stall_ms, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&sw->run.stall_port, -1, __ATOMIC_RELAXED);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int64_t ns;
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
        ns = (int64_t)(t.tv_sec - t0.tv_sec) * 1000000000 + (t.tv_nsec - t0.tv_nsec);
    } while (ns < (int64_t)ms * 1000000);
}

/* Serves port id, as the watchdog sees it. */
static int serve_one(struct vs_switch *sw, uint32_t id, uint32_t budget, bool arm)
{
    struct vs_runner *r = &sw->run;
    /* Where the watchdog (vs_run_pause) finds the thread if it stays. */
    __atomic_store_n(&r->serving, (int32_t)id, __ATOMIC_RELAXED);
    if (__builtin_expect(__atomic_load_n(&r->stall_port, __ATOMIC_RELAXED) == (int32_t)id, 0))
        debug_stall(sw);
    int n = vs_serve(sw, id, budget, arm);
    if (__builtin_expect(__atomic_load_n(&r->wedged, __ATOMIC_RELAXED) == (int32_t)id, 0)) {
        vs_port_break(&sw->ports[id], "the switch spent longer than a pause may wait serving "
                                      "this port (watchdog)");
        __atomic_store_n(&r->wedged, -1, __ATOMIC_RELAXED);
        n = -EIO;
    }
    return n;
}

static int serve_ports(struct vs_switch *sw, int32_t only, uint32_t budget, bool arm)
{
    if (only >= 0)
        return serve_one(sw, (uint32_t)only, budget, arm);
    int total = 0;
    for (uint32_t k = 0; k < sw->nopen; k++) {
        int n = serve_one(sw, sw->open_ids[k], budget, arm);
        if (n > 0)
            total += n;
    }
    return total;
}

int vs_serve_guarded(struct vs_switch *sw, int32_t port, uint32_t budget, bool arm)
{
    struct vs_guard g;
    volatile int rc = 0;
    vs_guard_enter(&g, sw);
    if (sigsetjmp(g.env, 0) == 0) {
        rc = serve_ports(sw, port, budget, arm);
    } else {
        /* A port's memory faulted (it is broken now): finish the burst
         * without it.  Another fault on the way comes back here. */
        vs_guard_fault(&g);
        vs_forward_recover(sw);
        rc = port >= 0 && sw->ports[port].broken ? -EIO : 1;
    }
    vs_flush_signals(sw);
    __atomic_store_n(&sw->run.serving, -1, __ATOMIC_RELAXED);
    vs_guard_leave(&g);
    return rc;
}

void vs_forward_recover(struct vs_switch *sw)
{
    int32_t in = __atomic_load_n(&sw->run.serving, __ATOMIC_RELAXED);
    struct vs_port *ip = in >= 0 ? &sw->ports[in] : NULL;
    /* The burst's frames lie in the served port's memory (or in our own
     * buffers, for a TAP): if that is what faulted, they are gone. */
    bool lost = !ip || ip->broken;
    /* Mirror ports whose copies were not delivered yet: the copies are
     * gone (what was queued on them goes on below). */
    while (sw->nmir > 0)
        sw->ports[sw->mir_due[--sw->nmir]].mir_want = 0;
    for (uint32_t k = 0; k < sw->ndirty; k++) {
        struct vs_port *d = &sw->ports[sw->dirty[k]];
        uint32_t n = d->npending;
        d->npending = 0;    /* first: a fault below must not deliver twice */
        if (n == 0 || lost || !d->open || !can_take(d))
            continue;
        deliver(sw, sw->dirty[k], d->pending, n);
    }
    sw->ndirty = 0;
    uint32_t consumed = READ_ONCE(sw->flight);
    WRITE_ONCE(sw->flight, 0);
    uint32_t q = READ_ONCE(sw->flight_q);
    if (ip && ip->kind == VS_PORT_VHOST && !ip->broken && consumed > 0 && q < VS_MAX_QUEUES &&
        vs_vring_complete(ip, &ip->vq[q], consumed))
        signal_due(sw, (uint32_t)in, q);
}

int vs_port_inject(struct vs_switch *sw, uint32_t port, const uint8_t *frame, uint32_t len)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    if (len < VS_ETH_HDR || len > VS_FRAME_MAX)
        return -EINVAL;
    /* Called with the poll thread parked (between bursts): slot 0 is free.
     * The frame is the switch's own copy, as a TAP frame is. */
    vs_tick(sw);
    struct vs_pkt *pkt = &sw->pkts[0];
    memcpy(pkt->buf, frame, len);
    memcpy(pkt->eth, frame, VS_ETH_HDR);
    pkt->len = len;
    pkt->nseg = len > VS_ETH_HDR;
    pkt->seg[0] = (struct vs_seg){pkt->buf + VS_ETH_HDR, len - VS_ETH_HDR};
    struct vs_guard g;
    vs_guard_enter(&g, sw);
    if (sigsetjmp(g.env, 0) == 0) {
        __atomic_store_n(&sw->run.serving, (int32_t)port, __ATOMIC_RELAXED);
        vs_forward(sw, port, sw->pkts, 1);
    } else {
        /* A destination's memory faulted: it is broken, the rest get it. */
        vs_guard_fault(&g);
        vs_forward_recover(sw);
    }
    vs_flush_signals(sw);
    __atomic_store_n(&sw->run.serving, -1, __ATOMIC_RELAXED);
    vs_guard_leave(&g);
    return 0;
}
