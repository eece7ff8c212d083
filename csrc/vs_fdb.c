/* The MAC table: (vlan, mac) -> port, open addressing with linear probing.
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

#define MAC_MASK 0xffffffffffffULL

static inline uint64_t fdb_key(uint64_t mac, uint16_t vlan)
{
    return FDB_USED | ((uint64_t)(vlan & 0xfff) << 48) | (mac & MAC_MASK);
}

static inline uint32_t fdb_hash(const struct vs_fdb *fdb, uint64_t key)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ULL) >> 32) & fdb->mask;
}

int vs_fdb_init(struct vs_fdb *fdb, uint32_t max)
{
    if (max < 1 || max > (1u << 24))
        return -EINVAL;
    uint32_t cap = 16;
    while (cap < 2 * max)
        cap <<= 1;
    fdb->slots = calloc(cap, sizeof(*fdb->slots));
    if (!fdb->slots)
        return -ENOMEM;
    fdb->mask = cap - 1;
    fdb->count = 0;
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
static void fdb_remove_at(struct vs_switch *sw, uint32_t i)
{
    struct vs_fdb *fdb = &sw->fdb;
    if (!(fdb->slots[i].flags & VS_FDB_STATIC))
        sw->ports[fdb->slots[i].port].st.fdb_count--;
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

static bool at_limit(struct vs_port *p)
{
    if (p->mac_limit == 0 || p->st.fdb_count < p->mac_limit)
        return false;
    p->st.fdb_limit++;
    return true;
}

void vs_fdb_learn(struct vs_switch *sw, uint64_t mac, uint16_t vlan, uint32_t port)
{
    struct vs_fdb *fdb = &sw->fdb;
    uint64_t key = fdb_key(mac, vlan);
    struct fdb_slot *s = fdb_find(fdb, key);
    if (s) {
        if (s->flags & VS_FDB_STATIC)
            return;
        if (s->port != port) {
            if (at_limit(&sw->ports[port]))
                return;
            sw->ports[s->port].st.fdb_count--;
            s->port = port;
            sw->ports[port].st.fdb_count++;
            sw->ports[port].st.fdb_moved++;
        }
        /* Only write when it changes: the entry's line stays clean in
         * every core's cache while a station keeps talking. */
        if (s->seen != sw->now)
            s->seen = sw->now;
        return;
    }
    if (at_limit(&sw->ports[port]))
        return;
    s = fdb_insert(fdb, key);
    if (!s) {
        sw->st.fdb_full++;
        return;
    }
    s->port = port;
    s->seen = sw->now;
    s->flags = 0;
    sw->ports[port].st.fdb_learned++;
    sw->ports[port].st.fdb_count++;
}

int vs_fdb_add(struct vs_switch *sw, uint64_t mac, uint16_t vlan, uint32_t port, int is_static)
{
    if (port >= VS_MAX_PORTS || vlan > 4095 || mac > MAC_MASK)
        return -EINVAL;
    if (!sw->ports[port].open)
        return -ENODEV;
    uint64_t key = fdb_key(mac, vlan);
    struct fdb_slot *s = fdb_find(&sw->fdb, key);
    if (s && !(s->flags & VS_FDB_STATIC))
        sw->ports[s->port].st.fdb_count--;
    if (!s)
        s = fdb_insert(&sw->fdb, key);
    if (!s)
        return -ENOSPC;
    if (!is_static)
        sw->ports[port].st.fdb_count++;
    s->port = port;
    s->seen = sw->now;
    s->flags = is_static ? VS_FDB_STATIC : 0;
    return 0;
}

int vs_fdb_del(struct vs_switch *sw, uint64_t mac, uint16_t vlan)
{
    struct fdb_slot *s = fdb_find(&sw->fdb, fdb_key(mac, vlan));
    if (!s)
        return -ENOENT;
    fdb_remove_at(sw, (uint32_t)(s - sw->fdb.slots));
    return 0;
}

/* Remove every entry pick() selects.  A removal may shift a later entry
 * into slot i, so slot i is looked at again before moving on. */
#define FDB_SWEEP(sw, s, cond, counter)                                   \
    for (uint32_t i_ = 0; i_ <= (sw)->fdb.mask;) {                        \
        struct fdb_slot *s = &(sw)->fdb.slots[i_];                        \
        if (s->key != 0 && (cond)) {                                      \
            fdb_remove_at((sw), i_);                                      \
            (counter)++;                                                  \
        } else {                                                          \
            i_++;                                                         \
        }                                                                 \
    }

uint32_t vs_fdb_flush(struct vs_switch *sw, int port, int include_static)
{
    uint32_t n = 0;
    FDB_SWEEP(sw, s,
              (port < 0 || s->port == (uint32_t)port) &&
                  (include_static || !(s->flags & VS_FDB_STATIC)),
              n);
    return n;
}

uint32_t vs_fdb_age(struct vs_switch *sw, uint32_t max_age)
{
    uint32_t n = 0;
    vs_tick(sw);
    uint32_t now = sw->now;
    FDB_SWEEP(sw, s, !(s->flags & VS_FDB_STATIC) && now - s->seen >= max_age, n);
    sw->st.fdb_aged += n;
    return n;
}

void vs_fdb_set_max_age(struct vs_switch *sw, uint32_t max_age)
{
    if (__atomic_exchange_n(&sw->fdb.max_age, max_age, __ATOMIC_RELAXED) == max_age)
        return;
    /* A thread asleep with no timeout must look again at how long to sleep. */
    vs_run_wake(sw);
}

uint32_t vs_fdb_age_some(struct vs_switch *sw, uint32_t max_age, uint32_t n)
{
    struct vs_fdb *fdb = &sw->fdb;
    uint32_t removed = 0, i = fdb->cursor & fdb->mask;
    for (uint32_t k = 0; k < n; k++) {
        struct fdb_slot *s = &fdb->slots[i];
        if (s->key != 0 && !(s->flags & VS_FDB_STATIC) && sw->now - s->seen >= max_age) {
            /* A later entry may shift into slot i: look at it again. */
            fdb_remove_at(sw, i);
            removed++;
            continue;
        }
        i = (i + 1) & fdb->mask;
    }
    fdb->cursor = i;
    sw->st.fdb_aged += removed;
    return removed;
}

uint32_t vs_fdb_dump(struct vs_switch *sw, struct vs_fdb_entry *out, uint32_t max)
{
    uint32_t n = 0;
    vs_tick(sw);
    for (uint32_t i = 0; i <= sw->fdb.mask && n < max; i++) {
        const struct fdb_slot *s = &sw->fdb.slots[i];
        if (s->key == 0)
            continue;
        out[n].mac = s->key & MAC_MASK;
        out[n].vlan = (uint16_t)((s->key >> 48) & 0xfff);
        out[n].port = s->port;
        out[n].flags = s->flags;
        out[n].age = sw->now - s->seen;
        n++;
    }
    return n;
}
