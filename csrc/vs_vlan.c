/* 802.1Q VLANs on ports: access ports and trunks, as OVS's tag and trunks.
 *
 * A frame is classified once, when the switch takes it from a port
 * (vs_vlan_ingress): its VLAN is noted in the frame, and a tag it came with
 * is taken off, so inside the switch every frame looks untagged.  Learning,
 * lookups and flooding then go by (VLAN, MAC).  A frame leaves a trunk with
 * its tag again (unless that is the trunk's native VLAN): the tagged view of
 * a frame is the same frame with a 4-byte segment in front of the bytes
 * after the MAC addresses (eth's ethertype becomes 0x8100, and the segment
 * holds the tag and the frame's own ethertype), made once per burst however
 * many trunks get it.  So pushing and popping a tag costs no copy: every
 * port copies the frame into its own buffers anyway.
 *
 * A port that is not VLAN-aware (no vlan, no trunks: VLAN 0) is what a port
 * was before VLANs: its frames are not looked at, tags and all, and it
 * shares VLAN 0 only with ports like it.  Trunks never carry VLAN 0.
 *
 * Priority bits are kept from trunk to trunk; a frame from an access port
 * gets priority 0, and a priority-tagged frame (VLAN ID 0) counts as
 * untagged with its priority kept.  An outer 802.1ad tag (0x88a8, or the
 * older 0x9100) or a second 802.1Q tag is QinQ, which is not implemented:
 * such frames are dropped and counted (rx_drop_qinq) on VLAN-aware ports. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "vs_vlan.h"
#include "vs_internal.h"

#define ETH_8021AD 0x88a8
#define ETH_QINQ_OLD 0x9100

static inline uint16_t be16_at(const uint8_t *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

static inline bool is_tag_type(uint16_t t)
{
    return t == VS_ETH_8021Q || t == ETH_8021AD || t == ETH_QINQ_OLD;
}

/* Takes the 4 bytes after eth off the frame's segments into out: false if
 * the frame is too short to hold them. */
static bool pull4(struct vs_pkt *pkt, uint8_t out[4])
{
    if (pkt->len < VS_ETH_HDR + 4)
        return false;
    uint32_t got = 0, k = 0;
    while (got < 4 && k < pkt->nseg) {
        struct vs_seg *s = &pkt->seg[k];
        uint32_t n = 4 - got < s->len ? 4 - got : s->len;
        memcpy(out + got, s->p, n);
        got += n;
        s->p += n;
        s->len -= n;
        if (s->len == 0)
            k++;
    }
    if (got < 4)
        return false;   /* segments hold less than len says */
    if (k > 0) {
        pkt->nseg -= k;
        memmove(pkt->seg, pkt->seg + k, pkt->nseg * sizeof(pkt->seg[0]));
    }
    pkt->len -= 4;
    return true;
}

static bool drop_not_allowed(struct vs_switch *sw, struct vs_port *ip, uint16_t vid)
{
    ip->st.rx_drop_vlan++;
    sw->vlan_not_allowed[vid]++;
    return false;
}

bool vs_vlan_ingress(struct vs_switch *sw, struct vs_port *ip, struct vs_pkt *pkt)
{
    pkt->pcp_dei = 0;
    if (!ip->trunk && ip->vlan == 0) {
        pkt->vlan = 0;
        return true;
    }
    uint16_t type = be16_at(pkt->eth + 12), vid = 0;
    if (type == ETH_8021AD || type == ETH_QINQ_OLD) {
        ip->st.rx_drop_qinq++;
        return false;
    }
    if (type == VS_ETH_8021Q) {
        uint8_t t[4];
        if (!pull4(pkt, t)) {
            ip->st.rx_drop_runt++;
            return false;
        }
        uint16_t tci = be16_at(t), inner = be16_at(t + 2);
        if (is_tag_type(inner)) {
            ip->st.rx_drop_qinq++;
            return false;
        }
        vid = tci & VS_VLAN_MAX;
        pkt->pcp_dei = tci & ~VS_VLAN_MAX;
        memcpy(pkt->eth + 12, t + 2, 2);
        if (vid == VS_VLAN_MAX) /* reserved (IEEE 802.1Q, 9.6) */
            return drop_not_allowed(sw, ip, vid);
    }
    if (!ip->trunk) {
        if (vid != 0) {
            ip->st.rx_drop_vlan_tagged++;
            sw->vlan_tagged[vid]++;
            return false;
        }
        pkt->vlan = ip->vlan;
        return true;
    }
    if (vid == 0) {
        if (ip->native == 0)
            return drop_not_allowed(sw, ip, 0);
        vid = ip->native;
    } else if (!vs_carries(ip, vid)) {
        return drop_not_allowed(sw, ip, vid);
    }
    pkt->vlan = vid;
    return true;
}

