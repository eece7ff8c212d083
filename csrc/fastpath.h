/*
 * vswitch fast path: the public API.
 *
 * This file is read twice: by the C compiler and, with its preprocessor lines
 * removed (all but integer #defines), by cffi's cdef().  Keep it cdef-clean:
 * plain structs, integer #defines, prototypes.  Internals live in vs_internal.h.
 *
 * Vocabulary, always from the switch's point of view:
 *   rx  = frames the switch receives from a port (the guest's TX virtqueue)
 *   tx  = frames the switch sends to a port (the guest's RX virtqueue)
 * Queue indexes follow virtio-net (virtio 1.2, 5.1.2), and so do their
 * names, which are the guest's: VS_QUEUE_RX (0) is the guest's receive queue,
 * which the switch fills, VS_QUEUE_TX (1) its transmit queue, which the
 * switch drains; queue pair n uses 2n and 2n+1 (room for multiqueue).
 *
 * Threading: every call for a given switch comes from one thread at a time:
 * the asyncio loop, or the poll thread while vs_run() runs on it, and then
 * the loop's calls wait until the thread is parked (vs_run_pause, below).
 */
#include <stdint.h>

/* Limits a person or a guest can reach, defined here only: Python reads
 * them through cffi (lib.VS_MAX_MTU, ...).  cdef() is given only the lines
 * that are a plain integer #define, so keep every one of them so: no
 * expression, no comment on the line. */
#define VS_MAX_PORTS 256
/* Rings of a port: up to 8 queue pairs (multiqueue). */
#define VS_MAX_QUEUES 16
/* Memory regions per port, and the GET_MAX_MEM_SLOTS answer.  QEMU refuses
 * a DIMM once a back end has no free slot, so the limit must pass what a
 * guest is given (pc-dimm slots: 256 at most, a handful in practice) plus
 * its boot RAM.  64: room for 60 DIMMs; lookup is a binary search over the
 * sorted table (6 steps), and 256 ports of 64 mappings each stay well under
 * the kernel's default vm.max_map_count (65530).  DPDK offers 509 (KVM's
 * memslot count), but a TCG or KVM guest with more than 64 DIMMs on one
 * NIC is not a case worth the memory in every port. */
#define VS_MAX_MEM_REGIONS 64
#define VS_MAX_RING_SIZE 32768
/* VLAN IDs, 0..4095 (1..4094 usable; vs_vlan_stats's out holds up to this many). */
#define VS_VLAN_IDS 4096
#define VS_MIN_MTU 68
#define VS_MAX_MTU 9000
/* Entries vs_switch_new's MAC table may be asked to hold (1 << 24). */
#define VS_MAX_FDB_SIZE 16777216
/* Dynamic addresses a port may own when opened (vs_port_set_mac_limit). */
#define VS_DEFAULT_MAC_LIMIT 4096
/* vs_capture_start's ring_bytes: 64 KiB to 256 MiB. */
#define VS_CAP_MIN_RING 65536
#define VS_CAP_MAX_RING 268435456
/* vs_capture_set_filter: instructions in a capture filter (libpcap's BPF_MAXINSNS). */
#define VS_BPF_MAX_INSNS 4096

#define VS_BURST 32

/* What one frame may cost in a guest's rings (vs_ring.h).  Descriptors
 * count across every chain and indirect table the frame uses, zero-length
 * ones included; heads are the RX buffers one frame is merged into
 * (MRG_RXBUF).  The largest frame, a 12-byte header and 9018 bytes at
 * VS_MAX_MTU, fits in 64 buffers of 142 bytes: Linux never posts RX
 * buffers under 1518 bytes (6 heads), DPDK's default mbufs hold 2 KiB (5),
 * and Linux sends at most MAX_SKB_FRAGS (17, 45 at most) + 2 descriptors
 * per frame.  A TX chain of more descriptors is dropped (rx_drop_desc_limit);
 * RX buffers that give a frame no room within these are treated as no room
 * (tx_drop_desc_limit). */
