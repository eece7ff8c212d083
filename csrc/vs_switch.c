/* The switch: its creation and release, and its own counters.  Ports are
 * vs_port.c, forwarding vs_forward.c, the MAC table vs_fdb.c, the poll
 * thread vs_run.c. */
#define _GNU_SOURCE
#include <stdlib.h>

#include "vs_internal.h"

struct vs_switch *vs_switch_new(uint32_t fdb_size)
{
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