/* Makes frame i's tagged view: the frame as it is in the switch, with the
 * tag segment in front of its segments. */
static struct vs_pkt *make_tagged(struct vs_switch *sw, uint32_t i)
{
    const struct vs_pkt *u = &sw->burst[i];
    struct vs_pkt *t = &sw->tagged[i];
    uint8_t *tag = sw->tag[i];
    uint16_t tci = (uint16_t)(u->pcp_dei | u->vlan);
    tag[0] = (uint8_t)(tci >> 8);
    tag[1] = (uint8_t)tci;
    memcpy(tag + 2, u->eth + 12, 2);
    memcpy(t->eth, u->eth, 12);
    t->eth[12] = VS_ETH_8021Q >> 8;
    t->eth[13] = VS_ETH_8021Q & 0xff;
    t->vlan = u->vlan;
    t->pcp_dei = u->pcp_dei;
    t->rx_remote = u->rx_remote;
    t->tx_remote = u->tx_remote;
    t->tx_port = u->tx_port;
    t->seg[0] = (struct vs_seg){tag, 4};
    memcpy(t->seg + 1, u->seg, u->nseg * sizeof(u->seg[0]));
    t->nseg = u->nseg + 1;
    t->len = u->len + 4;
    t->buf = u->buf;
    sw->tagged_made |= 1U << i;
    return t;
}

struct vs_pkt *vs_vlan_tagged(struct vs_switch *sw, uint32_t i)
{
    if (sw->tagged_made >> i & 1)
        return &sw->tagged[i];
    return make_tagged(sw, i);
}

static bool valid_vid(uint32_t v)
{
    return v >= 1 && v < VS_VLAN_MAX;
}

int vs_port_set_vlans(struct vs_switch *sw, uint32_t port, uint32_t access_vlan,
                      const uint16_t *trunks, uint32_t ntrunks, uint32_t native_vlan)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    if (ntrunks > VS_VLAN_MAX || (ntrunks > 0 && access_vlan != 0) ||
        (ntrunks == 0 && native_vlan != 0) || (access_vlan != 0 && !valid_vid(access_vlan)) ||
        (native_vlan != 0 && !valid_vid(native_vlan)))
        return -EINVAL;
    uint64_t set[(VS_VLAN_MAX + 1) / 64] = {0};
    for (uint32_t k = 0; k < ntrunks; k++) {
        if (!valid_vid(trunks[k]))
            return -EINVAL;
        set[trunks[k] / 64] |= 1ULL << (trunks[k] % 64);
    }
    p->trunk = ntrunks > 0;
    p->vlan = (uint16_t)access_vlan;
    p->native = (uint16_t)native_vlan;
    memcpy(p->trunk_set, set, sizeof(set));
    /* What the port learned (or was given) on VLANs it no longer carries
     * would send frames to it that it may not get. */
    uint64_t keep[(VS_VLAN_MAX + 1) / 64] = {0};
    for (uint32_t v = 0; v <= VS_VLAN_MAX; v++) {
        if (vs_carries(p, (uint16_t)v))
            keep[v / 64] |= 1ULL << (v % 64);
    }
    return (int)vs_fdb_remove_port_vlans(&sw->fdb, port, keep);
}

uint32_t vs_vlan_stats(struct vs_switch *sw, struct vs_vlan_stats *out, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t v = 0; v <= VS_VLAN_MAX && n < max; v++) {
        uint64_t na = __atomic_load_n(&sw->vlan_not_allowed[v], __ATOMIC_RELAXED);
        uint64_t tg = __atomic_load_n(&sw->vlan_tagged[v], __ATOMIC_RELAXED);
        if (na == 0 && tg == 0)
            continue;
        out[n++] = (struct vs_vlan_stats){.vlan = v, .not_allowed = na, .tagged = tg};
    }
    return n;
}
