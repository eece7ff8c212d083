/* Ports as the control plane sets them up: open, close, reset, MTU, MAC
 * limit, features, guest memory, and each virtqueue's vhost-user settings
 * (SET_VRING_*), with the state and counters read back.  Whether a ring can
 * be served is worked out here, after every change (refresh); serving it is
 * vs_forward.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <string.h>

#include "vs_internal.h"

/* Recomputes whether a ring can be served, after any change to it, to the
 * port's memory or to its features. */
static void refresh_ring(struct vs_port *p, struct vs_vring *vq)
{
    bool was = vq->ready || vq->drain;
    bool rx = vs_queue_is_rx((uint32_t)(vq - p->vq));
    vq->ready = vq->drain = false;
    vq->kicks_off = false;  /* the ring may be new: the next "off" writes */
    if (p->broken)
        return;
    if (vs_vring_translate(p, vq) < 0 || !vq->started)
        return;
    /* A disabled RX ring gets nothing; a disabled TX ring is drained and
     * its frames dropped (vhost-user.rst, "Ring states": the back end
     * "must not supply any new RX packets, but must process and discard
     * any TX packets"). */
    if (!vq->enabled && rx)
        return;
    /* What follows touches guest memory: a front end that truncated its
     * file breaks its port here, not the switch (vs_peer.c). */
    struct vs_guard g;
    vs_guard_enter(&g, p->sw);
    if (sigsetjmp(g.env, 0) != 0) {
        vs_guard_fault(&g);
        vs_guard_leave(&g);
        return;
    }
    vq->ready = vq->enabled;
    vq->drain = !vq->enabled;
    /* Buffers added to an RX ring never need our attention (frames that
     * find no room are dropped, not queued), so the guest need not kick
     * for them: a kick costs it a syscall or a VM exit.  With EVENT_IDX the
     * avail_event we never move does the same, but for one kick per wrap. */
    if (rx)
        vs_vring_enable_kicks(p, vq, false);
    if (!was) {
        /* After a reconnect the ring in guest memory is the truth: resume
         * from the used index the guest last saw. */
        uint16_t used = READ_ONCE(vq->used->idx);
        if (used != vq->last_used)
            vq->last_avail = vq->last_used = used;
        vq->pub_used = vq->last_used;
        vq->signalled_valid = false;
    }
    vs_guard_leave(&g);
}

/* refresh_ring, and the port's list of ready RX rings after it. */
static void refresh(struct vs_port *p, struct vs_vring *vq)
{
    refresh_ring(p, vq);
    vs_port_count_queues(p);
}

static void refresh_all(struct vs_port *p)
{
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        refresh_ring(p, &p->vq[q]);
    vs_port_count_queues(p);
}

void vs_port_count_queues(struct vs_port *p)
{
    uint32_t n = 0;
    for (uint32_t q = VS_QUEUE_RX; q < VS_MAX_QUEUES; q += VS_QUEUES_PER_PAIR) {
        if (p->vq[q].ready)
            p->rxq[n++] = (uint8_t)q;
    }
    p->nrxq = n;
}

int vs_port_open(struct vs_switch *sw, uint32_t port, uint32_t kind, uint32_t mtu)
{
    if (port >= VS_MAX_PORTS || sw->ports[port].open)
        return -EINVAL;
    if ((kind != VS_PORT_VHOST && kind != VS_PORT_TAP && kind != VS_PORT_VXLAN) || mtu < VS_MIN_MTU || mtu > VS_MAX_MTU)
        return -EINVAL;
    struct vs_port *p = &sw->ports[port];
    memset(p, 0, sizeof(*p));
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        vs_vring_init(&p->vq[q]);
    p->open = true;
    p->id = port;
    p->sw = sw;
    p->kind = kind;
    p->fd = -1;
    p->mtu = mtu;
    p->mac_limit = VS_DEFAULT_MAC_LIMIT;
    p->error = "";
    p->hdr_len = 10;
    sw->open_ids[sw->nopen++] = port;
    return 0;
}

