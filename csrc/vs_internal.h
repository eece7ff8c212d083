/* vswitch fast path internals: shared by the vs_*.c files, never by Python. */
#ifndef VS_INTERNAL_H
#define VS_INTERNAL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "fastpath.h"

_Static_assert(VS_MAX_QUEUES % VS_QUEUES_PER_PAIR == 0, "queues come in pairs");

/* Is queue q one the guest receives on (the switch fills it), rather than
 * one it sends on? */
static inline bool vs_queue_is_rx(uint32_t q)
{
    return q % VS_QUEUES_PER_PAIR == VS_QUEUE_RX;
}

/* Split virtqueue layout (virtio 1.2, 2.7). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];        /* then used_event (EVENT_IDX) */
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vring_used_elem ring[];  /* then avail_event (EVENT_IDX) */
};

/* virtio-net header (virtio 1.2, 5.1.6); num_buffers only with
 * MRG_RXBUF or VERSION_1. */
struct virtio_net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};

/* A frame in flight, referenced where it lies (copy once, guest to guest).
 *
 * The first VS_ETH_HDR bytes are read once into eth: forwarding decides on
 * that copy, and it is what every egress port receives, so a guest that
 * rewrites its buffer mid-burst cannot make the switch's decision and the
 * delivered header disagree.  The rest of the frame stays in the ingress
 * port's memory (seg), which stays valid until that port's used index is
 * published after the burst (vs_vring_complete).  A chain with more spans
 * than seg holds, and every TAP frame, is copied into buf, the slot's own
 * buffer, sized for the largest MTU plus an Ethernet header and a VLAN tag. */
#define VS_ETH_HDR 14
#define VS_VLAN_MAX 4095    /* a 12-bit VLAN ID */
#define VS_PKT_SEGS 8
#define VS_FRAME_MAX (VS_MAX_MTU + 18)
#define VS_PKT_SIZE 9216
_Static_assert(VS_FRAME_MAX + 12 <= VS_PKT_SIZE, "packet buffer too small for the largest frame");

struct vs_seg {
    const uint8_t *p;
    uint32_t len;
};

struct vs_pkt {
    uint32_t len;                   /* whole frame, eth included, no virtio-net header */
    uint32_t nseg;
    uint8_t eth[VS_ETH_HDR];
    /* Its VLAN (0 on ports that are not VLAN-aware) and, from a trunk, the
     * priority and DEI bits of its tag (vs_vlan.c). */
    uint16_t vlan;
    uint16_t pcp_dei;
    /* The len - VS_ETH_HDR bytes after eth.  Frames are taken with at most
     * VS_PKT_SEGS; the one more is for the 802.1Q tag that a trunk's view of
     * the frame puts in front (vs_vlan_tagged). */
    struct vs_seg seg[VS_PKT_SEGS + 1];
    uint8_t *buf;                   /* VS_PKT_SIZE bytes owned by this slot */
    /* VXLAN ports (vs_vxlan.c): the remote a frame came from (1 + index,
     * set by the VXLAN dequeue), and the one remote of port tx_port that
     * forwarding found it is for (0: every remote, a flooded frame). */
    uint16_t rx_remote;
    uint16_t tx_remote;
    uint32_t tx_port;
};

/* Guest memory: one mapping per region of the front end's table. */
struct vs_region {
    uint64_t gpa;
    uint64_t size;
    uint64_t uaddr;
    uint8_t *host;          /* host address of gpa */
    void *map;
    size_t map_len;
};

struct vs_mem {
    uint32_t n;
    uint32_t hint;          /* the region the last lookup found (a guess, checked) */
    struct vs_region r[VS_MAX_MEM_REGIONS];
};

