/* Split virtqueues: taking frames from a guest's TX ring and giving frames
 * to its RX ring (virtio 1.2, 2.7).
 *
 * The guest can rewrite any of this memory at any moment, so every value is
 * read once, checked, and only the checked copy is used: heads and next
 * indexes against the table size, chain length against the table size,
 * every (addr, len) against the mapped regions, the avail index against
 * the ring size.  A ring that fails a check is broken: the port stops, and
 * nothing outside the guest's own regions is ever touched. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vs_internal.h"

void vs_port_break(struct vs_port *p, const char *why)
{
    if (!p->broken) {
        p->broken = true;
        p->error = why;
        p->st.ring_errors++;
    }
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        p->vq[q].ready = false;
}

void vs_vring_init(struct vs_vring *vq)
{
    memset(vq, 0, sizeof(*vq));
    vq->kick_fd = -1;
    vq->call_fd = -1;
}

static inline uint16_t *used_event(struct vs_vring *vq)
{
    return &vq->avail->ring[vq->num];
}

static inline uint16_t *avail_event(struct vs_vring *vq)
{
    return (uint16_t *)&vq->used->ring[vq->num];
}

int vs_vring_translate(struct vs_port *p, struct vs_vring *vq)
{
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    if (!vq->addr_set || vq->num == 0 || p->mem.n == 0)
        return -EAGAIN;
    uint64_t extra = p->event_idx ? 2 : 0;
    uint64_t num = vq->num;
    void *d = vs_uaddr_to_host(&p->mem, vq->desc_ua, 16 * num);
    void *a = vs_uaddr_to_host(&p->mem, vq->avail_ua, 4 + 2 * num + extra);
    void *u = vs_uaddr_to_host(&p->mem, vq->used_ua, 4 + 8 * num + extra);
    if (!d || !a || !u)
        return -EFAULT;
    if (((uintptr_t)d & 15) || ((uintptr_t)a & 1) || ((uintptr_t)u & 3))
        return -EINVAL;
    /* The parts must not overlap: kick suppression writes used->flags, and
     * a used ring laid over the avail index would turn our own writes
     * into "new work" forever. */
    uintptr_t dl = 16 * num, al = 4 + 2 * num + extra, ul = 4 + 8 * num + extra;
    uintptr_t di = (uintptr_t)d, ai = (uintptr_t)a, ui = (uintptr_t)u;
    if ((di < ai + al && ai < di + dl) || (di < ui + ul && ui < di + dl) ||
        (ai < ui + ul && ui < ai + al))
        return -EINVAL;
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    return 0;
}

/* Walks one descriptor chain, following at most one indirect table. */
struct desc_iter {
    const struct vring_desc *table;
    uint32_t size;
    uint32_t idx;
    uint32_t seen;
    bool indirect;
    bool done;
};

/* 1: *out holds the next descriptor; 0: end of chain; <0: broken ring. */
static int desc_next(struct vs_port *p, struct desc_iter *it, struct vring_desc *out)
{
    for (;;) {
        if (it->done)
            return 0;
        if (it->idx >= it->size) {
            vs_port_break(p, "descriptor index out of range");
            return -EINVAL;
        }
        if (++it->seen > it->size) {
            vs_port_break(p, "descriptor chain loops or is longer than its table");
            return -ELOOP;
        }
        const struct vring_desc *src = &it->table[it->idx];
        struct vring_desc d = {
            .addr = READ_ONCE(src->addr),
            .len = READ_ONCE(src->len),
            .flags = READ_ONCE(src->flags),
            .next = READ_ONCE(src->next),
        };
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (it->indirect || !p->indirect || (d.flags & VRING_DESC_F_NEXT) ||
                d.len == 0 || d.len % sizeof(struct vring_desc) ||
                d.len / sizeof(struct vring_desc) > VS_MAX_RING_SIZE) {
                vs_port_break(p, "bad indirect descriptor");
                return -EINVAL;
            }
            uint64_t len = d.len;
            const void *t = vs_gpa_to_host(&p->mem, d.addr, &len);
            if (!t || len != d.len || ((uintptr_t)t & 15)) {
                vs_port_break(p, "indirect table outside guest memory");
                return -EFAULT;
            }
            it->table = t;
            it->size = d.len / sizeof(struct vring_desc);
            it->idx = 0;
            it->seen = 0;
            it->indirect = true;
            continue;
        }
        if (d.flags & VRING_DESC_F_NEXT)
            it->idx = d.next;
        else
            it->done = true;
        *out = d;
        return 1;
    }
}

