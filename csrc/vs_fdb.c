/* The MAC table: (vlan, mac) -> port, open addressing with linear probing.
 *
 * The table stands alone: it knows ports only as numbers below
 * VS_MAX_PORTS, takes the time and a port's limit as arguments, and says
 * what a learn did (enum vs_learn) for the caller to count.  It keeps one
 * thing per port itself, how many dynamic entries the port owns, because
 * only the table sees an entry go (a flush, aging, an address moving away).
 * The switch's side of it, the vs_fdb_* calls of fastpath.h, is in
 * vs_switch.c; the poll thread's aging in vs_run.c.
 *
 * Capacity is at least twice the entry limit, so probes stay short and a
 * lookup never walks far.  Deletion shifts later entries back instead of
 * leaving tombstones, so a table that churns (aging, flushes, a guest
 * spraying source addresses) never degrades. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vs_internal.h"

static inline uint64_t fdb_key(uint64_t mac, uint16_t vlan)
{
    return FDB_USED | ((uint64_t)(vlan & VS_VLAN_MAX) << 48) | (mac & VS_MAC_MASK);
}

static inline uint32_t fdb_hash(const struct vs_fdb *fdb, uint64_t key)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ULL) >> 32) & fdb->mask;
}

int vs_fdb_init(struct vs_fdb *fdb, uint32_t max)
{
    if (max < 1 || max > VS_MAX_FDB_SIZE)
        return -EINVAL;
    uint32_t cap = 16;
    while (cap < 2 * max)
        cap <<= 1;
    memset(fdb, 0, sizeof(*fdb));
    fdb->slots = calloc(cap, sizeof(*fdb->slots));
    if (!fdb->slots)
        return -ENOMEM;
    fdb->mask = cap - 1;
    fdb->max = max;
    return 0;
}

void vs_fdb_destroy(struct vs_fdb *fdb)
{
    free(fdb->slots);
    memset(fdb, 0, sizeof(*fdb));
}

static struct fdb_slot *fdb_find(struct vs_fdb *fdb, uint64_t key)
{
    for (uint32_t i = fdb_hash(fdb, key);; i = (i + 1) & fdb->mask) {
        struct fdb_slot *s = &fdb->slots[i];
        if (s->key == key)
            return s;
        if (s->key == 0)
            return NULL;
    }
}

static struct fdb_slot *fdb_insert(struct vs_fdb *fdb, uint64_t key)
{
    if (fdb->count >= fdb->max)
        return NULL;
    uint32_t i = fdb_hash(fdb, key);
    while (fdb->slots[i].key != 0)
        i = (i + 1) & fdb->mask;
    fdb->count++;
    fdb->slots[i].key = key;
    return &fdb->slots[i];
}

/* Remove slot i, moving back any later entry of the same probe run that
 * would otherwise become unreachable. */
static void fdb_remove_at(struct vs_fdb *fdb, uint32_t i)
{
    if (!(fdb->slots[i].flags & VS_FDB_STATIC))
        fdb->owned[fdb->slots[i].port]--;
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & fdb->mask; fdb->slots[j].key != 0; j = (j + 1) & fdb->mask) {
        uint32_t home = fdb_hash(fdb, fdb->slots[j].key);
        /* j may move to hole unless its home lies cyclically in (hole, j]. */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            fdb->slots[hole] = fdb->slots[j];
            hole = j;
        }
    }
    memset(&fdb->slots[hole], 0, sizeof(fdb->slots[hole]));
    fdb->count--;
}

int64_t vs_fdb_lookup(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan)
{
    struct fdb_slot *s = fdb_find(fdb, fdb_key(mac, vlan));
    return s ? (int64_t)s->port : -1;
}

int64_t vs_fdb_lookup_at(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint16_t *remote)
{
    struct fdb_slot *s = fdb_find(fdb, fdb_key(mac, vlan));
    *remote = s ? s->remote : 0;
    return s ? (int64_t)s->port : -1;
}

static bool at_limit(const struct vs_fdb *fdb, uint32_t port, uint32_t limit)
{
    return limit != 0 && fdb->owned[port] >= limit;
}

enum vs_learn vs_fdb_learn(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t port,
                           uint32_t limit, uint32_t now)
{
    return vs_fdb_learn_at(fdb, mac, vlan, port, 0, limit, now);
}

enum vs_learn vs_fdb_learn_at(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t port,
                              uint16_t remote, uint32_t limit, uint32_t now)
{
    uint64_t key = fdb_key(mac, vlan);
    struct fdb_slot *s = fdb_find(fdb, key);
    if (s) {
        if (s->flags & VS_FDB_STATIC)
            return VS_LEARN_STATIC;
        enum vs_learn what = VS_LEARN_SEEN;
        if (s->port != port) {
            if (at_limit(fdb, port, limit))
                return VS_LEARN_LIMIT;
            fdb->owned[s->port]--;
            s->port = port;
            fdb->owned[port]++;
            what = VS_LEARN_MOVED;
        }
        if (s->remote != remote)
            s->remote = remote;
        /* Only write when it changes: the entry's line stays clean in
         * every core's cache while a station keeps talking. */
        if (s->seen != now)
            s->seen = now;
        return what;
    }
    if (at_limit(fdb, port, limit))
        return VS_LEARN_LIMIT;
    s = fdb_insert(fdb, key);
    if (!s)
        return VS_LEARN_FULL;
    s->port = port;
    s->seen = now;
    s->flags = 0;
    s->remote = remote;
    fdb->owned[port]++;
    return VS_LEARN_NEW;
}