struct vs_vring {
    uint32_t num;
    uint64_t packets;       /* frames the ring carried (vs_queue_stats) */
    uint64_t bytes;
    bool addr_set;
    uint64_t desc_ua, avail_ua, used_ua;
    struct vring_desc *desc;        /* NULL until translated */
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t last_avail;
    uint16_t last_used;
    uint16_t signalled_used;
    bool signalled_valid;
    int kick_fd;
    int call_fd;
    bool started;
    bool enabled;
    bool ready;
    /* A TX ring started but disabled (SET_VRING_ENABLE 0): vhost-user.rst
     * has the back end process and discard its packets, so it is served
     * and every frame dropped (rx_drop_disabled).  Never set with ready. */
    bool drain;
    bool kicks_off;         /* we set NO_NOTIFY and nobody cleared it since */
    /* Dirty logging of the used ring (SET_VRING_ADDR with VHOST_VRING_F_LOG):
     * its guest-physical address, and the used index last published, from
     * which the entries written since are logged before the next publish. */
    bool log_used;
    uint64_t log_gpa;
    uint16_t pub_used;
    bool signal_due;        /* listed in sw->signal: published, interrupt not yet decided */
};

/* A writable span of guest memory, already translated. */
struct vs_iov {
    uint8_t *p;
    uint32_t len;
};
#define VS_MAX_IOV 256

/* A single-producer, single-consumer byte ring of capture records. */
struct vs_capture {
    uint8_t *buf;
    uint32_t size;          /* a power of two */
    uint32_t dirs;
    uint32_t snaplen;
    uint32_t filter_len;    /* instructions in filter; 0 = every frame */
    struct vs_bpf_insn *filter; /* checked by vs_capture_set_filter */
    uint64_t head;          /* written by the fast path */
    uint64_t tail;          /* written by the reader */
};

struct vs_switch;

struct vs_port {
    bool open;
    uint32_t id;
    struct vs_switch *sw;   /* the switch it belongs to (fault guards, peer I/O) */
    uint32_t kind;
    uint32_t mtu;
    uint32_t mac_limit;
    int fd;                 /* TAP ports; VXLAN ports: the UDP socket */
    struct vs_vxlan *vx;    /* VXLAN ports (vs_vxlan.c) */
    struct vs_capture *cap;
    uint64_t features;
    uint32_t hdr_len;
    bool mrg_rxbuf;
    bool event_idx;
    bool indirect;
    bool broken;
    const char *error;
    char errbuf[160];       /* error, when it is built at run time (vs_guard_fault) */
    struct vs_mem mem;
    /* 802.1Q (vs_vlan.c): an access port of vlan (0: not VLAN-aware, frames
     * pass untouched, as on a switch without VLANs), or a trunk carrying the
     * VLANs in trunk_set tagged and native (0: none) untagged. */
    bool trunk;
    uint16_t vlan;
    uint16_t native;
    uint64_t trunk_set[(VS_VLAN_MAX + 1) / 64];
    /* The dirty log (vs_log.c): logging is LOG_ALL negotiated with a log
     * mapped (and not switched off for a test), the one flag the hot path
     * looks at. */
    bool logging;
    uint8_t *log;
    uint64_t log_size;
    void *log_map;
    size_t log_map_len;
    struct vs_vring vq[VS_MAX_QUEUES];
    /* Multiqueue: the RX rings ready now, in pair order (vs_port_count_queues);
     * a frame goes to rxq[flow hash % nrxq]. */
    uint32_t nrxq;
    uint8_t rxq[VS_MAX_QUEUES / VS_QUEUES_PER_PAIR];
    struct vs_port_stats st;
    /* Mirrors (vs_port_set_mirror): the ports that get a copy of the frames
     * the switch takes from this one (mir[0]) and of those it forwards to it
     * (mir[1]), a bit per port; mirrored has bit VS_MIRROR_RX when mir[0]
     * has any, VS_MIRROR_TX for mir[1].  mir_want: while a burst is
     * forwarded, the frames (bits by index in the burst) to copy to this
     * port. */
    uint64_t mir[2][VS_MAX_PORTS / 64];
    uint32_t mirrored;
    uint32_t mir_want;
    /* Frames queued for this port during one burst (Snabb's link). */
    uint32_t npending;
    struct vs_pkt *pending[VS_BURST];
    /* Scratch for one RX enqueue: the spans of the buffers a frame fills,
     * their heads, and where each head's spans end. */
    struct vs_iov iov[VS_MAX_IOV];
    uint16_t heads[VS_MAX_IOV];
    uint32_t ends[VS_MAX_IOV];
    uint64_t iov_gpa[VS_MAX_IOV];   /* guest-physical address of each span, for the log */
};

/* The MAC table (vs_fdb.c). */
#define VS_MAC_MASK 0xffffffffffffULL   /* a 48-bit address */