#define VS_FRAME_MAX_DESCS 128
#define VS_FRAME_MAX_HEADS 64
/* A budget unit (vs_poll, the poll thread) buys one TX chain of up to this
 * many descriptors; a longer chain costs one unit per this many. */
#define VS_BUDGET_DESCS 4

/* Virtqueue numbers within a queue pair (see above). */
#define VS_QUEUE_RX 0
#define VS_QUEUE_TX 1
#define VS_QUEUES_PER_PAIR 2

/* Port kinds. */
#define VS_PORT_VHOST 1
#define VS_PORT_TAP 2
#define VS_PORT_VXLAN 3

/* VXLAN ports (vs_vxlan.c): remotes a port may know, flood list and learned
 * ones together, and the highest VNI (24 bits). */
#define VS_VXLAN_MAX_REMOTES 256
#define VS_VXLAN_MAX_VNI 16777215

/* Capture directions (vs_capture_start) and vs_cap_hdr.dir values. */
#define VS_CAP_RX 1
#define VS_CAP_TX 2

/* Mirror directions (vs_port_set_mirror). */
#define VS_MIRROR_RX 1
#define VS_MIRROR_TX 2

/* vs_port_state() bits. */
#define VS_STATE_OPEN 1
#define VS_STATE_UP 2
#define VS_STATE_BROKEN 4

/* vs_fdb_entry.flags */
#define VS_FDB_STATIC 1

/* One ring's own counters (vs_vring_get_stats): frames and bytes it carried,
 * taken from a TX ring or given to an RX ring. */
struct vs_queue_stats {
    uint64_t packets;
    uint64_t bytes;
};

/* Virtio feature bits the fast path looks at (virtio 1.2 5.1.3, 6). */
#define VS_F_MRG_RXBUF 15
#define VS_F_INDIRECT_DESC 28
#define VS_F_EVENT_IDX 29
#define VS_F_VERSION_1 32
/* vhost's "log every write" (migration in progress). */
#define VS_F_LOG_ALL 26

/* The dirty log (vhost-user SET_LOG_BASE): one bit per page of this size
 * of guest-physical memory. */
#define VS_LOG_PAGE 4096

struct vs_switch;

/* One region of a front end's memory table (vhost-user SET_MEM_TABLE). */
struct vs_mem_region {
    uint64_t guest_phys_addr;
    uint64_t size;
    uint64_t user_addr;     /* the front end's virtual address */
    uint64_t mmap_offset;   /* where the region starts in fd */
    int fd;                 /* borrowed: the caller keeps ownership */
};

struct vs_port_stats {
    uint64_t rx_packets;
    uint64_t rx_bytes;
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t rx_drop_runt;          /* shorter than an Ethernet header */
    uint64_t rx_drop_too_long;      /* longer than the port's MTU allows */
    uint64_t rx_drop_bad_hdr;       /* virtio-net header asks for offloads never negotiated */
    uint64_t rx_drop_bad_desc;      /* descriptor chain failed validation */
    uint64_t tx_drop_no_buffer;     /* the guest had no room in its RX ring */
    uint64_t tx_drop_port_down;     /* destination known but not up */
    uint64_t tx_drop_too_long;      /* frame longer than the destination's MTU allows */
    uint64_t rx_drop_desc_limit;    /* TX chain of more than VS_FRAME_MAX_DESCS descriptors */
    uint64_t rx_drop_disabled;      /* taken from a TX ring the front end disabled, discarded */
    uint64_t tx_drop_desc_limit;    /* RX buffers gave no room within VS_FRAME_MAX_DESCS/HEADS */
    uint64_t tx_flood;              /* copies sent to this port by flooding */
    uint64_t ring_errors;           /* times a ring of this port was stopped as broken */
    uint64_t kicks;                 /* wake-ups from the guest */
    uint64_t calls;                 /* interrupts sent to the guest */
    uint64_t descs;                 /* descriptors read from the port's rings: the work it cost */
    uint64_t fdb_learned;           /* addresses learned on this port */
    uint64_t fdb_moved;             /* addresses that moved to this port */
    uint64_t fdb_limit;             /* sources not learned: the port's MAC limit was reached */
    uint64_t fdb_count;             /* dynamic addresses the port has now */
    uint64_t cap_packets;           /* frames copied to an active capture */
    uint64_t cap_drops;             /* frames a capture missed: its reader was too slow */
    uint64_t cap_filtered;          /* frames a capture's filter left out (never copied) */
    uint64_t tx_mirror;             /* mirror copies given to this port (also in tx_packets) */
    uint64_t mirror_drops;          /* mirror copies it could not take (also in tx_drop_*) */
    uint64_t log_pages;             /* dirty-log bits this port set (pages it marked written) */
    uint64_t log_overflow;          /* writes past the end of the front end's log (unlogged) */
    uint64_t rx_drop_vlan;          /* VLAN not allowed on this port (a trunk's list, native) */
    uint64_t rx_drop_vlan_tagged;   /* 802.1Q-tagged frame on an access port */
    uint64_t rx_drop_qinq;          /* 802.1ad or double-tagged frame on a VLAN-aware port */
};