int vs_fdb_put(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t port, bool is_static,
               uint32_t now)
{
    uint64_t key = fdb_key(mac, vlan);
    struct fdb_slot *s = fdb_find(fdb, key);
    if (s && !(s->flags & VS_FDB_STATIC))
        fdb->owned[s->port]--;
    if (!s)
        s = fdb_insert(fdb, key);
    if (!s)
        return -ENOSPC;
    if (!is_static)
        fdb->owned[port]++;
    s->port = port;
    s->seen = now;
    s->flags = is_static ? VS_FDB_STATIC : 0;
    s->remote = 0;
    return 0;
}

int vs_fdb_remove(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan)
{
    struct fdb_slot *s = fdb_find(fdb, fdb_key(mac, vlan));
    if (!s)
        return -ENOENT;
    fdb_remove_at(fdb, (uint32_t)(s - fdb->slots));
    return 0;
}

/* Remove every entry for which cond holds, cond seeing the entry as s.  A
 * removal may shift a later entry into slot i, so slot i is looked at again
 * before moving on. */
#define FDB_SWEEP(fdb, s, cond, counter)                                  \
    for (uint32_t i_ = 0; i_ <= (fdb)->mask;) {                           \
        struct fdb_slot *s = &(fdb)->slots[i_];                           \
        if (s->key != 0 && (cond)) {                                      \
            fdb_remove_at((fdb), i_);                                     \
            (counter)++;                                                  \
        } else {                                                          \
            i_++;                                                         \
        }                                                                 \
    }

uint32_t vs_fdb_remove_port(struct vs_fdb *fdb, int port, bool include_static)
{
    uint32_t n = 0;
    FDB_SWEEP(fdb, s,
              (port < 0 || s->port == (uint32_t)port) &&
                  (include_static || !(s->flags & VS_FDB_STATIC)),
              n);
    return n;
}

uint32_t vs_fdb_remove_port_vlans(struct vs_fdb *fdb, uint32_t port, const uint64_t *keep)
{
    uint32_t n = 0;
    FDB_SWEEP(fdb, s,
              s->port == port && !(keep[(s->key >> 48 & VS_VLAN_MAX) / 64] >>
                                       ((s->key >> 48 & VS_VLAN_MAX) % 64) & 1),
              n);
    return n;
}

uint32_t vs_fdb_remove_vlan(struct vs_fdb *fdb, int port, uint16_t vlan, bool include_static)
{
    uint32_t n = 0;
    FDB_SWEEP(fdb, s,
              (s->key >> 48 & VS_VLAN_MAX) == vlan && (port < 0 || s->port == (uint32_t)port) &&
                  (include_static || !(s->flags & VS_FDB_STATIC)),
              n);
    return n;
}

uint32_t vs_fdb_expire(struct vs_fdb *fdb, uint32_t now, uint32_t max_age)
{
    uint32_t n = 0;
    FDB_SWEEP(fdb, s, !(s->flags & VS_FDB_STATIC) && now - s->seen >= max_age, n);
    return n;
}

uint32_t vs_fdb_expire_some(struct vs_fdb *fdb, uint32_t now, uint32_t max_age, uint32_t n)
{
    uint32_t removed = 0, i = fdb->cursor & fdb->mask;
    for (uint32_t k = 0; k < n; k++) {
        struct fdb_slot *s = &fdb->slots[i];
        if (s->key != 0 && !(s->flags & VS_FDB_STATIC) && now - s->seen >= max_age) {
            /* A later entry may shift into slot i: look at it again. */
            fdb_remove_at(fdb, i);
            removed++;
            continue;
        }
        i = (i + 1) & fdb->mask;
    }
    fdb->cursor = i;
    return removed;
}

int vs_fdb_entry_of(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t now,
                    struct vs_fdb_entry *out)
{
    const struct fdb_slot *s = fdb_find(fdb, fdb_key(mac, vlan));
    if (!s)
        return -ENOENT;
    out->mac = s->key & VS_MAC_MASK;
    out->vlan = (uint16_t)((s->key >> 48) & VS_VLAN_MAX);
    out->port = s->port;
    out->flags = s->flags;
    out->age = now - s->seen;
    out->remote = s->remote;
    return 0;
}

uint32_t vs_fdb_read(const struct vs_fdb *fdb, uint32_t now, struct vs_fdb_entry *out,
                     uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i <= fdb->mask && n < max; i++) {
        const struct fdb_slot *s = &fdb->slots[i];
        if (s->key == 0)
            continue;
        out[n].mac = s->key & VS_MAC_MASK;
        out[n].vlan = (uint16_t)((s->key >> 48) & VS_VLAN_MAX);
        out[n].port = s->port;
        out[n].flags = s->flags;
        out[n].age = now - s->seen;
        out[n].remote = s->remote;
        n++;
    }
    return n;
}