struct fdb_slot {
    uint64_t key;           /* 0 = empty; else FDB_USED | vlan << 48 | mac */
    uint32_t port;
    uint32_t seen;
    uint16_t flags;
    uint16_t remote;        /* VXLAN ports: 1 + the remote's index, 0 = none */
};
#define FDB_USED (1ULL << 63)

struct vs_fdb {
    struct fdb_slot *slots;
    uint32_t mask;          /* capacity - 1, capacity a power of two */
    uint32_t count;
    uint32_t max;
    uint32_t cursor;        /* where vs_fdb_expire_some goes on */
    uint32_t owned[VS_MAX_PORTS];   /* dynamic entries of each port */
};

/* What vs_fdb_learn did with a source address. */
enum vs_learn {
    VS_LEARN_SEEN,          /* already there for this port: its age starts again */
    VS_LEARN_NEW,           /* added */
    VS_LEARN_MOVED,         /* was another port's: now this port's */
    VS_LEARN_STATIC,        /* a static entry: left as it is */
    VS_LEARN_LIMIT,         /* not learned: the port owns as many as its limit */
    VS_LEARN_FULL,          /* not learned: the table is full */
};

/* vs_run.c: the poll thread's state.  Fields other threads read or write
 * (the pauser, the watchdog) are accessed with __atomic builtins. */
struct vs_runner {
    int epfd;
    int ctl_fd;             /* wakes the loop: pause, resume, stop */
    int ack_fd;             /* the loop is parked */
    int pause_req;
    uint32_t pause_seq;     /* one per vs_run_pause */
    uint32_t resume_seq;    /* one per resume, and per pause withdrawn */
    uint64_t parked;        /* pause_seq << 32 | resume_seq of the park under way */
    int stop_req;
    bool running;
    uint32_t polled;        /* TX rings with no kick eventfd: woken for by a timer */
    uint32_t max_age;       /* MAC table aging, 0 = none (atomic: vs_fdb_set_max_age) */
    /* What the watchdog looks at (vs_run_pause): */
    pid_t tid;              /* the poll thread's */
    clockid_t cpu_clock;    /* its CPU-time clock */
    uint64_t beat;          /* poll loops so far */
    int32_t serving;        /* the port it serves now, or -1 */
    int32_t wedged;         /* a port the watchdog found it stuck in: to break, or -1 */
    int32_t stall_port;     /* vs_debug_stall: spin once in this port (tests), or -1 */
    uint32_t stall_ms;
};

/* vs_peer.c: a system call on a descriptor a peer shares with us (its
 * eventfds), watched so the watchdog can interrupt one that blocks.  seq is
 * odd while a call is under way; thread and port say whose. */
struct vs_peer_io {
    uint64_t seq;
    uint64_t seen;          /* the watchdog's last look at seq */
    pid_t tid;
    uint32_t port;
};

/* vs_peer.c: recovery from a fault in guest memory (SIGBUS: the front end
 * truncated a file it had handed over).  Code that touches guest memory runs
 * between vs_guard_enter and vs_guard_leave, after a sigsetjmp(env, 0) that
 * the handler jumps back to when the faulting address lies in a mapping of
 * one of the switch's ports; that port is then broken (vs_guard_fault) and
 * never touched again, so each fault costs one port.  A fault anywhere else
 * is left to the handler that was there before (the process dies as it
 * would have).  env is saved without the signal mask (no syscall): the
 * handler runs with SA_NODEFER, so nothing is left blocked after the jump. */
struct vs_guard {
    sigjmp_buf env;
    struct vs_switch *sw;
    struct vs_guard *outer;
    volatile int32_t fault_port;
    volatile uintptr_t fault_addr;
    volatile uint32_t faults;   /* recoveries through this guard */
};

