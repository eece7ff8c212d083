/* The switch: ports, their virtqueues, and the forwarding loop.
 *
 * One burst: take up to VS_BURST frames from a port's TX ring, learn each
 * source, queue each frame on its destination port (or every other up port
 * when flooding), then give every destination its queue in one enqueue, so
 * each egress ring gets one used-index update and at most one interrupt. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vs_internal.h"

#define KICK_BUDGET (8 * VS_BURST)

void vs_tick(struct vs_switch *sw)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    sw->now = (uint32_t)ts.tv_sec;
}

struct vs_switch *vs_switch_new(uint32_t fdb_size)
{
    struct vs_switch *sw = calloc(1, sizeof(*sw));
    if (!sw)
        return NULL;
    sw->run.ctl_fd = sw->run.ack_fd = -1;
    if (vs_fdb_init(&sw->fdb, fdb_size) < 0 || vs_run_init(sw) < 0) {
        vs_run_destroy(sw);
        vs_fdb_destroy(&sw->fdb);
        free(sw);
        return NULL;
    }
    for (uint32_t i = 0; i < VS_MAX_PORTS; i++)
        for (int q = 0; q < VS_MAX_QUEUES; q++)
            vs_vring_init(&sw->ports[i].vq[q]);
    for (uint32_t i = 0; i < VS_BURST; i++)
        sw->pkts[i].buf = sw->bufs[i];
    vs_tick(sw);
    return sw;
}

void vs_switch_free(struct vs_switch *sw)
{
    if (!sw)
        return;
    for (uint32_t i = 0; i < VS_MAX_PORTS; i++)
        if (sw->ports[i].open)
            vs_port_close(sw, i);
    vs_fdb_destroy(&sw->fdb);
    vs_run_destroy(sw);
    free(sw);
}

void vs_switch_get_stats(struct vs_switch *sw, struct vs_switch_stats *out)
{
    *out = sw->st;
    out->fdb_entries = sw->fdb.count;
    out->fdb_capacity = sw->fdb.max;
}

static struct vs_port *get_port(struct vs_switch *sw, uint32_t port)
{
    if (port >= VS_MAX_PORTS || !sw->ports[port].open)
        return NULL;
    return &sw->ports[port];
}

static struct vs_vring *get_vring(struct vs_switch *sw, uint32_t port, uint32_t q,
                                  struct vs_port **pp)
{
    struct vs_port *p = get_port(sw, port);
    if (!p || q >= VS_MAX_QUEUES)
        return NULL;
    *pp = p;
    return &p->vq[q];
}

/* Recomputes whether a ring can be served, after any change to it, to the
 * port's memory or to its features. */
static void refresh(struct vs_port *p, struct vs_vring *vq)
{
    bool was = vq->ready;
    vq->ready = false;
    vq->kicks_off = false;  /* the ring may be new: the next "off" writes */
    if (p->broken)
        return;
    if (vs_vring_translate(p, vq) < 0 || !vq->started || !vq->enabled)
        return;
    vq->ready = true;
    /* Buffers added to an RX ring never need our attention (frames that
     * find no room are dropped, not queued), so the guest need not kick
     * for them: a kick costs it a syscall or a VM exit.  With EVENT_IDX the
     * avail_event we never move does the same, but for one kick per wrap. */
    if ((vq - p->vq) % 2 == 0)
        vs_vring_enable_kicks(p, vq, false);
    if (!was) {
        /* After a reconnect the ring in guest memory is the truth: resume
         * from the used index the guest last saw. */
        uint16_t used = READ_ONCE(vq->used->idx);
        if (used != vq->last_used)
            vq->last_avail = vq->last_used = used;
        vq->signalled_valid = false;
    }
}

static void refresh_all(struct vs_port *p)
{
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        refresh(p, &p->vq[q]);
}

