/* VXLAN ports (RFC 7348): Ethernet frames carried in UDP to switches and
 * hosts on other machines, the Linux kernel's vxlan device or Open vSwitch.
 *
 * A VXLAN port is a port of the switch like a TAP: frames are learned,
 * looked up and flooded by forwarding as any other port's.  What it adds is
 * the remote: the MAC table says which remote (underlay address) an inner
 * address is behind, so a unicast frame goes to that one remote, and a
 * flooded one (broadcast, multicast, unknown unicast) is replicated to each
 * remote of the flood list.  Remotes are numbered in the port's table,
 * 1 + index, as struct vs_pkt and the MAC table carry them; 0 is none.
 *
 * Two sockets, both opened and bound by the control plane in the
 * underlay's network namespace, and shared by the VXLAN ports of one
 * endpoint (local address and port: one per VNI, each with its own
 * remotes): whichever of them is served reads the socket and gives each
 * datagram to the port of its VNI, forwarding each port's frames as a burst
 * of that port.
 *   - p->fd, a UDP socket bound to local:dstport, receives the datagrams
 *     (recvmmsg, a burst at a time);
 *   - vx->tx_fd, a raw IPPROTO_UDP socket bound to local, sends them
 *     (sendmmsg): the switch writes the UDP header itself so that the
 *     source port can come from a hash of the inner flow (RFC 7348 5: so
 *     that ECMP and RSS spread flows), which a bound UDP socket cannot do.
 *     The kernel builds the IP header with DF set (IP_PMTUDISC_DO): a
 *     datagram over the underlay's MTU fails with EMSGSIZE and is counted,
 *     never fragmented.  The UDP checksum is zero over IPv4 (RFC 7348 5);
 *     over IPv6 the kernel computes it (IPV6_CHECKSUM at offset 6).
 *
 * Received datagrams are checked before anything else looks at them: a
 * VXLAN header (8 bytes) whose flags are exactly I (0x08) and whose
 * reserved bits are zero (as Linux does without extensions), the port's
 * VNI, a known remote (or learn_remotes), and an inner frame that is at
 * least an Ethernet header and no longer than the port's MTU allows.  Each
 * drop is counted by its reason. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vs_capture.h"

#define VX_HDR 8                /* the VXLAN header */
#define VX_UDP 8                /* the UDP header the switch writes */
#define VX_FLAG_I 0x08
#define VX_BATCH 64             /* datagrams per sendmmsg */
#define VX_SPORT_BASE 49152     /* source ports: the dynamic range, 49152..65535 */
#define VX_SPORT_MASK 0x3fff
_Static_assert(VS_BURST <= VX_BATCH, "a burst is read in one recvmmsg");
_Static_assert(VS_VXLAN_MAX_REMOTES < UINT16_MAX, "remotes are numbered in a uint16_t");

union vx_addr {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
};

struct vs_vxlan {
    uint32_t vni;
    bool ipv6;
    bool learn;
    int tx_fd;
    uint16_t dstport;
    uint8_t local[16];
    uint32_t nflood;            /* remotes[0, nflood): the flood list */
    uint32_t nremotes;          /* then the learned ones */
    uint32_t last_rx;           /* where the last datagram's remote was found */
    uint8_t remotes[VS_VXLAN_MAX_REMOTES][16];
    struct vs_vxlan_stats st;
    /* Scratch for one batch of datagrams. */
    struct mmsghdr msgs[VX_BATCH];
    struct iovec iov[VX_BATCH][2 + VS_PKT_SEGS + 1];  /* + a trunk's tag (vs_vlan.c) */
    union vx_addr names[VX_BATCH];
    uint8_t hdrs[VX_BATCH][VX_UDP + VX_HDR];
    uint8_t msg_frame[VX_BATCH];    /* which frame of the enqueue each datagram carries */
};

static inline uint32_t addr_len(const struct vs_vxlan *vx)
{
    return vx->ipv6 ? 16 : 4;
}

/* The remote's number (1 + index) for a datagram from `from`, learning it
 * if the port does; 0 if the datagram is to be dropped (counted). */