void vs_port_reset(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return;
    vs_mem_unmap(&p->mem);
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        vs_vring_init(&p->vq[q]);
    p->nrxq = 0;
    p->features = 0;
    vs_log_unmap(p);
    p->hdr_len = 10;
    p->mrg_rxbuf = p->event_idx = p->indirect = false;
    p->broken = false;
    p->error = "";
    p->fd = -1;
    vs_fdb_remove_port(&sw->fdb, (int)port, false);
}

/* Recounts the ports some port mirrors (sw->mirroring, what forward()
 * looks at once per burst) after a change to a mirror. */
static void mirror_recount(struct vs_switch *sw)
{
    uint32_t n = 0;
    for (uint32_t k = 0; k < sw->nopen; k++) {
        struct vs_port *s = &sw->ports[sw->open_ids[k]];
        s->mirrored = 0;
        for (uint32_t d = 0; d < 2; d++) {
            uint64_t any = 0;
            for (uint32_t w = 0; w < VS_MAX_PORTS / 64; w++)
                any |= s->mir[d][w];
            if (any)
                s->mirrored |= d == 0 ? VS_MIRROR_RX : VS_MIRROR_TX;
        }
        n += s->mirrored != 0;
    }
    sw->mirroring = n;
}

/* Takes port out of every port's mirror destinations. */
static void mirror_forget(struct vs_switch *sw, uint32_t port)
{
    for (uint32_t k = 0; k < sw->nopen; k++) {
        struct vs_port *s = &sw->ports[sw->open_ids[k]];
        for (uint32_t d = 0; d < 2; d++)
            s->mir[d][port / 64] &= ~(1ULL << (port % 64));
    }
}

int vs_port_set_mirror(struct vs_switch *sw, uint32_t port, const uint32_t *from, uint32_t n,
                       uint32_t dirs)
{
    if (!vs_port_get(sw, port))
        return -ENODEV;
    if ((dirs & ~(uint32_t)(VS_MIRROR_RX | VS_MIRROR_TX)) != 0 || n > VS_MAX_PORTS)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        if (from[i] == port)
            return -EINVAL;
        if (!vs_port_get(sw, from[i]))
            return -ENODEV;
    }
    mirror_forget(sw, port);
    for (uint32_t i = 0; i < n; i++) {
        struct vs_port *s = &sw->ports[from[i]];
        if (dirs & VS_MIRROR_RX)
            s->mir[0][port / 64] |= 1ULL << (port % 64);
        if (dirs & VS_MIRROR_TX)
            s->mir[1][port / 64] |= 1ULL << (port % 64);
    }
    mirror_recount(sw);
    return 0;
}

void vs_port_close(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return;
    vs_port_reset(sw, port);
    /* Out of every mirror, as a source (its own bits go with it) and as a
     * destination. */
    memset(p->mir, 0, sizeof(p->mir));
    mirror_forget(sw, port);
    vs_fdb_remove_port(&sw->fdb, (int)port, true);
    vs_capture_stop(sw, port);
    vs_vxlan_free(p);
    p->open = false;
    for (uint32_t i = 0; i < sw->nopen; i++) {
        if (sw->open_ids[i] == port) {
            sw->open_ids[i] = sw->open_ids[--sw->nopen];
            break;
        }
    }
    mirror_recount(sw);
}

int vs_port_set_mtu(struct vs_switch *sw, uint32_t port, uint32_t mtu)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    if (mtu < VS_MIN_MTU || mtu > VS_MAX_MTU)
        return -EINVAL;
    p->mtu = mtu;
    return 0;
}

int vs_port_set_mac_limit(struct vs_switch *sw, uint32_t port, uint32_t limit)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    p->mac_limit = limit;
    return 0;
}

int vs_port_set_fd(struct vs_switch *sw, uint32_t port, int fd)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !vs_fd_port(p))
        return -EINVAL;
    p->fd = fd;
    p->broken = false;
    p->error = "";
    return 0;
}

int vs_port_set_features(struct vs_switch *sw, uint32_t port, uint64_t features)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    p->features = features;
    p->mrg_rxbuf = features & (1ULL << VS_F_MRG_RXBUF);
    p->event_idx = features & (1ULL << VS_F_EVENT_IDX);
    p->indirect = features & (1ULL << VS_F_INDIRECT_DESC);
    p->hdr_len = (p->mrg_rxbuf || (features & (1ULL << VS_F_VERSION_1))) ? 12 : 10;
    /* LOG_ALL comes and goes while the rings run (migration starts, or is
     * cancelled): refresh keeps a running ring's indexes, it only
     * re-translates. */
    vs_log_refresh(p);
    refresh_all(p);
    return 0;
}