/* Frames dropped on one VLAN (vs_vlan_stats), by the VLAN of their tag or
 * the trunk's native VLAN they would have been in (0: untagged on a trunk
 * without one). */
struct vs_vlan_stats {
    uint32_t vlan;
    uint64_t not_allowed;           /* rx_drop_vlan */
    uint64_t tagged;                /* rx_drop_vlan_tagged */
};

struct vs_switch_stats {
    uint64_t fdb_entries;
    uint64_t fdb_capacity;
    uint64_t fdb_full;              /* learning skipped: table full (frames still flood) */
    uint64_t fdb_aged;
    uint64_t flooded;               /* frames flooded (unknown unicast, broadcast, multicast) */
    uint64_t poll_sleeps;           /* times the poll thread went to sleep */
    uint64_t poll_loops;            /* busy-poll iterations of the poll thread */
    uint64_t pause_ns_last;         /* how long the poll thread stayed parked, last pause */
    uint64_t pause_ns_max;          /* and the longest pause */
};

struct vs_fdb_entry {
    uint64_t mac;                   /* 48-bit address, first octet in bits 47..40 */
    uint32_t port;
    uint16_t vlan;
    uint16_t flags;
    uint32_t age;                   /* seconds since last seen */
    uint16_t remote;                /* VXLAN ports: 1 + index in vs_vxlan_remotes, 0 = none */
};

/* One captured frame in the buffer vs_capture_read fills: this header,
 * then caplen bytes of frame, then padding to a multiple of 8. */
struct vs_cap_hdr {
    uint64_t ts_ns;                 /* CLOCK_REALTIME */
    uint32_t caplen;
    uint32_t len;                   /* length on the wire */
    uint32_t port;
    uint32_t dir;                   /* VS_CAP_RX or VS_CAP_TX */
};

/* One classic BPF instruction: the layout of libpcap's struct bpf_insn, so a
 * program pcap_compile() made is passed as it is. */
struct vs_bpf_insn {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
};

/* A VXLAN port's settings (vs_vxlan_configure).  Addresses are 16 bytes:
 * an IPv6 address, or with ipv6 == 0 an IPv4 address in the first 4 bytes
 * (network order).  remotes points at nremotes of them: the flood list. */
struct vs_vxlan_config {
    uint32_t vni;
    uint32_t ipv6;
    uint32_t learn_remotes;     /* accept (and learn) remotes not in the flood list */
    uint32_t nremotes;
    int tx_fd;                  /* raw IPPROTO_UDP socket bound to local, borrowed */
    uint16_t dstport;
    uint8_t local[16];
    const uint8_t *remotes;
};

/* What a VXLAN port dropped and sent beyond struct vs_port_stats (which
 * counts its inner frames: rx_drop_runt, rx_drop_too_long, tx_drop_*). */
