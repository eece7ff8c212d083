/* Taking frames from a guest's TX ring.
 *
 * The descriptors and the frames were written a moment ago by the guest's
 * core, so nearly every first touch is a cache miss.  A burst therefore
 * goes in three passes, each starting the loads the next one needs:
 *
 *   1. read every head and hint its descriptor;
 *   2. walk every chain into spans (all checks happen here) and hint the
 *      first bytes of each frame;
 *   3. read each virtio-net header and Ethernet header, and classify.
 *
 * Frames are not copied: each vs_pkt references its spans in guest memory,
 * and the used entries are written but not published until the caller has
 * forwarded the burst (vs_vring_complete), so the guest cannot reuse a
 * buffer we still read. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "vs_ring.h"

/* Outcome of reading one TX chain. */
enum { TX_OK, TX_RUNT, TX_TOO_LONG, TX_BAD_HDR, TX_DESC_LIMIT };

static const char *const tx_outside[2] = {
    "TX buffer outside guest memory",
    "TX buffer runs past the end of guest memory",
};

/* Collects the spans of one chain (virtio-net header included) into
 * pkt->seg, at most limit bytes; a chain of more spans than seg holds is
 * copied into pkt->buf instead.  pkt->len is the bytes kept; *what is
 * TX_TOO_LONG if the chain had more, TX_DESC_LIMIT if it has more than
 * VS_FRAME_MAX_DESCS descriptors (the walk stops there: the rest is never
 * read), else TX_OK.  *ndesc counts the descriptors read. */
static int walk_tx_chain(struct vs_port *p, struct vs_vring *vq, uint16_t head,
                         struct vs_pkt *pkt, uint32_t limit, uint8_t *what, uint32_t *ndesc)
{
    struct desc_iter it;
    struct vring_desc d;
    uint32_t nseg = 0, got = 0;
    bool copied = false;
    bool too_long = false;
    int rc;

    *what = TX_OK;
    desc_iter_start(&it, vq, head);
    while ((rc = desc_next(p, &it, &d)) > 0) {
        if (it.seen > VS_FRAME_MAX_DESCS) {
            *ndesc += it.seen;
            *what = TX_DESC_LIMIT;
            return 0;
        }
        if (d.flags & VRING_DESC_F_WRITE) {
            vs_port_break(p, "device-writable descriptor in a TX chain");
            return -EINVAL;
        }
        uint64_t addr = d.addr;
        uint64_t left = d.len;
        while (left > 0) {
            uint64_t len;
            const uint8_t *src = desc_span(p, &addr, &left, &len, left == d.len, tx_outside);
            if (!src)
                return -EFAULT;
            /* Keep the first limit bytes (the header stays checkable), but
             * walk and check the whole chain. */
            if (len > limit - got) {
                too_long = true;
                len = limit - got;
            }
            if (len == 0)
                continue;
            if (!copied && nseg == VS_PKT_SEGS) {
                uint32_t off = 0;
                for (uint32_t k = 0; k < nseg; k++) {
                    memcpy(pkt->buf + off, pkt->seg[k].p, pkt->seg[k].len);
                    off += pkt->seg[k].len;
                }
                copied = true;
            }
            if (copied)
                memcpy(pkt->buf + got, src, len);
            else
                pkt->seg[nseg++] = (struct vs_seg){src, (uint32_t)len};
            got += (uint32_t)len;
        }
    }
    *ndesc += it.seen;
    if (rc < 0)
        return rc;
    if (too_long)
        *what = TX_TOO_LONG;
    if (copied) {
        pkt->seg[0] = (struct vs_seg){pkt->buf, got};
        nseg = 1;
    }
    pkt->nseg = nseg;
    pkt->len = got;
    return 0;
}

/* Moves the first n bytes of pkt's spans into dst (NULL: drops them);
 * returns how many there were. */
static uint32_t take(struct vs_pkt *pkt, uint32_t *first, uint8_t *dst, uint32_t n)
{
    uint32_t got = 0;
    while (got < n && *first < pkt->nseg) {
        struct vs_seg *s = &pkt->seg[*first];
        uint32_t k = n - got < s->len ? n - got : s->len;
        if (dst)
            memcpy(dst + got, s->p, k);
        got += k;
        s->p += k;
        s->len -= k;
        if (s->len == 0)
            (*first)++;
    }
    return got;
}

/* Strips and checks the virtio-net header and reads the Ethernet header
 * into pkt->eth; pkt->len becomes the frame's length. */