struct vs_switch {
    struct vs_fdb fdb;
    struct vs_switch_stats st;
    uint32_t now;                   /* coarse seconds, refreshed per burst */
    uint32_t nopen;
    uint32_t open_ids[VS_MAX_PORTS];
    uint32_t ndirty;                /* ports with pending frames this burst */
    uint32_t dirty[VS_MAX_PORTS];
    uint32_t mirroring;             /* ports some port mirrors: 0 = mirroring costs nothing */
    uint32_t nmir;                  /* mirror ports with copies due this burst (mir_want) */
    uint32_t mir_due[VS_MAX_PORTS];
    uint32_t nsignal;               /* rings with signal_due: port * VS_MAX_QUEUES + queue */
    uint32_t signal[VS_MAX_PORTS * VS_MAX_QUEUES];
    struct vs_runner run;
    struct vs_peer_io io;       /* the data path's (poll thread, or kicks from the loop) */
    struct vs_peer_io io_ctl;   /* vs_efd_signal's: the control plane runs beside the thread */
    /* Chains taken from the TX ring of the port being served (run.serving)
     * and not given back yet: a fault in another port's memory while they
     * are forwarded gives them back (vs_forward_recover). */
    uint32_t flight;
    uint32_t flight_q;      /* the TX ring those chains came from */
    /* The burst's frames as a trunk gets them, with their tag (vs_vlan.c):
     * made when a first port needs one (bit i of tagged_made), for this
     * burst only; tag[i] holds the tag and the frame's own ethertype. */
    struct vs_pkt *burst;   /* the frames vs_forward is forwarding: sw->pkts, or a part */
    uint32_t tagged_made;
    struct vs_pkt tagged[VS_BURST];
    uint8_t tag[VS_BURST][4];
    /* Frames dropped per VLAN: not allowed on the trunk they came from, or
     * tagged on an access port (by the tag's VLAN). */
    uint64_t vlan_not_allowed[VS_VLAN_MAX + 1];
    uint64_t vlan_tagged[VS_VLAN_MAX + 1];
    bool no_log;                /* vs_debug_no_log: tests only */
    struct vs_pkt pkts[VS_BURST];
    uint8_t bufs[VS_BURST][VS_PKT_SIZE];    /* pkts[i].buf, or another slot's after a swap */
    struct vs_port ports[VS_MAX_PORTS];
};

/* Marks a port broken: its rings stop until the control plane resets it.
 * Only state, no call: every layer may break a port. */
static inline void vs_port_break(struct vs_port *p, const char *why)
{
    if (!p->broken) {
        p->broken = true;
        p->error = why;
        p->st.ring_errors++;
    }
    for (int q = 0; q < VS_MAX_QUEUES; q++)
        p->vq[q].ready = p->vq[q].drain = false;
    p->nrxq = 0;
}

/* The open port with this number, or NULL: every call of the API that names
 * a port goes through here first. */
static inline struct vs_port *vs_port_get(struct vs_switch *sw, uint32_t port)
{
    if (port >= VS_MAX_PORTS || !sw->ports[port].open)
        return NULL;
    return &sw->ports[port];
}

/* Ring q of an open port, and the port in *pp; NULL if either does not exist. */
static inline struct vs_vring *vs_vring_get(struct vs_switch *sw, uint32_t port, uint32_t q,
                                            struct vs_port **pp)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || q >= VS_MAX_QUEUES)
        return NULL;
    *pp = p;
    return &p->vq[q];
}

/* Refreshes sw->now, the coarse seconds the MAC table's ages count in. */
static inline void vs_tick(struct vs_switch *sw)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    sw->now = (uint32_t)ts.tv_sec;
}

/* Loads and stores on memory the guest shares with us: each field is read
 * once into a local so a racing guest cannot change it between check and use. */
#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

/* vs_mem.c */
int vs_mem_map(struct vs_mem *mem, const struct vs_mem_region *regions, uint32_t n);
void vs_mem_unmap(struct vs_mem *mem);
/* Host pointer for a front-end virtual range that must lie in one region. */
void *vs_uaddr_to_host(const struct vs_mem *mem, uint64_t ua, uint64_t len);

/* Host pointer for [gpa, gpa+*len) clipped to one region: *len is reduced to
 * what is contiguous.  NULL if gpa is in no region.  Inline: every
 * descriptor of every frame goes through here.  The table is sorted by gpa
 * and never overlaps (vs_mem.c), so the region is the last one starting at
 * or below gpa: a binary search, no step at all for a one-region guest, six
 * for the most a port may have (hotplugged DIMMs), after a look at the
 * region the last lookup found. */