struct vs_vxlan_stats {
    uint64_t rx_datagrams;          /* UDP datagrams read from the socket */
    uint64_t rx_drop_vxlan_short;   /* shorter than a VXLAN header */
    uint64_t rx_drop_vxlan_flags;   /* flags other than I (0x08), or reserved bits set */
    uint64_t rx_drop_vxlan_vni;     /* a VNI that is not the port's */
    uint64_t rx_drop_vxlan_remote;  /* from a remote not in the flood list (learn_remotes off) */
    uint64_t rx_drop_vxlan_remotes_full;  /* from a new remote, the port knows the most it can */
    uint64_t rx_drop_vxlan_trunc;   /* larger than the receive buffer */
    uint64_t tx_datagrams;          /* UDP datagrams sent (a flooded frame: one per remote) */
    uint64_t tx_drop_vxlan_send;    /* datagrams the underlay refused (no route, ...) */
    uint64_t remotes_learned;       /* remotes added by learn_remotes */
};

/* Switch. */
struct vs_switch *vs_switch_new(uint32_t fdb_size);
void vs_switch_free(struct vs_switch *sw);
void vs_switch_get_stats(struct vs_switch *sw, struct vs_switch_stats *out);

/* Ports.  Returns are 0 or a negative errno unless said otherwise. */
int vs_port_open(struct vs_switch *sw, uint32_t port, uint32_t kind, uint32_t mtu);
void vs_port_close(struct vs_switch *sw, uint32_t port);
/* Forget everything the front end set up (disconnect, RESET_OWNER, reset status). */
void vs_port_reset(struct vs_switch *sw, uint32_t port);
int vs_port_set_mtu(struct vs_switch *sw, uint32_t port, uint32_t mtu);
/* Most dynamic addresses the port may own (0 = no limit; a port opens with
 * VS_DEFAULT_MAC_LIMIT): a guest spraying source addresses cannot push
 * everyone else out of the table. */
int vs_port_set_mac_limit(struct vs_switch *sw, uint32_t port, uint32_t limit);
/* TAP ports: the non-blocking tap fd (IFF_TAP|IFF_NO_PI), borrowed; -1 = none.
 * VXLAN ports: the non-blocking UDP socket bound to local:dstport that
 * receives the tunnel's datagrams. */
int vs_port_set_fd(struct vs_switch *sw, uint32_t port, int fd);
int vs_port_set_features(struct vs_switch *sw, uint32_t port, uint64_t features);
/* Map a new memory table; the old one is unmapped only once the new one is
 * in place and every ring has been translated again.  -EPERM: a region's
 * file could be sealed against shrinking (F_SEAL_SHRINK) but is not.  A
 * fault in a file that cannot be sealed (hugetlbfs) breaks the port. */
int vs_port_set_mem(struct vs_switch *sw, uint32_t port,
                    const struct vs_mem_region *regions, uint32_t n);
/* Mirror (SPAN): port gets a copy of every frame the switch takes from the
 * ports in from (dirs & VS_MIRROR_RX) and of every frame it forwards to them
 * (dirs & VS_MIRROR_TX), as it forwards them, in the same burst; replaces
 * what the port mirrored before (n == 0 or dirs == 0: nothing).  A frame
 * reaches the port once however many reasons it has to (flooded to it as
 * well, or taken from one source and forwarded to another), never when the
 * port sent it, and copies are never mirrored again.  A copy the port has no
 * room for is dropped and counted on it (mirror_drops and the drop's
 * reason), never held back.  The sources must be open ports other than port;
 * closing a port takes it out of every mirror.  -EINVAL, -ENODEV. */
int vs_port_set_mirror(struct vs_switch *sw, uint32_t port, const uint32_t *from, uint32_t n,
                       uint32_t dirs);