int vs_port_open(struct vs_switch *sw, uint32_t port, uint32_t kind, uint32_t mtu)
{
    if (port >= VS_MAX_PORTS || sw->ports[port].open)
        return -EINVAL;
    if ((kind != VS_PORT_VHOST && kind != VS_PORT_TAP) || mtu < VS_MIN_MTU || mtu > VS_MAX_MTU)
        return -EINVAL;
    struct vs_port *p = &sw->ports[port];
    memset(p, 0, sizeof(*p));
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        vs_vring_init(&p->vq[q]);
    p->open = true;
    p->id = port;
    p->kind = kind;
    p->fd = -1;
    p->mtu = mtu;
    p->error = "";
    p->hdr_len = 10;
    sw->open_ids[sw->nopen++] = port;
    return 0;
}

void vs_port_reset(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return;
    vs_mem_unmap(&p->mem);
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        vs_vring_init(&p->vq[q]);
    p->features = 0;
    p->hdr_len = 10;
    p->mrg_rxbuf = p->event_idx = p->indirect = false;
    p->broken = false;
    p->error = "";
    p->fd = -1;
    vs_fdb_flush(sw, (int)port, 0);
}

void vs_port_close(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return;
    vs_port_reset(sw, port);
    vs_fdb_flush(sw, (int)port, 1);
    vs_capture_stop(sw, port);
    p->open = false;
    for (uint32_t i = 0; i < sw->nopen; i++) {
        if (sw->open_ids[i] == port) {
            sw->open_ids[i] = sw->open_ids[--sw->nopen];
            break;
        }
    }
}

int vs_port_set_mtu(struct vs_switch *sw, uint32_t port, uint32_t mtu)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return -ENODEV;
    if (mtu < VS_MIN_MTU || mtu > VS_MAX_MTU)
        return -EINVAL;
    p->mtu = mtu;
    return 0;
}

int vs_port_set_mac_limit(struct vs_switch *sw, uint32_t port, uint32_t limit)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return -ENODEV;
    p->mac_limit = limit;
    return 0;
}

int vs_port_set_fd(struct vs_switch *sw, uint32_t port, int fd)
{
    struct vs_port *p = get_port(sw, port);
    if (!p || p->kind != VS_PORT_TAP)
        return -EINVAL;
    p->fd = fd;
    p->broken = false;
    p->error = "";
    return 0;
}

int vs_port_set_features(struct vs_switch *sw, uint32_t port, uint64_t features)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return -ENODEV;
    p->features = features;
    p->mrg_rxbuf = features & (1ULL << VS_F_MRG_RXBUF);
    p->event_idx = features & (1ULL << VS_F_EVENT_IDX);
    p->indirect = features & (1ULL << VS_F_INDIRECT_DESC);
    p->hdr_len = (p->mrg_rxbuf || (features & (1ULL << VS_F_VERSION_1))) ? 12 : 10;
    refresh_all(p);
    return 0;
}

int vs_port_set_mem(struct vs_switch *sw, uint32_t port, const struct vs_mem_region *regions,
                    uint32_t n)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return -ENODEV;
    struct vs_mem fresh;
    int rc = vs_mem_map(&fresh, regions, n);
    if (rc < 0)
        return rc;
    struct vs_mem old = p->mem;
    p->mem = fresh;
    refresh_all(p);
    vs_mem_unmap(&old);
    return 0;
}

uint32_t vs_port_state(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = get_port(sw, port);
    if (!p)
        return 0;
    uint32_t s = VS_STATE_OPEN;
    if (p->broken)
        s |= VS_STATE_BROKEN;
    if (p->kind == VS_PORT_TAP ? (p->fd >= 0 && !p->broken) : (p->vq[0].ready && p->vq[1].ready))
        s |= VS_STATE_UP;
    return s;
}

const char *vs_port_error(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = get_port(sw, port);
    return p ? p->error : "no such port";
}

void vs_port_get_stats(struct vs_switch *sw, uint32_t port, struct vs_port_stats *out)
{
    struct vs_port *p = get_port(sw, port);
    if (p)
        *out = p->st;
    else
        memset(out, 0, sizeof(*out));
}