static uint16_t remote_of(struct vs_vxlan *vx, const union vx_addr *from)
{
    const uint8_t *a;
    if (vx->ipv6) {
        if (from->v6.sin6_family != AF_INET6)
            goto unknown;
        a = from->v6.sin6_addr.s6_addr;
    } else {
        if (from->v4.sin_family != AF_INET)
            goto unknown;
        a = (const uint8_t *)&from->v4.sin_addr.s_addr;
    }
    uint32_t len = addr_len(vx);
    /* A burst mostly comes from one remote: look where the last one was first. */
    if (vx->last_rx < vx->nremotes && memcmp(vx->remotes[vx->last_rx], a, len) == 0)
        return (uint16_t)(vx->last_rx + 1);
    for (uint32_t i = 0; i < vx->nremotes; i++) {
        if (memcmp(vx->remotes[i], a, len) == 0) {
            vx->last_rx = i;
            return (uint16_t)(i + 1);
        }
    }
    if (!vx->learn)
        goto unknown;
    if (vx->nremotes >= VS_VXLAN_MAX_REMOTES) {
        vx->st.rx_drop_vxlan_remotes_full++;
        return 0;
    }
    uint32_t i = vx->nremotes++;
    memset(vx->remotes[i], 0, sizeof(vx->remotes[i]));
    memcpy(vx->remotes[i], a, len);
    vx->st.remotes_learned++;
    vx->last_rx = i;
    return (uint16_t)(i + 1);
unknown:
    vx->st.rx_drop_vxlan_remote++;
    return 0;
}

/* The longest inner frame the port carries: its MTU and an Ethernet header,
 * and an 802.1Q tag when the frame has one. */
static inline uint32_t frame_limit(const struct vs_port *p, const uint8_t *eth)
{
    bool tagged = eth[12] == 0x81 && eth[13] == 0x00;
    return p->mtu + VS_ETH_HDR + (tagged ? 4 : 0);
}

/* The VNI of a datagram of len bytes in h, counted on the port that read it
 * (p) if its header is bad: -1 then.  RFC 7348 5: flags 0x08 (I: the VNI is
 * valid), reserved bits zero on transmission.  Linux drops a header with any
 * other bit set unless it knows the extension (GBP, GPE): so do we. */
static int32_t header_vni(struct vs_vxlan *vx, const uint8_t *h, uint32_t len)
{
    if (len < VX_HDR) {
        vx->st.rx_drop_vxlan_short++;
        return -1;
    }
    if (h[0] != VX_FLAG_I || (h[1] | h[2] | h[3] | h[7]) != 0) {
        vx->st.rx_drop_vxlan_flags++;
        return -1;
    }
    return (int32_t)((uint32_t)h[4] << 16 | (uint32_t)h[5] << 8 | h[6]);
}

/* The VXLAN port of VNI vni on the endpoint (UDP socket) port p reads, or
 * NULL: p itself mostly, else another port with the same socket. */
static struct vs_port *member(struct vs_switch *sw, struct vs_port *p, uint32_t vni)
{
    if (p->vx->vni == vni)
        return p;
    for (uint32_t k = 0; k < sw->nopen; k++) {
        struct vs_port *q = &sw->ports[sw->open_ids[k]];
        if (q->kind == VS_PORT_VXLAN && q->vx && q->fd == p->fd && q->vx->vni == vni &&
            !q->broken)
            return q;
    }
    return NULL;
}

/* Decapsulates, for port q (the datagram's VNI is q's), a datagram of len
 * bytes in pkt->buf from `from`: true if pkt now holds its inner frame,
 * false if it was dropped (and counted on q). */
static bool decap(struct vs_port *q, struct vs_pkt *pkt, uint32_t len, const union vx_addr *from)
{
    struct vs_vxlan *vx = q->vx;
    vx->st.rx_datagrams++;
    uint16_t remote = remote_of(vx, from);
    if (remote == 0)
        return false;
    uint32_t flen = len - VX_HDR;
    if (flen < VS_ETH_HDR) {
        q->st.rx_drop_runt++;
        return false;
    }
    const uint8_t *frame = pkt->buf + VX_HDR;
    if (flen > frame_limit(q, frame)) {
        q->st.rx_drop_too_long++;
        return false;
    }
    memcpy(pkt->eth, frame, VS_ETH_HDR);
    pkt->len = flen;
    pkt->nseg = flen > VS_ETH_HDR;
    pkt->seg[0] = (struct vs_seg){frame + VS_ETH_HDR, flen - VS_ETH_HDR};
    pkt->rx_remote = remote;
    q->st.rx_packets++;
    q->st.rx_bytes += flen;
    return true;
}

/* Reads up to max datagrams into pkts; how many, 0 when none, -EIO if the
 * socket is gone (the port is broken). */