static void desc_iter_start(struct desc_iter *it, struct vs_vring *vq, uint16_t head)
{
    *it = (struct desc_iter){.table = vq->desc, .size = vq->num, .idx = head};
}

/* Appends the translated spans of one descriptor to iov; -EFAULT if any
 * byte lies outside guest memory, -ENOBUFS if iov is full. */
static int desc_to_iov(struct vs_port *p, const struct vring_desc *d,
                       struct vs_iov *iov, uint32_t *niov)
{
    uint64_t addr = d->addr;
    uint64_t left = d->len;
    while (left > 0) {
        uint64_t len = left;
        uint8_t *h = vs_gpa_to_host(&p->mem, addr, &len);
        if (!h)
            return -EFAULT;
        if (*niov >= VS_MAX_IOV)
            return -ENOBUFS;
        iov[(*niov)++] = (struct vs_iov){h, (uint32_t)len};
        addr += len;
        left -= len;
    }
    return 0;
}

static inline void put_used(struct vs_vring *vq, uint16_t idx, uint32_t id, uint32_t len)
{
    struct vring_used_elem *e = &vq->used->ring[idx & (vq->num - 1)];
    WRITE_ONCE(e->id, id);
    WRITE_ONCE(e->len, len);
}

static inline void publish_used(struct vs_vring *vq)
{
    __atomic_store_n(&vq->used->idx, vq->last_used, __ATOMIC_RELEASE);
}

/* Reads the avail index; a jump of more than the ring size means the
 * guest is lying, and the ring stops. */
static int avail_count(struct vs_port *p, struct vs_vring *vq, uint16_t *count)
{
    uint16_t idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
    uint16_t n = (uint16_t)(idx - vq->last_avail);
    if (n > vq->num) {
        vs_port_break(p, "avail index moved by more than the ring size");
        return -EINVAL;
    }
    *count = n;
    return 0;
}

static int read_head(struct vs_port *p, struct vs_vring *vq, uint16_t slot, uint16_t *head)
{
    uint16_t h = READ_ONCE(vq->avail->ring[slot & (vq->num - 1)]);
    if (h >= vq->num) {
        vs_port_break(p, "avail ring head out of range");
        return -EINVAL;
    }
    *head = h;
    return 0;
}

/* Outcome of reading one TX chain. */
enum { TX_OK, TX_RUNT, TX_TOO_LONG, TX_BAD_HDR };

/* Copies one TX chain into pkt: the first hdr_len bytes are the virtio-net
 * header, the rest the frame. */
static int read_tx_chain(struct vs_port *p, struct vs_vring *vq, uint16_t head,
                         struct vs_pkt *pkt, int *outcome)
{
    struct desc_iter it;
    struct vring_desc d;
    uint8_t hdr[sizeof(struct virtio_net_hdr)];
    uint32_t hdr_got = 0, frame = 0;
    uint32_t limit = p->mtu + 18;
    bool too_long = false;
    int rc;

    desc_iter_start(&it, vq, head);
    while ((rc = desc_next(p, &it, &d)) > 0) {
        if (d.flags & VRING_DESC_F_WRITE) {
            vs_port_break(p, "device-writable descriptor in a TX chain");
            return -EINVAL;
        }
        uint64_t addr = d.addr;
        uint64_t left = d.len;
        while (left > 0) {
            uint64_t len = left;
            const uint8_t *src = vs_gpa_to_host(&p->mem, addr, &len);
            if (!src) {
                vs_port_break(p, "TX descriptor outside guest memory");
                return -EFAULT;
            }
            addr += len;
            left -= len;
            if (hdr_got < p->hdr_len) {
                uint32_t take = p->hdr_len - hdr_got;
                if (take > len)
                    take = (uint32_t)len;
                memcpy(hdr + hdr_got, src, take);
                hdr_got += take;
                src += take;
                len -= take;
            }
            if (len == 0)
                continue;
            if (too_long || len > limit - frame) {
                too_long = true;
                continue;
            }
            memcpy(pkt->data + frame, src, len);
            frame += (uint32_t)len;
        }
    }
    if (rc < 0)
        return rc;
    pkt->len = frame;
    /* We offer neither checksum nor segmentation offload, so a header that
     * asks for either describes a frame we cannot send on correctly. */
    if (hdr_got < p->hdr_len || hdr[0] != 0 || hdr[1] != 0)
        *outcome = TX_BAD_HDR;
    else if (too_long)
        *outcome = TX_TOO_LONG;
    else if (frame < 14)
        *outcome = TX_RUNT;
    else
        *outcome = TX_OK;
    return 0;
}

