/* Split-virtqueue access shared by the TX and RX paths (virtio 1.2, 2.7).
 *
 * The guest can rewrite any of this memory at any moment, so every value is
 * read once, checked, and only the checked copy is used: heads and next
 * indexes against the table size, chain length against the table size,
 * every (addr, len) against the mapped regions, the avail index against
 * the ring size.  A ring that fails a check is broken (vs_port_break): the
 * port stops, and nothing outside the guest's own regions is ever touched.
 *
 * Inline because these run for every descriptor of every frame. */
#ifndef VS_RING_H
#define VS_RING_H

#include <errno.h>

#include "vs_internal.h"

static inline uint16_t *vs_used_event(struct vs_vring *vq)
{
    return &vq->avail->ring[vq->num];
}

static inline uint16_t *vs_avail_event(struct vs_vring *vq)
{
    return (uint16_t *)&vq->used->ring[vq->num];
}

/* Walks one descriptor chain, following at most one indirect table. */
struct desc_iter {
    const struct vring_desc *table;
    uint32_t size;
    uint32_t idx;
    uint32_t seen;
    bool indirect;
    bool done;
};

static inline void desc_iter_start(struct desc_iter *it, struct vs_vring *vq, uint16_t head)
{
    *it = (struct desc_iter){.table = vq->desc, .size = vq->num, .idx = head};
}

/* 1: *out holds the next descriptor; 0: end of chain; <0: broken ring. */
static inline int desc_next(struct vs_port *p, struct desc_iter *it, struct vring_desc *out)
{
    for (;;) {
        if (it->done)
            return 0;
        if (__builtin_expect(it->idx >= it->size, 0)) {
            vs_port_break(p, "descriptor index out of range");
            return -EINVAL;
        }
        if (__builtin_expect(++it->seen > it->size, 0)) {
            vs_port_break(p, "descriptor chain loops or is longer than its table");
            return -ELOOP;
        }
        const struct vring_desc *src = &it->table[it->idx];
        struct vring_desc d = {
            .addr = READ_ONCE(src->addr),
            .len = READ_ONCE(src->len),
            .flags = READ_ONCE(src->flags),
            .next = READ_ONCE(src->next),
        };
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (it->indirect || !p->indirect || (d.flags & VRING_DESC_F_NEXT) ||
                d.len == 0 || d.len % sizeof(struct vring_desc) ||
                d.len / sizeof(struct vring_desc) > VS_MAX_RING_SIZE) {
                vs_port_break(p, "bad indirect descriptor");
                return -EINVAL;
            }
            uint64_t len = d.len;
            const void *t = vs_gpa_to_host(&p->mem, d.addr, &len);
            if (!t || len != d.len || ((uintptr_t)t & 15)) {
                vs_port_break(p, "indirect table outside guest memory");
                return -EFAULT;
            }
            it->table = t;
            it->size = d.len / sizeof(struct vring_desc);
            it->idx = 0;
            it->seen = 0;
            it->indirect = true;
            continue;
        }
        if (d.flags & VRING_DESC_F_NEXT)
            it->idx = d.next;
        else
            it->done = true;
        *out = d;
        return 1;
    }
}

/* The next span of guest memory a descriptor covers, from *addr with
 * *left bytes to go: its length in *len, and *addr and *left moved past
 * it.  NULL, and the ring broken with why, if it lies outside guest memory. */
static inline uint8_t *desc_span(struct vs_port *p, uint64_t *addr, uint64_t *left,
                                 uint64_t *len, const char *why)
{
    *len = *left;
    uint8_t *h = vs_gpa_to_host(&p->mem, *addr, len);
    if (!h) {
        vs_port_break(p, why);
        return NULL;
    }
    *addr += *len;
    *left -= *len;
    return h;
}

static inline void put_used(struct vs_vring *vq, uint16_t idx, uint32_t id, uint32_t len)
{
    struct vring_used_elem *e = &vq->used->ring[idx & (vq->num - 1)];
    WRITE_ONCE(e->id, id);
    WRITE_ONCE(e->len, len);
}

static inline void publish_used(struct vs_vring *vq)
{
    __atomic_store_n(&vq->used->idx, vq->last_used, __ATOMIC_RELEASE);
}

/* Reads the avail index; a jump of more than the ring size means the
 * guest is lying, and the ring stops. */
static inline int avail_count(struct vs_port *p, struct vs_vring *vq, uint16_t *count)
{
    uint16_t idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
    uint16_t n = (uint16_t)(idx - vq->last_avail);
    if (__builtin_expect(n > vq->num, 0)) {
        vs_port_break(p, "avail index moved by more than the ring size");
        return -EINVAL;
    }
    *count = n;
    return 0;
}

static inline int read_head(struct vs_port *p, struct vs_vring *vq, uint16_t slot, uint16_t *head)
{
    uint16_t h = READ_ONCE(vq->avail->ring[slot & (vq->num - 1)]);
    if (__builtin_expect(h >= vq->num, 0)) {
        vs_port_break(p, "avail ring head out of range");
        return -EINVAL;
    }
    *head = h;
    return 0;
}

/* Starts loading the descriptor a head names, without trusting it: the
 * load is only a hint, the walk reads and checks it again.  Every head of
 * a burst is hinted before the first is walked, so the cache misses on
 * descriptors the other core just wrote overlap instead of queueing. */
static inline void prefetch_head(struct vs_vring *vq, uint16_t slot)
{
    uint16_t h = READ_ONCE(vq->avail->ring[slot & (vq->num - 1)]);
    __builtin_prefetch(&vq->desc[h & (vq->num - 1)], 0, 3);
}

/* Same for the first line or two of a buffer. */
static inline void prefetch_span(const void *p, uint32_t len, int write)
{
    const uint8_t *b = p;
    if (write)
        __builtin_prefetch(b, 1, 3);
    else
        __builtin_prefetch(b, 0, 3);
    if (len > 64) {
        if (write)
            __builtin_prefetch(b + 64, 1, 3);
        else
            __builtin_prefetch(b + 64, 0, 3);
    }
}

#endif