static int receive(struct vs_port *p, struct vs_pkt *pkts, uint32_t max)
{
    struct vs_vxlan *vx = p->vx;
    if (max > VX_BATCH)
        max = VX_BATCH;
    for (uint32_t i = 0; i < max; i++) {
        vx->iov[i][0] = (struct iovec){pkts[i].buf, VS_PKT_SIZE};
        vx->msgs[i].msg_hdr = (struct msghdr){
            .msg_name = &vx->names[i],
            .msg_namelen = sizeof(vx->names[i]),
            .msg_iov = vx->iov[i],
            .msg_iovlen = 1,
        };
    }
    int n;
    do
        n = recvmmsg(p->fd, vx->msgs, max, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EBADF || errno == ENOTSOCK) {
            vs_port_break(p, "vxlan socket read failed");
            return -EIO;
        }
        return 0;   /* EAGAIN, or an error the next read may not have */
    }
    return n;
}

int vs_vxlan_dequeue(struct vs_switch *sw, uint32_t port, struct vs_pkt *pkts,
                     uint32_t *group, uint32_t *count, uint32_t *ngroups)
{
    struct vs_port *p = &sw->ports[port];
    struct vs_vxlan *vx = p->vx;
    *ngroups = 0;
    if (!vx || p->fd < 0)
        return p->broken ? -EIO : 0;
    int n = receive(p, pkts, VS_BURST);
    if (n <= 0)
        return n;
    /* Each datagram's port (its VNI's), or none: dropped. */
    struct vs_port *to[VS_BURST];
    uint32_t taken = 0;
    bool mixed = false;
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        to[i] = NULL;
        if (vx->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
            vx->st.rx_datagrams++;
            vx->st.rx_drop_vxlan_trunc++;
            continue;
        }
        uint32_t len = vx->msgs[i].msg_len;
        int32_t vni = header_vni(vx, pkts[i].buf, len);
        if (vni < 0) {
            vx->st.rx_datagrams++;
            continue;
        }
        struct vs_port *q = member(sw, p, (uint32_t)vni);
        if (!q) {
            vx->st.rx_datagrams++;
            vx->st.rx_drop_vxlan_vni++;
            continue;
        }
        if (!decap(q, &pkts[i], len, &vx->names[i]))
            continue;
        to[i] = q;
        mixed |= q != p;
        taken++;
    }
    if (taken == 0)
        return n;
    /* Frames grouped by port, in order within each (a permutation of the
     * slots, so every buffer keeps one owner), the dropped ones last. */
    struct vs_pkt sorted[VS_BURST];
    struct vs_port *by[VS_BURST];
    uint32_t ng = 0, at = 0;
    if (!mixed)
        by[ng++] = p;
    for (uint32_t i = 0; mixed && i < (uint32_t)n; i++) {
        bool seen = to[i] == NULL;
        for (uint32_t g = 0; g < ng && !seen; g++)
            seen = by[g] == to[i];
        if (!seen)
            by[ng++] = to[i];
    }
    for (uint32_t g = 0; g < ng; g++) {
        group[g] = by[g]->id;
        count[g] = 0;
        for (uint32_t i = 0; i < (uint32_t)n; i++) {
            if (to[i] == by[g]) {
                sorted[at++] = pkts[i];
                count[g]++;
            }
        }
    }
    for (uint32_t i = 0; i < (uint32_t)n; i++)
        if (to[i] == NULL)
            sorted[at++] = pkts[i];
    memcpy(pkts, sorted, sizeof(sorted[0]) * (uint32_t)n);
    *ngroups = ng;
    return n;
}

