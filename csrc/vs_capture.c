/* Packet capture: a byte ring per port that the fast path fills and the
 * control plane drains into a pcap file.  Single producer (whoever runs the
 * data path), single consumer (the event loop), no locks: head and tail are
 * published with release stores.  A full ring drops the frame for the
 * capture only; the port never waits for a reader. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vs_internal.h"

_Static_assert((VS_CAP_MIN_RING & (VS_CAP_MIN_RING - 1)) == 0 &&
                   (VS_CAP_MAX_RING & (VS_CAP_MAX_RING - 1)) == 0,
               "capture rings are powers of two");

static inline uint32_t rec_size(uint32_t caplen)
{
    return (uint32_t)((sizeof(struct vs_cap_hdr) + caplen + 7) & ~7u);
}

static void ring_put(struct vs_capture *c, uint64_t at, const void *src, uint32_t len)
{
    uint32_t off = (uint32_t)(at & (c->size - 1));
    uint32_t first = len < c->size - off ? len : c->size - off;
    memcpy(c->buf + off, src, first);
    memcpy(c->buf, (const uint8_t *)src + first, len - first);
}

static void ring_get(const struct vs_capture *c, uint64_t at, void *dst, uint32_t len)
{
    uint32_t off = (uint32_t)(at & (c->size - 1));
    uint32_t first = len < c->size - off ? len : c->size - off;
    memcpy(dst, c->buf + off, first);
    memcpy((uint8_t *)dst + first, c->buf, len - first);
}

void vs_capture_frame(struct vs_port *p, uint32_t dir, const struct vs_pkt *pkt)
{
    struct vs_capture *c = p->cap;
    uint32_t len = pkt->len;
    uint32_t caplen = len < c->snaplen ? len : c->snaplen;
    uint32_t need = rec_size(caplen);
    uint64_t tail = __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE);
    if (c->size - (c->head - tail) < need) {
        p->st.cap_drops++;
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct vs_cap_hdr h = {
        .ts_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
        .caplen = caplen,
        .len = len,
        .port = p->id,
        .dir = dir,
    };
    ring_put(c, c->head, &h, sizeof(h));
    uint64_t at = c->head + sizeof(h);
    uint32_t n = caplen < VS_ETH_HDR ? caplen : VS_ETH_HDR;
    ring_put(c, at, pkt->eth, n);
    at += n;
    for (uint32_t k = 0; k < pkt->nseg && at < c->head + sizeof(h) + caplen; k++) {
        uint32_t left = (uint32_t)(c->head + sizeof(h) + caplen - at);
        n = pkt->seg[k].len < left ? pkt->seg[k].len : left;
        ring_put(c, at, pkt->seg[k].p, n);
        at += n;
    }
    __atomic_store_n(&c->head, c->head + need, __ATOMIC_RELEASE);
    p->st.cap_packets++;
}

int vs_capture_start(struct vs_switch *sw, uint32_t port, uint32_t dirs, uint32_t snaplen,
                     uint32_t ring_bytes)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    if (p->cap)
        return -EBUSY;
    if (!dirs || (dirs & ~(uint32_t)(VS_CAP_RX | VS_CAP_TX)) || snaplen == 0 ||
        ring_bytes < VS_CAP_MIN_RING || ring_bytes > VS_CAP_MAX_RING)
        return -EINVAL;
    uint32_t size = VS_CAP_MIN_RING;
    while (size < ring_bytes)
        size <<= 1;
    if (snaplen > VS_PKT_SIZE)
        snaplen = VS_PKT_SIZE;
    struct vs_capture *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->buf = malloc(size);
    if (!c->buf) {
        free(c);
        return -ENOMEM;
    }
    c->size = size;
    c->dirs = dirs;
    c->snaplen = snaplen;
    p->cap = c;
    return 0;
}

void vs_capture_stop(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->cap)
        return;
    free(p->cap->buf);
    free(p->cap);
    p->cap = NULL;
}

uint32_t vs_capture_read(struct vs_switch *sw, uint32_t port, uint8_t *buf, uint32_t max)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->cap)
        return 0;
    struct vs_capture *c = p->cap;
    uint64_t head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
    uint64_t tail = c->tail;
    uint32_t out = 0;
    while (tail < head) {
        struct vs_cap_hdr h;
        ring_get(c, tail, &h, sizeof(h));
        uint32_t n = rec_size(h.caplen);
        if (n > max - out)
            break;
        ring_get(c, tail, buf + out, n);
        out += n;
        tail += n;
    }
    __atomic_store_n(&c->tail, tail, __ATOMIC_RELEASE);
    return out;
}
