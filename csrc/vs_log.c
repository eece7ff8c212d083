/* Dirty logging for live migration (vhost-user LOG_SHMFD, VHOST_F_LOG_ALL).
 *
 * While QEMU migrates a guest it copies its RAM in passes and re-sends the
 * pages written since; the switch writes guest memory behind QEMU's back
 * (RX buffers, used rings), so it tells QEMU which pages it wrote: one bit
 * per VS_LOG_PAGE of guest-physical memory, in a shared file QEMU hands over
 * with SET_LOG_BASE.  Marking itself is inline (vs_internal.h), in the RX
 * and used-ring paths; this file maps the log and decides when to log. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "vs_internal.h"

void vs_log_refresh(struct vs_port *p)
{
    p->logging = (p->features & (1ULL << VS_F_LOG_ALL)) && p->log != NULL && !p->sw->no_log;
}

void vs_log_unmap(struct vs_port *p)
{
    if (p->log_map)
        munmap(p->log_map, p->log_map_len);
    p->log_map = NULL;
    p->log_map_len = 0;
    p->log = NULL;
    p->log_size = 0;
    vs_log_refresh(p);
}

int vs_port_set_log(struct vs_switch *sw, uint32_t port, int fd, uint64_t size, uint64_t offset)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || p->kind != VS_PORT_VHOST)
        return -ENODEV;
    if (fd < 0) {
        vs_log_unmap(p);
        return 0;
    }
    if (size == 0 || offset + size < offset || size > SIZE_MAX)
        return -EINVAL;
    /* QEMU's log is a memfd sealed against shrinking (vhost_log_alloc).  A
     * log that could be truncated would fault the switch at a write in the
     * poll thread, outside any guest's memory: refuse it. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return -EPERM;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < offset + size)
        return -EINVAL;
    /* Exactly size bytes at offset: mmap wants a page-aligned offset, so the
     * mapping starts at the page holding it, and only [offset, offset+size)
     * is ever touched (the file may end right there). */
    uint64_t start = offset & ~(uint64_t)(VS_LOG_PAGE - 1);
    size_t len = (size_t)(offset + size - start);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)start);
    if (m == MAP_FAILED)
        return -errno;
    /* The new log replaces the old one at once: QEMU syncs the old one
     * before it sends a new base (vhost_dev_log_resize). */
    vs_log_unmap(p);
    p->log_map = m;
    p->log_map_len = len;
    p->log = (uint8_t *)m + (offset - start);
    p->log_size = size;
    vs_log_refresh(p);
    return 0;
}

int vs_port_logging(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    return p && p->logging;
}

int vs_vring_set_log(struct vs_switch *sw, uint32_t port, uint32_t q, int enabled,
                     uint64_t log_guest_addr)
{
    struct vs_port *p;
    struct vs_vring *vq = vs_vring_get(sw, port, q, &p);
    if (!vq)
        return -EINVAL;
    vq->log_used = enabled != 0;
    vq->log_gpa = log_guest_addr;
    return 0;
}

void vs_log_used_at(struct vs_port *p, struct vs_vring *vq, uint64_t off, uint64_t len)
{
    if (!vq->log_used)
        return;
    vs_log_fence();
    vs_log_write(p, vq->log_gpa + off, len);
}

void vs_log_used_entries(struct vs_port *p, struct vs_vring *vq)
{
    uint16_t n = (uint16_t)(vq->last_used - vq->pub_used);
    const uint64_t elem = sizeof(struct vring_used_elem);
    const uint64_t ring = offsetof(struct vring_used, ring);
    if (n > vq->num)
        n = (uint16_t)vq->num;  /* never more than the whole ring */
    uint32_t from = vq->pub_used & (vq->num - 1);
    uint32_t first = n < vq->num - from ? n : vq->num - from;
    /* The entries are written: their bits go before the index that hands
     * them over (vhost-user.rst, "Migration"). */
    vs_log_fence();
    vs_log_write(p, vq->log_gpa + ring + from * elem, first * elem);
    if (n > first)
        vs_log_write(p, vq->log_gpa + ring, (n - first) * elem);
}

void vs_log_used_index(struct vs_port *p, struct vs_vring *vq)
{
    /* The index is marked after it is stored, as any write is: marked
     * before, QEMU could copy the page in between and clear the bit. */
    vs_log_fence();
    vs_log_write(p, vq->log_gpa + offsetof(struct vring_used, idx), sizeof(uint16_t));
}

void vs_debug_no_log(struct vs_switch *sw, int off)
{
    sw->no_log = off != 0;
    for (uint32_t k = 0; k < sw->nopen; k++)
        vs_log_refresh(&sw->ports[sw->open_ids[k]]);
}