int vs_vring_set_num(struct vs_switch *sw, uint32_t port, uint32_t q, uint32_t num)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    if (num == 0 || num > VS_MAX_RING_SIZE || (num & (num - 1)))
        return -EINVAL;
    vq->num = num;
    refresh(p, vq);
    return 0;
}

int vs_vring_set_addr(struct vs_switch *sw, uint32_t port, uint32_t q, uint64_t desc_uaddr,
                      uint64_t used_uaddr, uint64_t avail_uaddr)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->desc_ua = desc_uaddr;
    vq->used_ua = used_uaddr;
    vq->avail_ua = avail_uaddr;
    vq->addr_set = true;
    /* A front end that sets the rings up again gets a fresh start. */
    if (p->broken) {
        p->broken = false;
        p->error = "";
        refresh_all(p);
    }
    int rc = vs_vring_translate(p, vq);
    refresh(p, vq);
    return rc == -EAGAIN ? 0 : rc;
}

int vs_vring_set_base(struct vs_switch *sw, uint32_t port, uint32_t q, uint32_t base)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq || base > 0xffff)
        return -EINVAL;
    vq->last_avail = vq->last_used = (uint16_t)base;
    vq->signalled_valid = false;
    return 0;
}

int vs_vring_stop(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->started = false;
    vq->ready = false;
    vq->kick_fd = -1;
    vq->call_fd = -1;
    return vq->last_avail;
}

int vs_vring_set_kick(struct vs_switch *sw, uint32_t port, uint32_t q, int fd)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->kick_fd = fd;
    vq->started = true;
    refresh(p, vq);
    return 0;
}

int vs_vring_set_call(struct vs_switch *sw, uint32_t port, uint32_t q, int fd)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->call_fd = fd;
    return 0;
}

int vs_vring_enable(struct vs_switch *sw, uint32_t port, uint32_t q, int enabled)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->enabled = enabled != 0;
    refresh(p, vq);
    return 0;
}

int vs_vring_ready(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    return vq && vq->ready;
}

/* Forwarding. */

static inline uint64_t mac_at(const uint8_t *b)
{
    return (uint64_t)b[0] << 40 | (uint64_t)b[1] << 32 | (uint64_t)b[2] << 24 |
           (uint64_t)b[3] << 16 | (uint64_t)b[4] << 8 | (uint64_t)b[5];
}

/* Can the port take frames now? */
static inline bool can_take(const struct vs_port *p)
{
    return p->kind == VS_PORT_TAP ? p->fd >= 0 && !p->broken : p->vq[0].ready;
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
        vs_vring_signal(p, vq);
    }
    sw->nsignal = 0;
}

static inline void queue_on(struct vs_switch *sw, uint32_t port, struct vs_pkt *pkt)
{
    struct vs_port *d = &sw->ports[port];
    if (d->npending == 0)
        sw->dirty[sw->ndirty++] = port;
    d->pending[d->npending++] = pkt;
}

/* Frames of one burst mostly share their addresses (a flow, a bulk
 * transfer), so the last source learned and the last destination looked up
 * are remembered for the burst.  Learning can only change the entry of the
 * address it learns, and it forgets the destination when it runs. */