static inline uint8_t *vs_gpa_to_host(struct vs_mem *mem, uint64_t gpa, uint64_t *len)
{
    uint32_t lo = mem->hint, hi = mem->n;
    if (hi == 0)
        return NULL;
    /* Buffers of one burst mostly lie in one region: the last one found is
     * tried first (lo < n always: the table never shrinks under a lookup,
     * and a removal resets the hint). */
    const struct vs_region *r = &mem->r[lo];
    uint64_t off = gpa - r->gpa;
    if (__builtin_expect(!(gpa >= r->gpa && off < r->size), 0)) {
        lo = 0;
        while (hi - lo > 1) {
            uint32_t mid = (lo + hi) / 2;
            if (mem->r[mid].gpa <= gpa)
                lo = mid;
            else
                hi = mid;
        }
        r = &mem->r[lo];
        off = gpa - r->gpa;
        if (!(gpa >= r->gpa && off < r->size))
            return NULL;
        mem->hint = lo;
    }
    uint64_t room = r->size - off;
    if (*len > room)
        *len = room;
    return r->host + off;
}

/* vs_mem.c: hotplug.  The table stays sorted; a removed region's mapping
 * goes to *out for the caller to unmap once no ring uses it. */
int vs_mem_add(struct vs_mem *mem, const struct vs_mem_region *in);
int vs_mem_remove(struct vs_mem *mem, const struct vs_mem_region *in, struct vs_region *out);
void vs_region_unmap(struct vs_region *r);

/* vs_log.c: dirty logging.  Sets the bit of every page of [gpa, gpa+len).
 * The caller has made its writes to those pages visible first (a full
 * fence, vs_log_fence): the bit is then looked at before it is set, since
 * QEMU clears bits (atomically) before it copies their pages, and a bit we
 * see set after our writes are visible is one whose page QEMU has not
 * copied yet.  Setting only bits that are clear keeps the log's lines from
 * bouncing between the switch and QEMU (DPDK's per-burst log cache, for the
 * same reason), and each page is marked, never the whole byte of eight
 * (DPDK 394313fff3: that made busy guests' migrations never converge). */
static inline void vs_log_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void vs_log_write(struct vs_port *p, uint64_t gpa, uint64_t len)
{
    if (len == 0)
        return;
    uint64_t page = gpa / VS_LOG_PAGE, last = (gpa + len - 1) / VS_LOG_PAGE;
    if (gpa + len - 1 < gpa)
        last = UINT64_MAX / VS_LOG_PAGE;
    for (;; page++) {
        uint64_t byte = page / 8;
        uint8_t bit = (uint8_t)(1u << (page % 8));
        if (__builtin_expect(byte >= p->log_size, 0)) {
            /* The front end sized its log for less memory than it gave us. */
            p->st.log_overflow++;
            return;
        }
        uint8_t *b = p->log + byte;
        if (!(__atomic_load_n(b, __ATOMIC_RELAXED) & bit)) {
            uint8_t old = __atomic_fetch_or(b, bit, __ATOMIC_RELAXED);
            if (!(old & bit))
                p->st.log_pages++;
        }
        if (page == last)
            return;
    }
}

/* Around the store that publishes a used index of a ring that logs its used
 * ring (VHOST_VRING_F_LOG, on a logging port): the entries written since
 * the last publish are logged before it, the index after it (vs_ring.h,
 * publish_used_logged). */
void vs_log_used_entries(struct vs_port *p, struct vs_vring *vq);
void vs_log_used_index(struct vs_port *p, struct vs_vring *vq);
/* Logs a write of len bytes at offset off of the used ring (flags, avail_event). */
void vs_log_used_at(struct vs_port *p, struct vs_vring *vq, uint64_t off, uint64_t len);
/* Works out p->logging after a change to the features, the log or the knob. */
void vs_log_refresh(struct vs_port *p);
void vs_log_unmap(struct vs_port *p);

/* vs_vring.c: ring setup, notifications, kick suppression. */
void vs_vring_init(struct vs_vring *vq);
int vs_vring_translate(struct vs_port *p, struct vs_vring *vq);
void vs_vring_signal(struct vs_port *p, struct vs_vring *vq);
void vs_vring_enable_kicks(struct vs_port *p, struct vs_vring *vq, bool on);

