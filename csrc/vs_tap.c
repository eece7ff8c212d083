/* TAP ports: the kernel side of the switch.  A tap fd opened with
 * IFF_TAP|IFF_NO_PI carries one Ethernet frame per read() or write();
 * the fd is non-blocking, so a full or empty queue is EAGAIN, never a wait. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vs_capture.h"
#include "vs_internal.h"

int vs_tap_dequeue(struct vs_port *p, struct vs_pkt *pkts, uint32_t max)
{
    uint32_t got = 0;
    uint32_t limit = p->mtu + 18;
    /* Dropped frames count against the burst too, so a flood of runts
     * cannot keep us here. */
    for (uint32_t tries = 0; got < max && tries < max && p->fd >= 0; tries++) {
        struct vs_pkt *pkt = &pkts[got];
        ssize_t n = read(p->fd, pkt->buf, VS_PKT_SIZE);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 0 || errno != EAGAIN) {
                /* The interface is gone (deleted from outside): the port
                 * goes down, the switch goes on. */
                vs_port_break(p, "tap device read failed");
                return got > 0 ? (int)got : -EIO;
            }
            break;
        }
        if (n < 14) {
            p->st.rx_drop_runt++;
            continue;
        }
        if ((uint32_t)n > limit) {
            p->st.rx_drop_too_long++;
            continue;
        }
        memcpy(pkt->eth, pkt->buf, VS_ETH_HDR);
        pkt->len = (uint32_t)n;
        pkt->nseg = n > VS_ETH_HDR;
        pkt->seg[0] = (struct vs_seg){pkt->buf + VS_ETH_HDR, (uint32_t)n - VS_ETH_HDR};
        p->st.rx_packets++;
        p->st.rx_bytes += (uint64_t)n;
        got++;
    }
    return (int)got;
}

uint32_t vs_tap_enqueue(struct vs_port *p, struct vs_pkt **pkts, uint32_t n)
{
    uint32_t sent = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (pkts[i]->len > p->mtu + 18) {
            p->st.tx_drop_too_long++;
            continue;
        }
        /* One writev is one frame on a tap. */
        struct iovec v[1 + VS_PKT_SEGS + 1];
        v[0] = (struct iovec){pkts[i]->eth, VS_ETH_HDR};
        for (uint32_t k = 0; k < pkts[i]->nseg; k++)
            v[1 + k] = (struct iovec){(void *)pkts[i]->seg[k].p, pkts[i]->seg[k].len};
        ssize_t w = writev(p->fd, v, 1 + (int)pkts[i]->nseg);
        if (w != (ssize_t)pkts[i]->len) {
            if (w < 0 && errno == EIO) {
                /* The interface is down (ip link set down): not a failure
                 * of the port, the frames just have nowhere to go. */
                p->st.tx_drop_port_down++;
                continue;
            }
            if (w < 0 && errno != EAGAIN && errno != ENOBUFS) {
                p->st.tx_drop_port_down += n - i;
                vs_port_break(p, "tap device write failed");
                return sent;
            }
            p->st.tx_drop_no_buffer++;
            continue;
        }
        vs_delivered(p, pkts[i]);
        sent++;
    }
    return sent;
}