int vs_port_set_mem(struct vs_switch *sw, uint32_t port, const struct vs_mem_region *regions,
                    uint32_t n)
{
    struct vs_port *p = vs_port_get(sw, port);
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

/* Does a started ring of the port lie (in part) in region r? */
static bool ring_in(const struct vs_port *p, const struct vs_region *r)
{
    for (int q = 0; q < VS_MAX_QUEUES; q++) {
        const struct vs_vring *vq = &p->vq[q];
        if (!vq->started || !vq->addr_set)
            continue;
        const uint64_t ua[3] = {vq->desc_ua, vq->avail_ua, vq->used_ua};
        for (int k = 0; k < 3; k++) {
            if (ua[k] >= r->uaddr && ua[k] - r->uaddr < r->size)
                return true;
        }
    }
    return false;
}

int vs_port_add_mem(struct vs_switch *sw, uint32_t port, const struct vs_mem_region *region)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    int rc = vs_mem_add(&p->mem, region);
    if (rc < 0)
        return rc;
    /* A ring that did not translate before may now (its memory came). */
    refresh_all(p);
    return 0;
}

int vs_port_rem_mem(struct vs_switch *sw, uint32_t port, const struct vs_mem_region *region)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    for (uint32_t i = 0; i < p->mem.n; i++) {
        const struct vs_region *r = &p->mem.r[i];
        if (r->gpa == region->guest_phys_addr && r->size == region->size &&
            r->uaddr == region->user_addr && ring_in(p, r))
            return -EBUSY;
    }
    struct vs_region gone;
    int rc = vs_mem_remove(&p->mem, region, &gone);
    if (rc < 0)
        return rc;
    /* Translated again before the mapping goes: nothing points into it. */
    refresh_all(p);
    vs_region_unmap(&gone);
    return 0;
}

uint32_t vs_port_mem_regions(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    return p ? p->mem.n : 0;
}

uint32_t vs_port_state(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return 0;
    uint32_t s = VS_STATE_OPEN;
    if (p->broken)
        s |= VS_STATE_BROKEN;
    bool up = vs_fd_port(p) ? p->fd >= 0 && !p->broken
                                     : p->vq[VS_QUEUE_RX].ready && p->vq[VS_QUEUE_TX].ready;
    if (up)
        s |= VS_STATE_UP;
    return s;
}

const char *vs_port_error(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    return p ? p->error : "no such port";
}

void vs_port_get_stats(struct vs_switch *sw, uint32_t port, struct vs_port_stats *out)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = p->st;
    /* The table keeps this one: only it sees an entry go. */
    out->fdb_count = sw->fdb.owned[port];
}

int vs_vring_set_num(struct vs_switch *sw, uint32_t port, uint32_t q, uint32_t num)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
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
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
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
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq || base > UINT16_MAX)
        return -EINVAL;
    vq->last_avail = vq->last_used = vq->pub_used = (uint16_t)base;
    vq->signalled_valid = false;
    return 0;
}

int vs_vring_stop(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->started = false;
    vq->ready = vq->drain = false;
    vq->kick_fd = -1;
    vq->call_fd = -1;
    vs_port_count_queues(p);
    return vq->last_avail;
}

int vs_vring_get_stats(struct vs_switch *sw, uint32_t port, uint32_t q,
                       struct vs_queue_stats *out)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    out->packets = __atomic_load_n(&vq->packets, __ATOMIC_RELAXED);
    out->bytes = __atomic_load_n(&vq->bytes, __ATOMIC_RELAXED);
    return 0;
}

int vs_vring_set_kick(struct vs_switch *sw, uint32_t port, uint32_t q, int fd)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
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
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->call_fd = fd;
    return 0;
}

int vs_vring_enable(struct vs_switch *sw, uint32_t port, uint32_t q, int enabled)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->enabled = enabled != 0;
    refresh(p, vq);
    return 0;
}

int vs_vring_ready(struct vs_switch *sw, uint32_t port, uint32_t q)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    return vq && vq->ready;
}