/* 802.1Q (vs_vlan.c).  ntrunks == 0: an access port of access_vlan (1..4094;
 * 0: not VLAN-aware, its frames pass untouched in VLAN 0, the default), its
 * untagged frames in that VLAN, tagged ones dropped.  ntrunks > 0 (with
 * access_vlan 0): a trunk carrying those VLANs tagged and native_vlan
 * (0: none) untagged.  Entries of the port on VLANs it no longer carries
 * leave the MAC table: returns how many, or -EINVAL, -ENODEV. */
int vs_port_set_vlans(struct vs_switch *sw, uint32_t port, uint32_t access_vlan,
                      const uint16_t *trunks, uint32_t ntrunks, uint32_t native_vlan);
/* The VLANs that dropped frames, with their counts; returns how many. */
uint32_t vs_vlan_stats(struct vs_switch *sw, struct vs_vlan_stats *out, uint32_t max);
/* Memory hotplug (vhost-user ADD_MEM_REG, REM_MEM_REG): one region added to
 * or removed from the table while the rings run, every ring translated
 * again before the call returns.  Add: -ENOSPC past VS_MAX_MEM_REGIONS,
 * -EEXIST for a region already there, -EINVAL for one overlapping another
 * (guest-physical or front-end addresses), -EPERM as vs_port_set_mem.
 * Remove: the region with the same guest address, size and front-end
 * address; -ENOENT if there is none, -EBUSY if a started ring lies in it
 * (nothing is changed). */
int vs_port_add_mem(struct vs_switch *sw, uint32_t port, const struct vs_mem_region *region);
int vs_port_rem_mem(struct vs_switch *sw, uint32_t port, const struct vs_mem_region *region);
uint32_t vs_port_mem_regions(struct vs_switch *sw, uint32_t port);
/* Dirty log (vhost-user SET_LOG_BASE): maps exactly size bytes at offset of
 * fd (borrowed), replacing and unmapping any log before; fd -1 unmaps.
 * While the port negotiated VS_F_LOG_ALL, every byte the switch writes into
 * the guest's memory sets the bit of its page, before the used index that
 * hands it over is published.  -EPERM: the file is not sealed against
 * shrinking (a truncated log would fault the switch). */
int vs_port_set_log(struct vs_switch *sw, uint32_t port, int fd, uint64_t size, uint64_t offset);
/* 1 while writes into the port's guest memory are logged. */
int vs_port_logging(struct vs_switch *sw, uint32_t port);
/* SET_VRING_ADDR's VHOST_VRING_F_LOG: writes to the ring's used ring are
 * logged at log_guest_addr (its guest-physical address), or not. */
int vs_vring_set_log(struct vs_switch *sw, uint32_t port, uint32_t q, int enabled,
                     uint64_t log_guest_addr);
/* Forwards one frame as if port had sent it (learning its source there):
 * a migrated guest's announcement (vhost-user SEND_RARP).  The port need
 * not be up.  -EINVAL for a frame shorter than an Ethernet header or
 * longer than the largest MTU allows. */
int vs_port_inject(struct vs_switch *sw, uint32_t port, const uint8_t *frame, uint32_t len);
/* Tests only: off != 0 makes the fast path skip every dirty-log write (the
 * negative control of the migration test: the pages must then differ). */
void vs_debug_no_log(struct vs_switch *sw, int off);
uint32_t vs_port_state(struct vs_switch *sw, uint32_t port);
/* Why the port was marked broken; "" when it is not. */
const char *vs_port_error(struct vs_switch *sw, uint32_t port);
void vs_port_get_stats(struct vs_switch *sw, uint32_t port, struct vs_port_stats *out);

/* VXLAN ports.  vs_vxlan_configure sets or replaces the port's settings
 * (the rx socket is vs_port_set_fd's); a change of remotes forgets the
 * remotes learned and the port's dynamic MAC addresses (they name remotes).
 * -EINVAL for a bad setting, -ENODEV if port is no VXLAN port. */