int vs_vring_dequeue(struct vs_port *p, struct vs_vring *vq, struct vs_pkt *pkts, uint32_t max,
                     uint32_t *consumed)
{
    uint16_t avail;
    *consumed = 0;
    if (!vq->ready || avail_count(p, vq, &avail) < 0)
        return p->broken ? -EIO : 0;
    uint32_t n = avail < max ? avail : max;
    uint16_t start = vq->last_used;
    uint32_t got = 0;
    int rc = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint16_t head;
        int outcome;
        struct vs_pkt *pkt = &pkts[got];
        rc = read_head(p, vq, vq->last_avail, &head);
        if (rc == 0)
            rc = read_tx_chain(p, vq, head, pkt, &outcome);
        if (rc < 0) {
            p->st.rx_drop_bad_desc++;
            break;
        }
        put_used(vq, vq->last_used++, head, 0);
        vq->last_avail++;
        switch (outcome) {
        case TX_OK:
            p->st.rx_packets++;
            p->st.rx_bytes += pkt->len;
            got++;
            break;
        case TX_RUNT:
            p->st.rx_drop_runt++;
            break;
        case TX_TOO_LONG:
            p->st.rx_drop_too_long++;
            break;
        default:
            p->st.rx_drop_bad_hdr++;
            break;
        }
    }
    *consumed = (uint16_t)(vq->last_used - start);
    if (vq->used && vq->last_used != start) {
        publish_used(vq);
        vs_vring_notify(p, vq);
    }
    /* Frames taken before a ring broke still go out; the next call reports it. */
    return got > 0 ? (int)got : rc < 0 ? -EIO : 0;
}

/* Collects the writable spans of one RX chain into iov. */
static int rx_chain_iov(struct vs_port *p, struct vs_vring *vq, uint16_t head,
                        struct vs_iov *iov, uint32_t *niov, uint64_t *cap)
{
    struct desc_iter it;
    struct vring_desc d;
    int rc;
    desc_iter_start(&it, vq, head);
    while ((rc = desc_next(p, &it, &d)) > 0) {
        if (!(d.flags & VRING_DESC_F_WRITE)) {
            vs_port_break(p, "device-readable descriptor in an RX chain");
            return -EINVAL;
        }
        rc = desc_to_iov(p, &d, iov, niov);
        if (rc == -EFAULT) {
            vs_port_break(p, "RX descriptor outside guest memory");
            return rc;
        }
        if (rc < 0)
            return rc;
        *cap += d.len;
    }
    return rc;
}

/* Scatter src across iov starting at span *i, offset *off. */
static void iov_put(const struct vs_iov *iov, uint32_t *i, uint32_t *off,
                    const uint8_t *src, uint32_t len)
{
    while (len > 0) {
        uint32_t room = iov[*i].len - *off;
        uint32_t n = len < room ? len : room;
        memcpy(iov[*i].p + *off, src, n);
        src += n;
        len -= n;
        *off += n;
        if (*off == iov[*i].len) {
            (*i)++;
            *off = 0;
        }
    }
}

/* Gives one frame to the guest.  1: delivered; 0: no room (nothing
 * consumed); <0: broken ring. */
