/* Flow hashing for multiqueue: which of a port's RX queues a frame goes to.
 *
 * One flow must always land on the same queue (the guest then sees its
 * frames in order, and its stack keeps the flow on one CPU), and different
 * flows should spread.  The key is what identifies a flow at each layer:
 * the MAC addresses always, then for IPv4 and IPv6 the addresses, the
 * protocol and, for TCP, UDP, SCTP and UDP-Lite unfragmented, the ports.
 * The frame's bytes are copied once into a small buffer (they may lie in a
 * guest's memory, split over descriptors); a guest that changes them
 * meanwhile only moves its own frame to another queue. */
#define _GNU_SOURCE
#include <string.h>

#include "vs_internal.h"

#define KEY_MAX 64  /* 14 Ethernet + 4 VLAN tag + 40 IPv6 + 4 ports */

/* Up to n bytes of the frame from its start into out; how many there were. */
static uint32_t frame_head(const struct vs_pkt *pkt, uint8_t *out, uint32_t n)
{
    uint32_t got = pkt->len < VS_ETH_HDR ? pkt->len : VS_ETH_HDR;
    if (got > n)
        got = n;
    memcpy(out, pkt->eth, got);
    for (uint32_t k = 0; got < n && k < pkt->nseg && k < VS_PKT_SEGS + 1; k++) {
        uint32_t m = pkt->seg[k].len < n - got ? pkt->seg[k].len : n - got;
        memcpy(out + got, pkt->seg[k].p, m);
        got += m;
    }
    return got;
}

static inline uint32_t rd16(const uint8_t *b)
{
    return (uint32_t)b[0] << 8 | b[1];
}

/* FNV-1a over the key's bytes, then a final mix so the low bits spread. */
static uint32_t mix(const uint8_t *b, uint32_t n, uint32_t h)
{
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

static bool has_ports(uint32_t proto)
{
    return proto == 6 || proto == 17 || proto == 132 || proto == 136;
}

uint32_t vs_flow_hash(const struct vs_pkt *pkt)
{
    uint8_t b[KEY_MAX];
    uint32_t n = frame_head(pkt, b, sizeof(b));
    uint32_t h = mix(b, n < 12 ? n : 12, 2166136261u);
    uint32_t l3 = 12;
    if (n < l3 + 2)
        return h;
    uint32_t type = rd16(b + l3);
    if (type == VS_ETH_8021Q && n >= l3 + 6) {
        h = mix(b + l3 + 2, 2, h);  /* the VLAN is part of the flow */
        type = rd16(b + l3 + 4);
        l3 += 4;
    }
    l3 += 2;
    if (type == 0x0800 && n >= l3 + 20) {
        const uint8_t *ip = b + l3;
        uint32_t ihl = (uint32_t)(ip[0] & 15) * 4, proto = ip[9];
        h = mix(ip + 12, 8, h);
        h = mix(ip + 9, 1, h);
        bool fragment = (rd16(ip + 6) & 0x3fff) != 0;
        if (!fragment && has_ports(proto) && ihl >= 20 && n >= l3 + ihl + 4)
            h = mix(ip + ihl, 4, h);
    } else if (type == 0x86dd && n >= l3 + 40) {
        const uint8_t *ip = b + l3;
        h = mix(ip + 8, 32, h);
        h = mix(ip + 6, 1, h);
        if (has_ports(ip[6]) && n >= l3 + 44)
            h = mix(ip + 40, 4, h);
    }
    h ^= h >> 16;
    h *= 0x7feb352d;
    h ^= h >> 15;
    return h;
}