int vs_vxlan_configure(struct vs_switch *sw, uint32_t port, const struct vs_vxlan_config *c);
void vs_vxlan_get_stats(struct vs_switch *sw, uint32_t port, struct vs_vxlan_stats *out);
/* The port's remotes, flood list first, 16 bytes each into out (room for
 * max); returns how many it has. */
uint32_t vs_vxlan_remotes(struct vs_switch *sw, uint32_t port, uint8_t *out, uint32_t max);

/* Virtqueues (vhost-user SET_VRING_*). */
int vs_vring_set_num(struct vs_switch *sw, uint32_t port, uint32_t q, uint32_t num);
int vs_vring_set_addr(struct vs_switch *sw, uint32_t port, uint32_t q,
                      uint64_t desc_uaddr, uint64_t used_uaddr, uint64_t avail_uaddr);
int vs_vring_set_base(struct vs_switch *sw, uint32_t port, uint32_t q, uint32_t base);
/* Stop the ring and return the index of the next descriptor it would take
 * (GET_VRING_BASE), or a negative errno. */
int vs_vring_stop(struct vs_switch *sw, uint32_t port, uint32_t q);
/* The eventfds are borrowed: the caller keeps ownership; -1 means none.
 * Setting the kick fd starts the ring (vhost-user "started"). */
int vs_vring_set_kick(struct vs_switch *sw, uint32_t port, uint32_t q, int fd);
int vs_vring_set_call(struct vs_switch *sw, uint32_t port, uint32_t q, int fd);
int vs_vring_enable(struct vs_switch *sw, uint32_t port, uint32_t q, int enabled);
/* 1 when the ring is started, enabled and its addresses translate. */
int vs_vring_ready(struct vs_switch *sw, uint32_t port, uint32_t q);
/* The ring's counters (multiqueue: which queues carried what); -EINVAL. */
int vs_vring_get_stats(struct vs_switch *sw, uint32_t port, uint32_t q,
                       struct vs_queue_stats *out);

/* Data path.  vs_port_kick consumes the kick eventfd of one queue and
 * serves it; vs_poll serves every port without looking at eventfds.  Both
 * return the number of frames taken (at least 1 when the budget ran out
 * before the ring did: call again), 0 when the ring is empty and kicks are
 * rearmed, or a negative errno if the port's ring was found broken (see
 * vs_port_error).  vs_poll's budget is per port, in frames of up to
 * VS_BUDGET_DESCS descriptors (a longer chain costs more), dropped frames
 * included. */
int vs_port_kick(struct vs_switch *sw, uint32_t port, uint32_t q);
int vs_poll(struct vs_switch *sw, uint32_t budget);

/* Capture: frames seen on a port are copied into a ring of ring_bytes that
 * the control plane drains with vs_capture_read; when it is full, frames
 * are counted in cap_drops, never held back.  Costs one branch per burst
 * when no capture runs. */
int vs_capture_start(struct vs_switch *sw, uint32_t port, uint32_t dirs, uint32_t snaplen,
                     uint32_t ring_bytes);
void vs_capture_stop(struct vs_switch *sw, uint32_t port);
/* Moves whole records (struct vs_cap_hdr + frame) into buf; returns bytes. */
uint32_t vs_capture_read(struct vs_switch *sw, uint32_t port, uint8_t *buf, uint32_t max);
/* A classic BPF program (pcap_compile's) that a frame must pass before it is
 * copied into the port's running capture; a frame it rejects costs no copy
 * and is counted in cap_filtered.  The program is checked (bpf_validate's
 * rules: forward jumps in range, scratch memory indexes, no division by a
 * zero constant, ending in a return) and copied; n == 0 removes the filter.
 * Loads outside the frame reject it, as libpcap's bpf_filter does.  -EINVAL
 * for a program that fails the check, -ENODEV without a capture. */
int vs_capture_set_filter(struct vs_switch *sw, uint32_t port, const struct vs_bpf_insn *prog,
                          uint32_t n);