/* A 32-bit mix (murmur3's finaliser) of a value into a running hash. */
static inline uint32_t mix(uint32_t h, uint32_t v)
{
    h ^= v;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t mix_bytes(uint32_t h, const uint8_t *b, uint32_t n)
{
    for (uint32_t i = 0; i + 4 <= n; i += 4)
        h = mix(h, (uint32_t)b[i] << 24 | (uint32_t)b[i + 1] << 16 | (uint32_t)b[i + 2] << 8 |
                       b[i + 3]);
    return h;
}

static inline bool has_ports(uint8_t proto)
{
    return proto == 6 || proto == 17 || proto == 132 || proto == 136;   /* TCP UDP SCTP UDP-Lite */
}

/* The UDP source port of a frame: from its IP addresses, protocol and
 * ports when it is IPv4 or IPv6 (and the header lies in its first
 * segment), else from its Ethernet addresses and type; in the dynamic
 * range (RFC 7348 5). */
static uint16_t flow_port(const struct vs_pkt *pkt)
{
    const uint8_t *l3 = pkt->nseg ? pkt->seg[0].p : NULL;
    uint32_t room = pkt->nseg ? pkt->seg[0].len : 0;
    uint32_t type = (uint32_t)pkt->eth[12] << 8 | pkt->eth[13];
    uint32_t h = 0x9747b28cu;
    if (type == 0x8100 && room >= 4) {
        h = mix(h, (uint32_t)(l3[0] & 0x0f) << 8 | l3[1]);     /* the VLAN ID */
        type = (uint32_t)l3[2] << 8 | l3[3];
        l3 += 4;
        room -= 4;
    }
    if (type == 0x0800 && room >= 20 && (l3[0] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(l3[0] & 0x0f) * 4;
        h = mix_bytes(mix(h, l3[9]), l3 + 12, 8);
        bool fragment = (l3[6] & 0x3f) != 0 || l3[7] != 0;
        if (!fragment && has_ports(l3[9]) && ihl >= 20 && room >= ihl + 4)
            h = mix_bytes(h, l3 + ihl, 4);
    } else if (type == 0x86dd && room >= 40 && (l3[0] >> 4) == 6) {
        h = mix_bytes(mix(h, l3[6]), l3 + 8, 32);
        if (has_ports(l3[6]) && room >= 44)
            h = mix_bytes(h, l3 + 40, 4);
    } else {
        uint8_t a[16] = {0};
        memcpy(a, pkt->eth, VS_ETH_HDR);
        h = mix_bytes(h, a, 16);
    }
    return (uint16_t)(VX_SPORT_BASE + (h & VX_SPORT_MASK));
}

/* Sends datagrams [0, nm) of the batch; marks in ok[] the frames (by index
 * in the enqueue) of which one copy at least went out. */
static void flush(struct vs_port *p, uint32_t nm, bool *ok)
{
    struct vs_vxlan *vx = p->vx;
    uint32_t k = 0;
    while (k < nm) {
        int r = sendmmsg(vx->tx_fd, &vx->msgs[k], nm - k, MSG_DONTWAIT);
        if (r > 0) {
            for (uint32_t j = k; j < k + (uint32_t)r; j++)
                ok[vx->msg_frame[j]] = true;
            vx->st.tx_datagrams += (uint32_t)r;
            k += (uint32_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        int err = r < 0 ? errno : EIO;
        if (err == EAGAIN || err == ENOBUFS) {
            /* The socket's buffer is full: so it is for the rest. */
            p->st.tx_drop_no_buffer += nm - k;
            return;
        }
        /* Datagram k is refused: over the underlay's MTU (DF), no route to
         * its remote, ...; the next ones may go. */
        if (err == EMSGSIZE)
            p->st.tx_drop_too_long++;
        else
            vx->st.tx_drop_vxlan_send++;
        k++;
    }
}

uint32_t vs_vxlan_enqueue(struct vs_port *p, struct vs_pkt **pkts, uint32_t n)
{
    struct vs_vxlan *vx = p->vx;
    if (!vx || vx->tx_fd < 0) {
        p->st.tx_drop_port_down += n;
        return 0;
    }
    bool ok[VS_BURST] = {false};
    uint32_t nm = 0, sent = 0;
    if (n > VS_BURST)
        n = VS_BURST;
    for (uint32_t i = 0; i < n; i++) {
        struct vs_pkt *pkt = pkts[i];
        if (pkt->len > frame_limit(p, pkt->eth)) {
            p->st.tx_drop_too_long++;
            continue;
        }
        uint32_t first = 0, count = vx->nflood;
        if (pkt->tx_remote != 0 && pkt->tx_port == p->id && pkt->tx_remote <= vx->nremotes) {
            first = pkt->tx_remote - 1u;
            count = 1;
        }
        if (count == 0) {
            p->st.tx_drop_port_down++;  /* a flood list of none: nowhere to send it */
            continue;
        }
        uint16_t sport = flow_port(pkt);
        uint32_t ulen = VX_UDP + VX_HDR + pkt->len;
        for (uint32_t r = first; r < first + count; r++) {
            if (nm == VX_BATCH) {
                flush(p, nm, ok);
                nm = 0;
            }
            uint8_t *h = vx->hdrs[nm];
            h[0] = (uint8_t)(sport >> 8);
            h[1] = (uint8_t)sport;
            h[2] = (uint8_t)(vx->dstport >> 8);
            h[3] = (uint8_t)vx->dstport;
            h[4] = (uint8_t)(ulen >> 8);
            h[5] = (uint8_t)ulen;
            h[6] = h[7] = 0;    /* IPv4: none; IPv6: the kernel's (IPV6_CHECKSUM) */
            h[8] = VX_FLAG_I;
            h[9] = h[10] = h[11] = 0;
            h[12] = (uint8_t)(vx->vni >> 16);
            h[13] = (uint8_t)(vx->vni >> 8);
            h[14] = (uint8_t)vx->vni;
            h[15] = 0;
            struct iovec *v = vx->iov[nm];
            v[0] = (struct iovec){h, VX_UDP + VX_HDR};
            v[1] = (struct iovec){pkt->eth, VS_ETH_HDR};
            for (uint32_t s = 0; s < pkt->nseg; s++)
                v[2 + s] = (struct iovec){(void *)pkt->seg[s].p, pkt->seg[s].len};
            union vx_addr *to = &vx->names[nm];
            socklen_t tolen;
            memset(to, 0, sizeof(*to));
            if (vx->ipv6) {
                to->v6.sin6_family = AF_INET6;     /* port 0: a raw socket's */
                memcpy(to->v6.sin6_addr.s6_addr, vx->remotes[r], 16);
                tolen = sizeof(to->v6);
            } else {
                to->v4.sin_family = AF_INET;
                memcpy(&to->v4.sin_addr.s_addr, vx->remotes[r], 4);
                tolen = sizeof(to->v4);
            }
            vx->msgs[nm].msg_hdr = (struct msghdr){
                .msg_name = to,
                .msg_namelen = tolen,
                .msg_iov = v,
                .msg_iovlen = 2 + pkt->nseg,
            };
            vx->msg_frame[nm] = (uint8_t)i;
            nm++;
        }
    }
    if (nm > 0)
        flush(p, nm, ok);
    for (uint32_t i = 0; i < n; i++) {
        if (ok[i]) {
            vs_delivered(p, pkts[i]);
            sent++;
        }
    }
    return sent;
}

int vs_vxlan_configure(struct vs_switch *sw, uint32_t port, const struct vs_vxlan_config *c)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || p->kind != VS_PORT_VXLAN)
        return -ENODEV;
    if (c->vni > VS_VXLAN_MAX_VNI || c->nremotes > VS_VXLAN_MAX_REMOTES || c->dstport == 0 ||
        (c->nremotes > 0 && !c->remotes))
        return -EINVAL;
    struct vs_vxlan *vx = p->vx;
    if (!vx) {
        vx = calloc(1, sizeof(*vx));
        if (!vx)
            return -ENOMEM;
        p->vx = vx;
    }
    bool ipv6 = c->ipv6 != 0;
    size_t flood = (size_t)c->nremotes * 16;
    bool same = vx->nflood == c->nremotes && vx->ipv6 == ipv6 && vx->vni == c->vni &&
                (flood == 0 || memcmp(vx->remotes, c->remotes, flood) == 0);
    vx->vni = c->vni;
    vx->ipv6 = ipv6;
    vx->tx_fd = c->tx_fd;
    vx->dstport = c->dstport;
    memcpy(vx->local, c->local, 16);
    if (!same || vx->learn != (c->learn_remotes != 0)) {
        /* Learned addresses name remotes by number: they go with them. */
        if (flood)
            memcpy(vx->remotes, c->remotes, flood);
        vx->nflood = vx->nremotes = c->nremotes;
        vx->last_rx = 0;
        vs_fdb_remove_port(&sw->fdb, (int)port, false);
    }
    vx->learn = c->learn_remotes != 0;
    return 0;
}

void vs_vxlan_get_stats(struct vs_switch *sw, uint32_t port, struct vs_vxlan_stats *out)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->vx) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = p->vx->st;
}

uint32_t vs_vxlan_remotes(struct vs_switch *sw, uint32_t port, uint8_t *out, uint32_t max)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->vx)
        return 0;
    struct vs_vxlan *vx = p->vx;
    for (uint32_t i = 0; i < vx->nremotes && i < max; i++)
        memcpy(out + (size_t)i * 16, vx->remotes[i], 16);
    return vx->nremotes;
}

void vs_vxlan_free(struct vs_port *p)
{
    free(p->vx);
    p->vx = NULL;
}
