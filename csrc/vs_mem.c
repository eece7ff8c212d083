/* Guest memory: mapping the front end's memory table and translating
 * guest-physical (descriptor) and front-end virtual (ring) addresses. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "vs_internal.h"

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

static int check_table(const struct vs_mem_region *rg, uint32_t n)
{
    if (n == 0 || n > VS_MAX_MEM_REGIONS)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        const struct vs_mem_region *a = &rg[i];
        if (a->size == 0 || a->fd < 0)
            return -EINVAL;
        if (a->guest_phys_addr + a->size < a->guest_phys_addr ||
            a->user_addr + a->size < a->user_addr ||
            a->mmap_offset + a->size < a->mmap_offset)
            return -EOVERFLOW;
        for (uint32_t j = 0; j < i; j++) {
            const struct vs_mem_region *b = &rg[j];
            if (ranges_overlap(a->guest_phys_addr, a->size, b->guest_phys_addr, b->size) ||
                ranges_overlap(a->user_addr, a->size, b->user_addr, b->size))
                return -EINVAL;
        }
    }
    return 0;
}

static int map_region(struct vs_region *r, const struct vs_mem_region *in)
{
    /* A file that can still be sealed against shrinking but is not could be
     * truncated under us at any time: refuse it (QEMU's memory-backend-memfd
     * seals its files, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL, seal=on by
     * default).  A file that cannot be sealed (F_SEAL_SEAL set from the
     * start: hugetlbfs and tmpfs files, a memfd made without
     * MFD_ALLOW_SEALING, as DPDK's and QEMU's with seal=off; or no seals at
     * all, EINVAL) is mapped: a fault in it breaks only its port (vs_peer.c).
     * Seals first, then the size: once F_SEAL_SHRINK is seen, the size
     * cannot drop below what fstat reads next. */
    int seals = fcntl(in->fd, F_GET_SEALS);
    if (seals >= 0 && !(seals & (F_SEAL_SEAL | F_SEAL_SHRINK)))
        return -EPERM;
    struct stat st;
    if (fstat(in->fd, &st) < 0)
        return -errno;
    /* Touching a page past the end of the file would raise SIGBUS in the
     * switch: refuse a region the file does not back. */
    uint64_t end = in->mmap_offset + in->size;
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < end)
        return -EINVAL;
    /* Map the region's own pages only (not the file from its start, which
     * for a guest whose RAM is one file split into several regions would
     * map most of it again per region).  hugetlbfs wants whole huge pages;
     * st_blksize is the page size there. */
    uint64_t align = st.st_blksize > 0 ? (uint64_t)st.st_blksize : 4096;
    if (align & (align - 1))
        return -EINVAL;
    uint64_t start = in->mmap_offset & ~(align - 1);
    uint64_t stop = (end + align - 1) & ~(align - 1);
    if (stop < end || stop - start > SIZE_MAX)
        return -EOVERFLOW;
    size_t len = (size_t)(stop - start);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, in->fd, (off_t)start);
    if (m == MAP_FAILED)
        return -errno;
    r->gpa = in->guest_phys_addr;
    r->size = in->size;
    r->uaddr = in->user_addr;
    r->map = m;
    r->map_len = len;
    r->host = (uint8_t *)m + (in->mmap_offset - start);
    return 0;
}

/* Keeps the table sorted by guest-physical address: vs_gpa_to_host's
 * binary search depends on it. */
static void sort_regions(struct vs_mem *mem)
{
    for (uint32_t i = 1; i < mem->n; i++) {
        struct vs_region r = mem->r[i];
        uint32_t j = i;
        for (; j > 0 && mem->r[j - 1].gpa > r.gpa; j--)
            mem->r[j] = mem->r[j - 1];
        mem->r[j] = r;
    }
}

int vs_mem_add(struct vs_mem *mem, const struct vs_mem_region *in)
{
    if (in->size == 0 || in->fd < 0)
        return -EINVAL;
    if (in->guest_phys_addr + in->size < in->guest_phys_addr ||
        in->user_addr + in->size < in->user_addr || in->mmap_offset + in->size < in->mmap_offset)
        return -EOVERFLOW;
    for (uint32_t i = 0; i < mem->n; i++) {
        const struct vs_region *b = &mem->r[i];
        if (b->gpa == in->guest_phys_addr && b->size == in->size && b->uaddr == in->user_addr)
            return -EEXIST;
        if (ranges_overlap(in->guest_phys_addr, in->size, b->gpa, b->size) ||
            ranges_overlap(in->user_addr, in->size, b->uaddr, b->size))
            return -EINVAL;
    }
    if (mem->n >= VS_MAX_MEM_REGIONS)
        return -ENOSPC;
    int rc = map_region(&mem->r[mem->n], in);
    if (rc < 0)
        return rc;
    mem->n++;
    sort_regions(mem);
    mem->hint = 0;
    return 0;
}

int vs_mem_remove(struct vs_mem *mem, const struct vs_mem_region *in, struct vs_region *out)
{
    for (uint32_t i = 0; i < mem->n; i++) {
        const struct vs_region *r = &mem->r[i];
        if (r->gpa != in->guest_phys_addr || r->size != in->size || r->uaddr != in->user_addr)
            continue;
        *out = *r;
        memmove(&mem->r[i], &mem->r[i + 1], (mem->n - i - 1) * sizeof(mem->r[0]));
        mem->n--;
        memset(&mem->r[mem->n], 0, sizeof(mem->r[0]));
        mem->hint = 0;
        return 0;
    }
    return -ENOENT;
}

void vs_region_unmap(struct vs_region *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    memset(r, 0, sizeof(*r));
}

int vs_mem_map(struct vs_mem *mem, const struct vs_mem_region *regions, uint32_t n)
{
    int rc = check_table(regions, n);
    if (rc < 0)
        return rc;
    struct vs_mem fresh = {0};
    for (uint32_t i = 0; i < n; i++) {
        rc = map_region(&fresh.r[i], &regions[i]);
        if (rc < 0) {
            vs_mem_unmap(&fresh);
            return rc;
        }
        fresh.n = i + 1;
    }
    sort_regions(&fresh);
    *mem = fresh;
    return 0;
}

void vs_mem_unmap(struct vs_mem *mem)
{
    for (uint32_t i = 0; i < mem->n; i++)
        munmap(mem->r[i].map, mem->r[i].map_len);
    memset(mem, 0, sizeof(*mem));
}

void *vs_uaddr_to_host(const struct vs_mem *mem, uint64_t ua, uint64_t len)
{
    for (uint32_t i = 0; i < mem->n; i++) {
        const struct vs_region *r = &mem->r[i];
        uint64_t off = ua - r->uaddr;
        if (ua >= r->uaddr && off < r->size && len <= r->size - off)
            return r->host + off;
    }
    return NULL;
}