/* Runs a checked program over len bytes split after the Ethernet header
 * into segments of seg_len bytes (0 = one segment), as the fast path sees
 * frames in guest memory; the program's return value (0 = rejected), or
 * -EINVAL if it fails the check.  For tests against libpcap's bpf_filter. */
int64_t vs_bpf_test(const struct vs_bpf_insn *prog, uint32_t n, const uint8_t *frame,
                    uint32_t len, uint32_t seg_len);

/* The poll thread (adaptive polling, like NAPI).  vs_run() serves every
 * port in a busy loop while frames flow (a loop that moved fewer than two
 * bursts, 2 * VS_BURST frames, waits linger_ns before the next, so bursts
 * form), and after idle_us without any sleeps in epoll on the kick eventfds
 * and tap fds until one fires.  It returns after vs_run_stop().  While it
 * runs, every other call except the counters, vs_capture_read and
 * vs_fdb_set_max_age must happen between vs_run_pause() (which returns once
 * the loop is parked) and vs_run_resume(). */
int vs_run(struct vs_switch *sw, uint32_t idle_us, uint32_t linger_ns);
/* Returns 0 once the loop is parked, or -ETIMEDOUT if it was not within
 * timeout_ms: the request is withdrawn (no resume follows), nothing may be
 * changed, and a watchdog has looked at what held the thread (vs_run.c):
 * a port it was found working in all along is broken when the thread gets
 * out of it. */
int vs_run_pause(struct vs_switch *sw, uint32_t timeout_ms);
void vs_run_resume(struct vs_switch *sw);
void vs_run_stop(struct vs_switch *sw);
/* The port the poll thread is serving now, or -1. */
int vs_run_serving(struct vs_switch *sw);
/* Tests only: the next time the thread serves port, it spins there for ms
 * first, as a thread held up in one port would. */
void vs_debug_stall(struct vs_switch *sw, uint32_t port, uint32_t ms);

/* Peer eventfds.  The switch never blocks on one, whatever its flags (the
 * front end shares the open file description and can clear O_NONBLOCK).
 * vs_efd_signal adds 1 to a peer's eventfd (an error eventfd): 1 done, 0
 * the counter was full (signalled already) or the write had to be
 * interrupted, or a negative errno.  vs_watchdog, called from a thread of
 * its own every half second or so (safe while anything else runs),
 * interrupts a read or write of a peer's eventfd that it finds under way
 * twice running (the peer raced the non-blocking check: vs_peer.c); it
 * returns the port of that eventfd (VS_MAX_PORTS for vs_efd_signal's), or
 * -1 when nothing was stuck. */
int vs_efd_signal(struct vs_switch *sw, int fd);
int vs_watchdog(struct vs_switch *sw);

/* MAC table. */
int vs_fdb_add(struct vs_switch *sw, uint64_t mac, uint16_t vlan, uint32_t port, int is_static);
int vs_fdb_del(struct vs_switch *sw, uint64_t mac, uint16_t vlan);
/* port == -1 flushes every port; static entries go only with include_static. */
uint32_t vs_fdb_flush(struct vs_switch *sw, int port, int include_static);
/* The same for one VLAN. */
uint32_t vs_fdb_flush_vlan(struct vs_switch *sw, int port, uint32_t vlan, int include_static);
uint32_t vs_fdb_dump(struct vs_switch *sw, struct vs_fdb_entry *out, uint32_t max);
/* One entry: 0 and *out filled, or -ENOENT. */
int vs_fdb_get(struct vs_switch *sw, uint64_t mac, uint16_t vlan, struct vs_fdb_entry *out);
/* Remove dynamic entries idle for max_age seconds or more; returns how many. */
uint32_t vs_fdb_age(struct vs_switch *sw, uint32_t max_age);
/* The poll thread's aging (0 = none, the default): it sweeps the table a
 * slice at a time, the whole of it about once a second, and wakes once a
 * second to do so when idle, so aging never parks the data path.  Safe to
 * call while the thread runs. */
void vs_fdb_set_max_age(struct vs_switch *sw, uint32_t max_age);