/* vs_vring_tx.c: frames the guest sends.  Up to max frames are referenced
 * in pkts (their chains' used entries written, not yet published);
 * *consumed counts every chain taken, dropped frames included, and *descs
 * their descriptors.  No chain is started once descs reaches desc_budget
 * (the first always is), so a call reads at most desc_budget +
 * VS_FRAME_MAX_DESCS descriptors.  The frames stay valid until
 * vs_vring_complete publishes the used index. */
int vs_vring_dequeue(struct vs_port *p, struct vs_vring *vq, struct vs_pkt *pkts, uint32_t max,
                     uint32_t desc_budget, uint32_t *consumed, uint32_t *descs);
bool vs_vring_complete(struct vs_port *p, struct vs_vring *vq, uint32_t consumed);

/* vs_vring_rx.c: frames the guest receives (the used index published when
 * any were). */
uint32_t vs_vring_enqueue(struct vs_port *p, struct vs_vring *vq, struct vs_pkt **pkts, uint32_t n);

/* vs_run.c */
int vs_run_init(struct vs_switch *sw);
void vs_run_destroy(struct vs_switch *sw);

/* vs_peer.c */
void vs_peer_init(void);
/* Takes an eventfd's count without blocking, whatever the file's flags (the
 * front end shares the open file description and can clear O_NONBLOCK):
 * true if there was one. */
bool vs_efd_take(struct vs_switch *sw, uint32_t port, int fd);
/* Adds 1 without blocking: 1 if added, 0 if the counter is full (the peer
 * is signalled already), -EINTR if the watchdog had to interrupt the write,
 * another -errno if the write failed. */
int vs_efd_give(struct vs_switch *sw, uint32_t port, int fd);
void vs_guard_enter(struct vs_guard *g, struct vs_switch *sw);
void vs_guard_leave(struct vs_guard *g);
/* After the jump: breaks the port that faulted, with the address in its error. */
void vs_guard_fault(struct vs_guard *g);

/* vs_forward.c: forwarding, a burst at a time. */
/* Forwards n frames taken from port in (learn, look up, queue, deliver). */
void vs_forward(struct vs_switch *sw, uint32_t in, struct vs_pkt *pkts, uint32_t n);
/* Serves one port's TX ring (or tap fd) for up to budget frames. */
int vs_serve(struct vs_switch *sw, uint32_t port, uint32_t budget, bool arm);
/* vs_vring_complete and vs_vring_enqueue do not interrupt the guest: the
 * switch notes each ring they published (signal_due), and this fences once
 * for every ring the loop touched, instead of once per ring and burst, then
 * interrupts the guests that want it. */
void vs_flush_signals(struct vs_switch *sw);
/* Serves one port (every open port if port < 0) and then interrupts the
 * guests that want it, recovering from guest memory faults: the event
 * loop's entry points and the poll thread's loop.  Returns frames taken, or
 * a negative errno if the one port asked for is broken. */
int vs_serve_guarded(struct vs_switch *sw, int32_t port, uint32_t budget, bool arm);
/* Finishes the burst of the port being served after a fault broke a port
 * (the served one or a destination): frames go on to the other ports, the
 * served port gets its chains back. */
void vs_forward_recover(struct vs_switch *sw);

/* vs_vlan.c: 802.1Q on ports, see there. */
#define VS_ETH_8021Q 0x8100

/* Does port d carry VLAN v? */
static inline bool vs_carries(const struct vs_port *d, uint16_t v)
{
    if (__builtin_expect(!d->trunk, 1))
        return d->vlan == v;
    return (d->trunk_set[v / 64] >> (v % 64) & 1) || (v != 0 && v == d->native);
}

/* Is a frame of VLAN v tagged when it leaves port d?  A port that does not
 * carry v gets it only as a mirror copy, tagged so its VLAN shows. */
static inline bool vs_leaves_tagged(const struct vs_port *d, uint16_t v)
{
    if (v == 0)
        return false;
    if (d->trunk)
        return v != d->native;
    return d->vlan != v;
}

/* vs_flow.c: a hash of a frame's flow (addresses, and the IPv4/IPv6 5-tuple
 * where there is one), so that one flow always picks the same RX queue. */
uint32_t vs_flow_hash(const struct vs_pkt *pkt);

/* vs_port.c: recomputes p->rxq after a ring changed. */
void vs_port_count_queues(struct vs_port *p);

