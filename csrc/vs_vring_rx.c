/* Giving frames to a guest's RX ring.
 *
 * As on the TX side, a burst goes in passes so that cache misses overlap:
 * hint the descriptors of the heads the burst will likely use; reserve
 * buffers for as many frames as fit (walking and checking their chains,
 * hinting each buffer's first lines for writing); then copy each frame,
 * straight from where it lies (the sender's memory or a slot buffer), and
 * fill in the used entries.  One used-index update and at most one
 * interrupt per burst. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "vs_capture.h"
#include "vs_ring.h"

static const char *const rx_outside[2] = {
    "RX buffer outside guest memory",
    "RX buffer runs past the end of guest memory",
};

/* Collects the writable spans of one RX chain into p->iov from *niov,
 * adding its room to *cap and its descriptors to *ndesc; -E2BIG once the
 * frame's descriptors pass VS_FRAME_MAX_DESCS (the rest is never read). */
static int rx_chain_iov(struct vs_port *p, struct vs_vring *vq, uint16_t head, uint32_t *niov,
                        uint64_t *cap, uint32_t *ndesc)
{
    struct desc_iter it;
    struct vring_desc d;
    uint32_t before = *ndesc;
    int rc;
    desc_iter_start(&it, vq, head);
    while ((rc = desc_next(p, &it, &d)) > 0) {
        *ndesc = before + it.seen;
        if (*ndesc > VS_FRAME_MAX_DESCS)
            return -E2BIG;
        if (!(d.flags & VRING_DESC_F_WRITE)) {
            vs_port_break(p, "device-readable descriptor in an RX chain");
            return -EINVAL;
        }
        uint64_t addr = d.addr;
        uint64_t left = d.len;
        while (left > 0) {
            uint64_t len, gpa = addr;
            uint8_t *h = desc_span(p, &addr, &left, &len, left == d.len, rx_outside);
            if (!h)
                return -EFAULT;
            if (*niov >= VS_MAX_IOV)
                return -ENOBUFS;
            /* Where the span is in guest-physical terms, for the dirty log:
             * one store, whether or not the port logs. */
            p->iov_gpa[*niov] = gpa;
            p->iov[(*niov)++] = (struct vs_iov){h, (uint32_t)len};
        }
        *cap += d.len;
    }
    *ndesc = before + it.seen;
    return rc;
}

/* Reserves buffers for need bytes from avail slot *slot on: their heads go
 * to p->heads from *nheads, their spans to p->iov from *niov.
 * 1: reserved; 0: no room (nothing reserved); -ENOBUFS: the burst's span
 * or head table is full; -E2BIG: no room within what one frame may use
 * (VS_FRAME_MAX_HEADS, VS_FRAME_MAX_DESCS); other <0: broken ring.  The
 * descriptors read are counted in descs whatever the outcome. */
static int reserve(struct vs_port *p, struct vs_vring *vq, uint64_t need, uint16_t *slot,
                   uint16_t *avail_left, uint32_t *niov, uint32_t *nheads)
{
    uint32_t iov0 = *niov, heads0 = *nheads;
    uint32_t ndesc = 0;
    uint16_t k = 0;
    uint64_t cap = 0;
    int rc = 1;
    while (cap < need) {
        if (k == *avail_left || (k > 0 && !p->mrg_rxbuf)) {
            rc = 0;
            break;
        }
        if (k == VS_FRAME_MAX_HEADS) {
            rc = -E2BIG;
            break;
        }
        if (*nheads == VS_MAX_IOV) {
            rc = -ENOBUFS;
            break;
        }
        uint16_t head;
        rc = read_head(p, vq, (uint16_t)(*slot + k), &head);
        if (rc == 0)
            rc = rx_chain_iov(p, vq, head, niov, &cap, &ndesc);
        if (rc < 0)
            break;
        p->heads[*nheads] = head;
        p->ends[(*nheads)++] = *niov;
        k++;
        rc = 1;
    }
    p->st.descs += ndesc;
    if (rc <= 0) {
        *niov = iov0;
        *nheads = heads0;
        return rc;
    }
    *slot = (uint16_t)(*slot + k);
    *avail_left = (uint16_t)(*avail_left - k);
    if (*niov > iov0)
        prefetch_span(p->iov[iov0].p, p->iov[iov0].len < need ? p->iov[iov0].len : (uint32_t)need, 1);
    return 1;
}

/* Writes src across the spans from span *i, offset *off on.  memmove: a
 * front end may hand two ports the same memory, so source and destination
 * can overlap (the bytes are then its own problem, the copy stays defined). */
static void iov_put(const struct vs_iov *iov, uint32_t *i, uint32_t *off, const uint8_t *src,
                    uint32_t len)
{
    while (len > 0) {
        uint32_t room = iov[*i].len - *off;
        uint32_t n = len < room ? len : room;
        memmove(iov[*i].p + *off, src, n);
        src += n;
        len -= n;
        *off += n;
        if (*off == iov[*i].len) {
            (*i)++;
            *off = 0;
        }
    }
}

/* Marks the pages of the first used bytes of spans [from, to) in the dirty
 * log: what fill wrote into one frame's buffers, header included (a frame
 * fills a prefix of its spans, buffer after buffer). */
