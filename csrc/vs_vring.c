/* Split virtqueues: setup, notifications and kick suppression (virtio 1.2,
 * 2.7).  Taking frames is vs_vring_tx.c, giving them vs_vring_rx.c; the
 * checks both make on every guest value are in vs_ring.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "vs_ring.h"

void vs_vring_init(struct vs_vring *vq)
{
    memset(vq, 0, sizeof(*vq));
    vq->kick_fd = -1;
    vq->call_fd = -1;
}

int vs_vring_translate(struct vs_port *p, struct vs_vring *vq)
{
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    if (!vq->addr_set || vq->num == 0 || p->mem.n == 0)
        return -EAGAIN;
    uint64_t extra = p->event_idx ? 2 : 0;
    uint64_t num = vq->num;
    void *d = vs_uaddr_to_host(&p->mem, vq->desc_ua, 16 * num);
    void *a = vs_uaddr_to_host(&p->mem, vq->avail_ua, 4 + 2 * num + extra);
    void *u = vs_uaddr_to_host(&p->mem, vq->used_ua, 4 + 8 * num + extra);
    if (!d || !a || !u)
        return -EFAULT;
    if (((uintptr_t)d & 15) || ((uintptr_t)a & 1) || ((uintptr_t)u & 3))
        return -EINVAL;
    /* The parts must not overlap: kick suppression writes used->flags, and
     * a used ring laid over the avail index would turn our own writes
     * into "new work" forever. */
    uintptr_t dl = 16 * num, al = 4 + 2 * num + extra, ul = 4 + 8 * num + extra;
    uintptr_t di = (uintptr_t)d, ai = (uintptr_t)a, ui = (uintptr_t)u;
    if ((di < ai + al && ai < di + dl) || (di < ui + ul && ui < di + dl) ||
        (ai < ui + ul && ui < ai + al))
        return -EINVAL;
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    return 0;
}

/* virtio 1.2, 2.7.10: interrupt only if the guest's used_event lies in the
 * window of used entries published since the last interrupt. */
static inline bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* Interrupts the guest if it asked for one.  The caller has published the
 * used index and then fenced (vs_flush_signals): the index store must be
 * visible before we read the guest's suppression state, or an interrupt
 * can be lost. */
void vs_vring_signal(struct vs_port *p, struct vs_vring *vq)
{
    bool signal;
    if (p->event_idx) {
        uint16_t old = vq->signalled_used;
        uint16_t ev = READ_ONCE(*vs_used_event(vq));
        signal = !vq->signalled_valid || need_event(ev, vq->last_used, old);
        if (old == vq->last_used && vq->signalled_valid)
            signal = false;
    } else {
        signal = !(READ_ONCE(vq->avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
    }
    if (!signal)
        return;
    vq->signalled_used = vq->last_used;
    vq->signalled_valid = true;
    if (vq->call_fd >= 0) {
        /* Never a blocking write: the front end shares this eventfd and can
         * fill its counter and clear O_NONBLOCK (vs_peer.c). */
        int rc = vs_efd_give(p->sw, p->id, vq->call_fd);
        if (rc > 0)
            p->st.calls++;
        else if (rc == -EINTR)
            vs_port_break(p, "its call eventfd blocked the switch's write (the front end "
                             "filled the counter and cleared O_NONBLOCK)");
    }
}

/* Kick suppression (virtio 1.2, 2.7.10): while draining we ask the guest
 * not to kick; when done we ask again and the caller re-checks the ring. */
void vs_vring_enable_kicks(struct vs_port *p, struct vs_vring *vq, bool on)
{
    if (p->event_idx) {
        if (on) {
            WRITE_ONCE(*vs_avail_event(vq), vq->last_avail);
            if (__builtin_expect(p->logging, 0))
                vs_log_used_at(p, vq, 4 + 8 * (uint64_t)vq->num, sizeof(uint16_t));
        }
    } else if (!on && vq->kicks_off) {
        /* Already off: a store would still take the line holding the used
         * index away from the guest's core, on every poll. */
    } else {
        uint16_t f = READ_ONCE(vq->used->flags);
        f = on ? (uint16_t)(f & ~VRING_USED_F_NO_NOTIFY) : (uint16_t)(f | VRING_USED_F_NO_NOTIFY);
        WRITE_ONCE(vq->used->flags, f);
        vq->kicks_off = !on;
        if (__builtin_expect(p->logging, 0))
            vs_log_used_at(p, vq, 0, sizeof(uint16_t));
    }
    if (on)
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