/* vs_tap.c */
int vs_tap_dequeue(struct vs_port *p, struct vs_pkt *pkts, uint32_t max);
uint32_t vs_tap_enqueue(struct vs_port *p, struct vs_pkt **pkts, uint32_t n);

/* vs_vxlan.c: VXLAN ports, a UDP socket (p->fd) per endpoint, read and
 * written in batches.  Like a TAP, a port whose frames go through a file
 * descriptor: vs_fd_port says which kinds; vs_forward.c picks the kind's
 * output. */
/* Reads one batch from the UDP socket of port (shared by the VXLAN ports of
 * one endpoint, each datagram going to the port of its VNI) and decapsulates
 * it: pkts then holds ngroups runs of frames, count[g] of them from port
 * group[g], in arrival order within each.  Returns the datagrams read, bad
 * ones included (they count against the caller's budget), 0 for none, or a
 * negative errno once the port is broken. */
int vs_vxlan_dequeue(struct vs_switch *sw, uint32_t port, struct vs_pkt *pkts,
                     uint32_t *group, uint32_t *count, uint32_t *ngroups);
uint32_t vs_vxlan_enqueue(struct vs_port *p, struct vs_pkt **pkts, uint32_t n);
void vs_vxlan_free(struct vs_port *p);

static inline bool vs_fd_port(const struct vs_port *p)
{
    return p->kind == VS_PORT_TAP || p->kind == VS_PORT_VXLAN;
}


/* vs_fdb.c: the MAC table on its own.  Times are the switch's coarse
 * seconds (sw->now); ports are below VS_MAX_PORTS, mac and vlan within
 * VS_MAC_MASK and VS_VLAN_MAX (the callers check). */
int vs_fdb_init(struct vs_fdb *fdb, uint32_t max);
void vs_fdb_destroy(struct vs_fdb *fdb);
/* Learns that mac is behind port, unless that makes the port own more than
 * limit dynamic entries (0 = no limit). */
enum vs_learn vs_fdb_learn(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t port,
                           uint32_t limit, uint32_t now);
/* The same, behind one remote of a VXLAN port (1 + its index; 0 = none):
 * a known address seen from another remote of the same port takes it. */
enum vs_learn vs_fdb_learn_at(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t port,
                              uint16_t remote, uint32_t limit, uint32_t now);
/* Port index for (vlan, mac), or -1. */
int64_t vs_fdb_lookup(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan);
/* The same, and the entry's remote in *remote (0 when there is none). */
int64_t vs_fdb_lookup_at(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint16_t *remote);
/* Adds or replaces an entry, ignoring the port's limit; -ENOSPC when full. */
int vs_fdb_put(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t port, bool is_static,
               uint32_t now);
int vs_fdb_remove(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan);
/* Removes the entries of port (every port if port < 0); returns how many. */
uint32_t vs_fdb_remove_port(struct vs_fdb *fdb, int port, bool include_static);
/* Removes the entries on vlan of port (every port if port < 0). */
uint32_t vs_fdb_remove_vlan(struct vs_fdb *fdb, int port, uint16_t vlan, bool include_static);
/* Removes the entries of port, static ones too, on the VLANs not in keep (a
 * bit per VLAN); returns how many. */
uint32_t vs_fdb_remove_port_vlans(struct vs_fdb *fdb, uint32_t port, const uint64_t *keep);
/* Removes dynamic entries idle for max_age seconds or more: all of them, or
 * those among the next n slots from where the last call stopped. */
uint32_t vs_fdb_expire(struct vs_fdb *fdb, uint32_t now, uint32_t max_age);
uint32_t vs_fdb_expire_some(struct vs_fdb *fdb, uint32_t now, uint32_t max_age, uint32_t n);
/* One entry, as vs_fdb_read gives it; -ENOENT if there is none. */
int vs_fdb_entry_of(struct vs_fdb *fdb, uint64_t mac, uint16_t vlan, uint32_t now,
                    struct vs_fdb_entry *out);
uint32_t vs_fdb_read(const struct vs_fdb *fdb, uint32_t now, struct vs_fdb_entry *out,
                     uint32_t max);

static inline uint32_t vs_fdb_slots(const struct vs_fdb *fdb)
{
    return fdb->mask + 1;
}

#endif
