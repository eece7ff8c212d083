/* Split-virtqueue access shared by the TX and RX paths (virtio 1.2, 2.7).
 *
 * The guest can rewrite any of this memory at any moment, so every value is
 * read once, checked, and only the checked copy is used: heads and next
 * indexes against the table size, chain length against the queue size,
 * every (addr, len) against the mapped regions, the avail index against
 * the ring size.  A ring that fails a check is broken (vs_port_break): the
 * port stops, and nothing outside the guest's own regions is ever touched.
 *
 * Inline because these run for every descriptor of every frame. */
#ifndef VS_RING_H
#define VS_RING_H

#include <errno.h>
#include <string.h>

#include "vs_internal.h"

static inline uint16_t *vs_used_event(struct vs_vring *vq)
{
    return &vq->avail->ring[vq->num];
}

static inline uint16_t *vs_avail_event(struct vs_vring *vq)
{
    return (uint16_t *)&vq->used->ring[vq->num];
}

/* Walks one descriptor chain, following at most one indirect table.
 *
 * One count for the whole chain, direct descriptors and indirect entries
 * together, zero-length ones included: a chain of more than the queue size
 * is a broken ring (virtio 1.2, 2.7.5.3.1: "A driver MUST NOT create a
 * descriptor chain longer than the Queue Size of the device"), whatever
 * tables it is spread over.  The indirect descriptor itself is not counted
 * (there is at most one per chain).  What one frame may use is a tighter
 * bound (VS_FRAME_MAX_DESCS), which the callers apply to seen. */
struct desc_iter {
    const struct vring_desc *table;     /* an aligned table, or NULL: raw */
    const uint8_t *raw;                 /* an indirect table not 8-byte aligned */
    uint32_t size;                      /* entries in the table being walked */
    uint32_t idx;
    uint32_t seen;                      /* descriptors of this chain so far */
    uint32_t limit;                     /* the queue size */
    bool indirect;
    bool done;
};

static inline void desc_iter_start(struct desc_iter *it, struct vs_vring *vq, uint16_t head)
{
    *it = (struct desc_iter){.table = vq->desc, .size = vq->num, .idx = head, .limit = vq->num};
}

/* Reads descriptor it->idx of the table being walked, once.  The ring's
 * own table is 16-byte aligned (vs_vring_translate checks); an indirect
 * table may lie anywhere (the spec asks no alignment of it), and one that
 * is not aligned for 8-byte loads is copied a descriptor at a time, the
 * barrier keeping the compiler from reading guest memory again for it. */
static inline void read_desc(const struct desc_iter *it, struct vring_desc *d)
{
    if (__builtin_expect(it->raw != NULL, 0)) {
        memcpy(d, it->raw + (size_t)it->idx * sizeof(*d), sizeof(*d));
        __asm__ volatile("" ::: "memory");
        return;
    }
    const struct vring_desc *src = &it->table[it->idx];
    d->addr = READ_ONCE(src->addr);
    d->len = READ_ONCE(src->len);
    d->flags = READ_ONCE(src->flags);
    d->next = READ_ONCE(src->next);
}

/* Checks an indirect descriptor and moves the walk into its table. */
static inline int enter_indirect(struct vs_port *p, struct desc_iter *it, const struct vring_desc *d)
{
    const char *why = NULL;
    if (it->indirect)
        why = "indirect descriptor inside an indirect table";
    else if (!p->indirect)
        why = "indirect descriptor, but INDIRECT_DESC was not negotiated";
    else if (d->flags & VRING_DESC_F_NEXT)
        why = "indirect descriptor with the NEXT flag set";
    else if (d->len == 0)
        why = "indirect table of length 0";
    else if (d->len % sizeof(struct vring_desc))
        why = "indirect table length not a multiple of 16";
    if (why) {
        vs_port_break(p, why);
        return -EINVAL;
    }
    uint64_t len = d->len;
    const uint8_t *t = vs_gpa_to_host(&p->mem, d->addr, &len);
    if (!t) {
        vs_port_break(p, "indirect table outside guest memory");
        return -EFAULT;
    }
    if (len != d->len) {
        vs_port_break(p, "indirect table crosses the end of a guest memory region");
        return -EFAULT;
    }
    if ((uintptr_t)t % _Alignof(struct vring_desc)) {
        it->table = NULL;
        it->raw = t;
    } else {
        it->table = (const struct vring_desc *)(const void *)t;
        it->raw = NULL;
    }
    it->size = d->len / sizeof(struct vring_desc);
    it->idx = 0;
    it->indirect = true;
    return 0;
}

/* 1: *out holds the next descriptor; 0: end of chain; <0: broken ring. */
static inline int desc_next(struct vs_port *p, struct desc_iter *it, struct vring_desc *out)
{
    for (;;) {
        if (it->done)
            return 0;
        if (__builtin_expect(it->idx >= it->size, 0)) {
            vs_port_break(p, it->indirect ? "next index past the end of an indirect table"
                                          : "next index past the end of the descriptor table");
            return -EINVAL;
        }
        struct vring_desc d;
        read_desc(it, &d);
        if (d.flags & VRING_DESC_F_INDIRECT) {
            int rc = enter_indirect(p, it, &d);
            if (rc < 0)
                return rc;
            continue;
        }
        if (__builtin_expect(++it->seen > it->limit, 0)) {
            vs_port_break(p, "descriptor chain longer than the queue size (or a loop)");
            return -ELOOP;
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
 * it.  NULL, and the ring broken, if it lies outside guest memory: why[0]
 * says so for a buffer that starts outside, why[1] for one that runs out
 * of it (first: no span of this descriptor was taken yet). */
static inline uint8_t *desc_span(struct vs_port *p, uint64_t *addr, uint64_t *left,
                                 uint64_t *len, bool first, const char *const why[2])
{
    *len = *left;
    uint8_t *h = vs_gpa_to_host(&p->mem, *addr, len);
    if (!h) {
        vs_port_break(p, why[first ? 0 : 1]);
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
    vq->pub_used = vq->last_used;   /* where the dirty log's used entries start */
}

/* Publishes the used index; a port that logs its writes (migration) logs
 * the used entries and the index too (vs_log.c).  One predicted branch
 * when it does not. */
static inline void publish_used_logged(struct vs_port *p, struct vs_vring *vq)
{
    bool log = __builtin_expect(p->logging, 0) && vq->log_used;
    if (log)
        vs_log_used_entries(p, vq);
    publish_used(vq);
    if (log)
        vs_log_used_index(p, vq);
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
        vs_port_break(p, "avail ring names a head past the end of the descriptor table");
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
