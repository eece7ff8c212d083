/* vs_vlan.h: 802.1Q on ports (vs_vlan.c): the forwarding path's calls.
 * Apart from vs_internal.h so that the files vs_vlan.c builds on do not call
 * back into it. */
#ifndef VS_VLAN_H
#define VS_VLAN_H

#include "vs_internal.h"

/* Classifies a frame taken from port ip: its VLAN into pkt->vlan, a tag
 * taken off (the frame then looks untagged: eth's ethertype is the one the
 * tag carried).  false: the frame is dropped (counted on ip and its VLAN). */
bool vs_vlan_ingress(struct vs_switch *sw, struct vs_port *ip, struct vs_pkt *pkt);
/* Frame i of the burst with its tag (made once per burst). */
struct vs_pkt *vs_vlan_tagged(struct vs_switch *sw, uint32_t i);

/* Frame i of the burst as port d gets it: sw->burst[i] or its tagged view.
 * Inline: it runs for every frame queued on a port. */
static inline struct vs_pkt *vs_vlan_view(struct vs_switch *sw, const struct vs_port *d,
                                          uint32_t i)
{
    struct vs_pkt *u = &sw->burst[i];
    if (__builtin_expect(!vs_leaves_tagged(d, u->vlan), 1))
        return u;
    return vs_vlan_tagged(sw, i);
}
/* Which frame of the burst a pointer vs_vlan_view returned is. */
static inline uint32_t vs_burst_index(const struct vs_switch *sw, const struct vs_pkt *pkt)
{
    if (pkt >= sw->tagged && pkt < sw->tagged + VS_BURST)
        return (uint32_t)(pkt - sw->tagged);
    return (uint32_t)(pkt - sw->burst);
}

#endif