static int classify(struct vs_port *p, struct vs_pkt *pkt, bool too_long)
{
    uint8_t hdr[sizeof(struct virtio_net_hdr)];
    uint32_t first = 0;
    uint32_t raw = pkt->len;
    /* The usual layout, both headers in the first span and more after
     * them: fixed-size copies the compiler inlines, instead of two calls
     * to memcpy per frame. */
    struct vs_seg *s0 = &pkt->seg[0];
    if (__builtin_expect(!too_long && pkt->nseg > 0 && s0->len > p->hdr_len + VS_ETH_HDR, 1)) {
        uint8_t flags = READ_ONCE(s0->p[0]), gso = READ_ONCE(s0->p[1]);
        if (flags != 0 || gso != 0)
            return TX_BAD_HDR;
        memcpy(pkt->eth, s0->p + p->hdr_len, VS_ETH_HDR);
        s0->p += p->hdr_len + VS_ETH_HDR;
        s0->len -= p->hdr_len + VS_ETH_HDR;
        pkt->len = raw - p->hdr_len;
        return TX_OK;
    }
    if (take(pkt, &first, hdr, p->hdr_len) < p->hdr_len)
        return TX_BAD_HDR;
    /* We offer neither checksum nor segmentation offload, so a header that
     * asks for either describes a frame we cannot send on correctly. */
    if (hdr[0] != 0 || hdr[1] != 0)
        return TX_BAD_HDR;
    if (too_long)
        return TX_TOO_LONG;
    if (raw - p->hdr_len < VS_ETH_HDR)
        return TX_RUNT;
    take(pkt, &first, pkt->eth, VS_ETH_HDR);
    pkt->len = raw - p->hdr_len;
    if (first > 0) {
        pkt->nseg -= first;
        memmove(pkt->seg, pkt->seg + first, pkt->nseg * sizeof(pkt->seg[0]));
    }
    return TX_OK;
}

static void swap_pkts(struct vs_pkt *a, struct vs_pkt *b)
{
    struct vs_pkt t = *a;
    *a = *b;
    *b = t;
}

int vs_vring_dequeue(struct vs_port *p, struct vs_vring *vq, struct vs_pkt *pkts, uint32_t max,
                     uint32_t desc_budget, uint32_t *consumed, uint32_t *descs)
{
    uint16_t avail;
    uint16_t heads[VS_BURST];
    uint8_t what[VS_BURST];
    *consumed = 0;
    *descs = 0;
    if (!(vq->ready || vq->drain) || avail_count(p, vq, &avail) < 0)
        return p->broken ? -EIO : 0;
    bool drain = vq->drain;     /* as it was: a ring breaking below clears both */
    uint32_t n = avail < max ? avail : max;
    if (n > VS_BURST)
        n = VS_BURST;
    int rc = 0;

    uint32_t nh = 0;
    for (; nh < n; nh++) {
        if ((rc = read_head(p, vq, (uint16_t)(vq->last_avail + nh), &heads[nh])) < 0)
            break;
        __builtin_prefetch(&vq->desc[heads[nh]], 0, 3);
    }

    /* Every chain is walked to its end or to VS_FRAME_MAX_DESCS, whichever
     * comes first, and charged for what was read; once the budget is
     * spent, the rest of the heads wait for the next call. */
    uint32_t walked = 0, nd = 0;
    for (; walked < nh && (walked == 0 || nd < desc_budget); walked++) {
        struct vs_pkt *pkt = &pkts[walked];
        int wrc = walk_tx_chain(p, vq, heads[walked], pkt, p->hdr_len + p->mtu + 18,
                                &what[walked], &nd);
        if (wrc < 0) {
            rc = wrc;
            break;
        }
        put_used(vq, vq->last_used++, heads[walked], 0);
        vq->last_avail++;
        if (what[walked] != TX_DESC_LIMIT && pkt->nseg > 0)
            prefetch_span(pkt->seg[0].p, pkt->seg[0].len, 0);
    }
    *descs = nd;
    p->st.descs += nd;
    if (rc < 0)
        p->st.rx_drop_bad_desc++;

    uint32_t got = 0;
    for (uint32_t i = 0; i < walked; i++) {
        int c = what[i] == TX_DESC_LIMIT ? TX_DESC_LIMIT
                                         : classify(p, &pkts[i], what[i] == TX_TOO_LONG);
        switch (c) {
        case TX_OK:
            if (drain) {
                p->st.rx_drop_disabled++;
                break;
            }
            p->st.rx_packets++;
            p->st.rx_bytes += pkts[i].len;
            /* Swap, not copy: every slot keeps a buffer of its own. */
            if (got != i)
                swap_pkts(&pkts[got], &pkts[i]);
            got++;
            break;
        case TX_RUNT:
            p->st.rx_drop_runt++;
            break;
        case TX_TOO_LONG:
            p->st.rx_drop_too_long++;
            break;
        case TX_DESC_LIMIT:
            p->st.rx_drop_desc_limit++;
            break;
        default:
            p->st.rx_drop_bad_hdr++;
            break;
        }
    }
    *consumed = walked;
    /* Frames taken before a ring broke still go out; the next call reports it. */
    return got > 0 ? (int)got : rc < 0 ? -EIO : 0;
}

bool vs_vring_complete(struct vs_port *p, struct vs_vring *vq, uint32_t consumed)
{
    if (consumed == 0 || !vq->used)
        return false;
    /* The guest's TX buffers are only read, never logged (DPDK cd79d1b030);
     * the used entries that give them back are written, and are. */
    publish_used_logged(p, vq);
    return true;
}