static void log_spans(struct vs_port *p, uint32_t from, uint32_t to, uint64_t used)
{
    for (uint32_t s = from; s < to && used > 0; s++) {
        uint64_t n = p->iov[s].len < used ? p->iov[s].len : used;
        vs_log_write(p, p->iov_gpa[s], n);
        used -= n;
    }
}

/* A reserved frame: its spans end at iov_end, its heads at head_end. */
struct rx_plan {
    struct vs_pkt *pkt;
    uint32_t iov_end;
    uint32_t head_end;
};

/* Copies the planned frames in and writes their used entries. */
static uint32_t fill(struct vs_port *p, struct vs_vring *vq, const struct rx_plan *plan,
                     uint32_t nplan)
{
    uint32_t iov0 = 0, head0 = 0;
    for (uint32_t j = 0; j < nplan; j++) {
        const struct vs_pkt *pkt = plan[j].pkt;
        uint32_t nheads = plan[j].head_end - head0;
        struct virtio_net_hdr hdr = {.num_buffers = (uint16_t)nheads};
        uint32_t i = iov0, off = 0;
        if (__builtin_expect(p->iov[i].len > sizeof(hdr) + VS_ETH_HDR, 1)) {
            /* Both headers fit the first span: fixed-size copies the
             * compiler inlines (hdr_len is 10 or 12). */
            uint8_t *d = p->iov[i].p;
            if (p->hdr_len == sizeof(hdr))
                memcpy(d, &hdr, sizeof(hdr));
            else
                memcpy(d, &hdr, 10);
            memcpy(d + p->hdr_len, pkt->eth, VS_ETH_HDR);
            off = p->hdr_len + VS_ETH_HDR;
        } else {
            iov_put(p->iov, &i, &off, (const uint8_t *)&hdr, p->hdr_len);
            iov_put(p->iov, &i, &off, pkt->eth, VS_ETH_HDR);
        }
        for (uint32_t s = 0; s < pkt->nseg; s++)
            iov_put(p->iov, &i, &off, pkt->seg[s].p, pkt->seg[s].len);

        /* Each buffer reports how much of it was written. */
        uint64_t left = p->hdr_len + pkt->len;
        uint32_t span = iov0;
        for (uint32_t h = head0; h < plan[j].head_end; h++) {
            uint64_t room = 0;
            for (; span < p->ends[h]; span++)
                room += p->iov[span].len;
            uint32_t used = (uint32_t)(left < room ? left : room);
            put_used(vq, vq->last_used++, p->heads[h], used);
            left -= used;
        }
        vq->last_avail = (uint16_t)(vq->last_avail + nheads);
        vs_delivered(p, pkt);
        vq->packets++;
        vq->bytes += pkt->len;
        iov0 = plan[j].iov_end;
        head0 = plan[j].head_end;
    }
    if (__builtin_expect(p->logging, 0)) {
        /* Once per burst: the frames' bytes are visible before their bits are
         * looked at (vs_log_write), and all of it before the used index. */
        vs_log_fence();
        iov0 = 0;
        for (uint32_t j = 0; j < nplan; j++) {
            log_spans(p, iov0, plan[j].iov_end, p->hdr_len + plan[j].pkt->len);
            iov0 = plan[j].iov_end;
        }
    }
    return nplan;
}

uint32_t vs_vring_enqueue(struct vs_port *p, struct vs_vring *vq, struct vs_pkt **pkts, uint32_t n)
{
    uint16_t avail;
    uint32_t sent = 0;
    if (!vq->ready || avail_count(p, vq, &avail) < 0) {
        p->st.tx_drop_no_buffer += n;
        return 0;
    }
    for (uint32_t k = 0; k < n && k < avail; k++)
        prefetch_head(vq, (uint16_t)(vq->last_avail + k));

    struct rx_plan plan[VS_BURST];
    uint32_t i = 0;
    int stop = 1;       /* 1: every frame went or was dropped for its length */
    while (i < n && stop == 1) {
        uint32_t nplan = 0, niov = 0, nheads = 0;
        uint16_t slot = vq->last_avail;
        for (; i < n && nplan < VS_BURST; i++) {
            struct vs_pkt *pkt = pkts[i];
            if (pkt->len > p->mtu + 18) {
                p->st.tx_drop_too_long++;
                continue;
            }
            int rc = reserve(p, vq, p->hdr_len + pkt->len, &slot, &avail, &niov, &nheads);
            if (rc == 1) {
                plan[nplan++] = (struct rx_plan){pkt, niov, nheads};
                continue;
            }
            if (rc == -ENOBUFS && nplan > 0)
                break;      /* copy what is planned, then try this frame again */
            stop = rc;      /* -ENOBUFS alone: one frame needs more spans than a burst */
            break;
        }
        sent += fill(p, vq, plan, nplan);
    }
    if (stop != 1) {
        /* Frame i found no room, or none within what a frame may use, or
         * broke the ring: it and the rest of the burst are dropped, not
         * tried again, since each try would walk the same buffers anew. */
        if (stop == -E2BIG || stop == -ENOBUFS)
            p->st.tx_drop_desc_limit++;
        else
            p->st.tx_drop_no_buffer++;
        p->st.tx_drop_no_buffer += n - i - 1;
    }
    if (vq->used && sent > 0) {
        publish_used_logged(p, vq);
    }
    return sent;
}