static int enqueue_one(struct vs_port *p, struct vs_vring *vq, const struct vs_pkt *pkt,
                       uint16_t *avail_left)
{
    struct vs_iov *iov = p->iov;
    uint16_t *heads = p->heads;
    uint32_t *ends = p->ends;
    uint32_t niov = 0, nheads = 0;
    uint64_t need = p->hdr_len + pkt->len, cap = 0;

    while (cap < need) {
        if (nheads == *avail_left || nheads == VS_MAX_IOV || (nheads > 0 && !p->mrg_rxbuf))
            return 0;
        uint16_t head;
        int rc = read_head(p, vq, (uint16_t)(vq->last_avail + nheads), &head);
        if (rc == 0)
            rc = rx_chain_iov(p, vq, head, iov, &niov, &cap);
        if (rc == -ENOBUFS)
            return 0;
        if (rc < 0)
            return rc;
        heads[nheads] = head;
        ends[nheads++] = niov;
    }

    struct virtio_net_hdr hdr = {.num_buffers = (uint16_t)nheads};
    uint32_t i = 0, off = 0;
    iov_put(iov, &i, &off, (const uint8_t *)&hdr, p->hdr_len);
    iov_put(iov, &i, &off, pkt->data, pkt->len);

    /* Each buffer reports how much of it was written. */
    uint64_t left = need;
    uint32_t span = 0;
    for (uint32_t h = 0; h < nheads; h++) {
        uint64_t room = 0;
        for (; span < ends[h]; span++)
            room += iov[span].len;
        uint32_t used = (uint32_t)(left < room ? left : room);
        put_used(vq, vq->last_used++, heads[h], used);
        left -= used;
    }
    vq->last_avail += (uint16_t)nheads;
    *avail_left -= (uint16_t)nheads;
    return 1;
}

uint32_t vs_vring_enqueue(struct vs_port *p, struct vs_vring *vq, struct vs_pkt **pkts, uint32_t n)
{
    uint16_t avail;
    uint32_t sent = 0;
    if (!vq->ready || avail_count(p, vq, &avail) < 0) {
        p->st.tx_drop_no_buffer += n;
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (pkts[i]->len > p->mtu + 18) {
            p->st.tx_drop_too_long++;
            continue;
        }
        int rc = enqueue_one(p, vq, pkts[i], &avail);
        if (rc < 0) {
            p->st.tx_drop_no_buffer += n - i;
            break;
        }
        if (rc == 0) {
            p->st.tx_drop_no_buffer++;
            continue;
        }
        vs_delivered(p, pkts[i]);
        sent++;
    }
    if (vq->used && sent > 0) {
        publish_used(vq);
        vs_vring_notify(p, vq);
    }
    return sent;
}

/* virtio 1.2, 2.7.10: interrupt only if the guest's used_event lies in the
 * window of used entries published since the last interrupt. */
static inline bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

void vs_vring_notify(struct vs_port *p, struct vs_vring *vq)
{
    bool signal;
    /* The used index store must be visible before we read the guest's
     * suppression state, or an interrupt can be lost. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (p->event_idx) {
        uint16_t old = vq->signalled_used;
        uint16_t ev = READ_ONCE(*used_event(vq));
        signal = !vq->signalled_valid || need_event(ev, vq->last_used, old);
        if (old == vq->last_used && vq->signalled_valid)
            signal = false;
    } else {
        signal = !(READ_ONCE(vq->avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
    }
    if (!signal)
        return;
    vq->signalled_used = vq->last_used;
    vq->signalled_valid = true;
    if (vq->call_fd >= 0) {
        uint64_t one = 1;
        if (write(vq->call_fd, &one, sizeof(one)) == sizeof(one))
            p->st.calls++;
    }
}

/* Kick suppression (virtio 1.2, 2.7.10): while draining we ask the guest
 * not to kick; when done we ask again and the caller re-checks the ring. */
void vs_vring_enable_kicks(struct vs_port *p, struct vs_vring *vq, bool on)
{
    if (p->event_idx) {
        if (on)
            WRITE_ONCE(*avail_event(vq), vq->last_avail);
    } else {
        uint16_t f = READ_ONCE(vq->used->flags);
        f = on ? (uint16_t)(f & ~VRING_USED_F_NO_NOTIFY) : (uint16_t)(f | VRING_USED_F_NO_NOTIFY);
        WRITE_ONCE(vq->used->flags, f);
    }
    if (on)
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