static void forward(struct vs_switch *sw, uint32_t in, struct vs_pkt *pkts, uint32_t n)
{
    struct vs_port *ip = &sw->ports[in];
    uint64_t last_src = ~0ULL, last_dst = ~0ULL;
    int64_t last_out = -1;
    for (uint32_t i = 0; i < n; i++) {
        struct vs_pkt *pkt = &pkts[i];
        if (vs_capturing(ip, VS_CAP_RX))
            vs_capture_frame(ip, VS_CAP_RX, pkt);
        uint64_t dst = mac_at(pkt->eth), src = mac_at(pkt->eth + 6);
        if (src != last_src) {
            /* Group and all-zero sources are never stations. */
            if (!(src & (1ULL << 40)) && src != 0)
                vs_fdb_learn(sw, src, 0, in);
            last_src = src;
            last_dst = ~0ULL;
        }
        if (!(dst & (1ULL << 40))) {
            if (dst != last_dst) {
                last_out = vs_fdb_lookup(&sw->fdb, dst, 0);
                last_dst = dst;
            }
            int64_t out = last_out;
            if (out >= 0) {
                if ((uint32_t)out == in)
                    continue;
                struct vs_port *d = &sw->ports[out];
                if (d->open && can_take(d))
                    queue_on(sw, (uint32_t)out, pkt);
                else if (d->open)
                    d->st.tx_drop_port_down++;
                continue;
            }
        }
        sw->st.flooded++;
        for (uint32_t k = 0; k < sw->nopen; k++) {
            uint32_t o = sw->open_ids[k];
            if (o != in && can_take(&sw->ports[o])) {
                sw->ports[o].st.tx_flood++;
                queue_on(sw, o, pkt);
            }
        }
    }
    for (uint32_t k = 0; k < sw->ndirty; k++) {
        struct vs_port *d = &sw->ports[sw->dirty[k]];
        if (d->kind == VS_PORT_TAP)
            vs_tap_enqueue(d, d->pending, d->npending);
        else if (vs_vring_enqueue(d, &d->vq[0], d->pending, d->npending) > 0)
            signal_due(sw, sw->dirty[k], 0);
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
        forward(sw, port, sw->pkts, (uint32_t)n);
        total += (uint32_t)n;
    }
    return (int)total;
}

/* Serves a port's TX ring until it is empty or the budget is spent.  With
 * arm, an empty ring is left asking the guest for kicks (event mode); the
 * poll loop arms rings only before it sleeps, so a busy guest never kicks.
 * The caller keeps sw->now fresh (vs_tick). */
int vs_serve(struct vs_switch *sw, uint32_t port, uint32_t budget, bool arm)
{
    struct vs_port *p = &sw->ports[port];
    if (p->kind == VS_PORT_TAP)
        return serve_tap(sw, port, budget);
    struct vs_vring *vq = &p->vq[1];
    uint32_t total = 0, spent = 0;
    if (!vq->ready)
        return p->broken ? -EIO : 0;
    vs_vring_enable_kicks(p, vq, false);
    /* Every chain consumed, dropped or not, and every pass spends budget:
     * a guest cannot keep us here with runts or a ring that never settles. */
    while (spent < budget) {
        uint32_t consumed;
        int n = vs_vring_dequeue(p, vq, sw->pkts, VS_BURST, &consumed);
        if (n < 0) {
            if (vs_vring_complete(p, vq, consumed))
                signal_due(sw, port, 1);
            return total > 0 ? (int)total : n;
        }
        forward(sw, port, sw->pkts, (uint32_t)n);
        if (vs_vring_complete(p, vq, consumed))
            signal_due(sw, port, 1);
        total += (uint32_t)n;
        spent += consumed + 1;
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

int vs_port_kick(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_port *p;
    struct vs_vring *vq = get_vring(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vs_tick(sw);
    if (p->kind == VS_PORT_TAP) {
        int n = vs_serve(sw, port, KICK_BUDGET, true);
        vs_flush_signals(sw);
        return n;
    }
    if (vq->kick_fd >= 0) {
        uint64_t v;
        if (read(vq->kick_fd, &v, sizeof(v)) == sizeof(v))
            p->st.kicks++;
    }
    if (q % 2 == 0)
        return 0;   /* RX buffers added: nothing waits for them, we never queue */
    int n = vs_serve(sw, port, KICK_BUDGET, true);
    vs_flush_signals(sw);
    return n;
}

int vs_poll(struct vs_switch *sw, uint32_t budget)
{
    int total = 0;
    vs_tick(sw);
    for (uint32_t k = 0; k < sw->nopen; k++) {
        int n = vs_serve(sw, sw->open_ids[k], budget, true);
        if (n > 0)
            total += n;
    }
    vs_flush_signals(sw);
    return total;
}
