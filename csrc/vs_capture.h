/* vs_capture.h: what the ports' output paths need of vs_capture.c: a frame
 * given to a port is counted and, while a capture runs, copied to it.  Kept
 * out of vs_internal.h so that the files vs_capture.c builds on do not call
 * back into it. */
#ifndef VS_CAPTURE_H
#define VS_CAPTURE_H

#include "vs_internal.h"

void vs_capture_frame(struct vs_port *p, uint32_t dir, const struct vs_pkt *pkt);

static inline bool vs_capturing(const struct vs_port *p, uint32_t dir)
{
    return __builtin_expect(p->cap != NULL, 0) && (p->cap->dirs & dir);
}

/* Counts a frame given to a port, and mirrors it to a running capture. */
static inline void vs_delivered(struct vs_port *p, const struct vs_pkt *pkt)
{
    p->st.tx_packets++;
    p->st.tx_bytes += pkt->len;
    if (vs_capturing(p, VS_CAP_TX))
        vs_capture_frame(p, VS_CAP_TX, pkt);
}

#endif
