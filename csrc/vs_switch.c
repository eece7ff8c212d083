/* The switch: its creation and release, its own counters, and its MAC
 * table as the control plane sees it (the vs_fdb_* calls of fastpath.h:
 * checked, timed and counted here, done by the table in vs_fdb.c).  Ports
 * are vs_port.c, forwarding vs_forward.c, the poll thread vs_run.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "vs_internal.h"

struct vs_switch *vs_switch_new(uint32_t fdb_size)
{
    vs_peer_init();
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

int vs_fdb_add(struct vs_switch *sw, uint64_t mac, uint16_t vlan, uint32_t port, int is_static)
{
    if (port >= VS_MAX_PORTS || vlan > VS_VLAN_MAX || mac > VS_MAC_MASK)
        return -EINVAL;
    if (!sw->ports[port].open)
        return -ENODEV;
    if (!vs_carries(&sw->ports[port], vlan))
        return -EINVAL;
    return vs_fdb_put(&sw->fdb, mac, vlan, port, is_static != 0, sw->now);
}

int vs_fdb_del(struct vs_switch *sw, uint64_t mac, uint16_t vlan)
{
    return vs_fdb_remove(&sw->fdb, mac, vlan);
}

uint32_t vs_fdb_flush(struct vs_switch *sw, int port, int include_static)
{
    return vs_fdb_remove_port(&sw->fdb, port, include_static != 0);
}

uint32_t vs_fdb_flush_vlan(struct vs_switch *sw, int port, uint32_t vlan, int include_static)
{
    if (vlan > VS_VLAN_MAX)
        return 0;
    return vs_fdb_remove_vlan(&sw->fdb, port, (uint16_t)vlan, include_static != 0);
}

uint32_t vs_fdb_age(struct vs_switch *sw, uint32_t max_age)
{
    vs_tick(sw);
    uint32_t n = vs_fdb_expire(&sw->fdb, sw->now, max_age);
    sw->st.fdb_aged += n;
    return n;
}

int vs_fdb_get(struct vs_switch *sw, uint64_t mac, uint16_t vlan, struct vs_fdb_entry *out)
{
    if (vlan > VS_VLAN_MAX || mac > VS_MAC_MASK)
        return -EINVAL;
    vs_tick(sw);
    return vs_fdb_entry_of(&sw->fdb, mac, vlan, sw->now, out);
}

uint32_t vs_fdb_dump(struct vs_switch *sw, struct vs_fdb_entry *out, uint32_t max)
{
    vs_tick(sw);
    return vs_fdb_read(&sw->fdb, sw->now, out, max);
}
