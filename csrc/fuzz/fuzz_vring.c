/* libFuzzer harness for the split-virtqueue fast path.
 *
 * Links the vs_*.c sources directly (not through cffi).  One input is one
 * hostile guest: it chooses the memory table layout, the features, the ring
 * sizes and where the rings lie, writes the whole content of guest memory
 * (descriptors, avail rings, indexes, buffers, indirect tables) and a short
 * script of control-plane and data-path calls.  Two vhost ports share that
 * memory, so frames go from one guest's TX ring into the other's RX ring and
 * both the dequeue and the enqueue paths run on fuzzed rings.
 *
 * Besides ASan/UBSan, the harness checks what the sanitizers cannot see:
 * guest memory is a mmap of a memfd, outside ASan's view, so the file has
 * canary gaps around every region and they must never change; a broken
 * port must say why; captured records must be well formed; and the
 * descriptors each call reads (the descs counter) stay within what the
 * frames it moved and its budget allow (VS_FRAME_MAX_DESCS per chain,
 * VS_FRAME_MAX_HEADS per frame, the kick budget), which ops 14 and 15
 * test with long direct and indirect chains and runs of tiny heads.
 *
 * Build and run: scripts/fuzz [SECONDS].  Input layout (missing bytes read
 * as zero):
 *
 *   0   u8  regions-1 (mod 3)        1  u8  file order of the regions
 *   2   u8  features port 0           3  u8  features port 1
 *           bit 0 MRG_RXBUF, 1 INDIRECT_DESC, 2 EVENT_IDX, 3 VERSION_1, 4 LOG_ALL
 *   4   u8  log2 ring size port 0     5  u8  log2 ring size port 1   (mod 9)
 *   6   u16 mtu port 0                8  u16 mtu port 1
 *   10  u8  fdb size - 1 (bits 0-3); VLAN mode of port 0 (bits 4-5) and port 1
 *           (bits 6-7), see set_vlan_mode
 *   11  u8  ring layout: 0 packed at the start of region 0, else raw
 *   12  u8  region 0's gpa in pages (mod 16)    (region 0 is 32 KiB)
 *   13  u8  dirty log: bit 7 on; bits 0-2 its offset in the file in 8-byte
 *           steps, bits 3-6 its size - 1 in bytes (pages the guest has may
 *           lie past it); features bit 4 (below) is LOG_ALL
 *   14  region 1, then 16 region 2: u8 gpa gap after the previous region in
 *       pages (mod 4; 0 = adjacent), u8 size in pages - 1 (mod 4)
 *   18  raw layout: 4 rings x (u16 desc, u16 avail, u16 used) offsets
 *   42  u16 set_base for each of the 4 rings
 *   50  u8  number of ops (mod 24), then 2 bytes per op (op, arg): op 0..223
 *       is one of 14 calls (op % 14, see run_op); 224..255 write a long
 *       chain or a run of tiny heads into a ring first (ops 14 and 15)
 *   ..  the rest: guest memory content, region by region in gpa order
 *
 * Ring k: 0 = port 0 RX, 1 = port 0 TX, 2 = port 1 RX, 3 = port 1 TX.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fastpath.h"

#define PAGE 4096u
#define REGION0_SIZE (32u << 10)
#define GAP PAGE
#define FILE_SIZE (96u << 10)
#define CANARY 0xA5
#define UA_BASE 0x7f0000000000ULL

struct reader {
    const uint8_t *p;
    size_t n;
};

static uint8_t u8(struct reader *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

static uint16_t u16(struct reader *r)
{
    uint16_t lo = u8(r);
    return (uint16_t)(lo | (uint16_t)u8(r) << 8);
}

struct region {
    uint64_t gpa, size, ua, off;
};

struct ring {
    uint32_t num;
    uint64_t desc, avail, used;     /* offsets in region 0 */
};

struct world {
    struct vs_switch *sw;
    uint32_t nreg;
    struct region reg[3];
    struct ring ring[4];
    uint64_t features[2];
    uint32_t mtu[2];
    uint16_t base[4];
    uint32_t vmode[2];
    uint64_t log_off, log_size;     /* log_size 0: no dirty log */
};

static int memfd = -1;
/* The dirty log's file: two pages, canaries around the log. */
#define LOG_FILE (2 * PAGE)
static int logfd = -1;
static uint8_t *logfile;
static uint8_t *file;
static int kick_fd[4], call_fd[4];
static uint8_t capbuf[1 << 17];
static uint8_t canary_page[PAGE];
static bool verbose;    /* FUZZ_VRING_VERBOSE=1: print what each input did */

static void die(const char *why)
{
    fprintf(stderr, "fuzz_vring: %s\n", why);
    abort();
}

static void init_once(void)
{
    if (memfd >= 0)
        return;
    memfd = memfd_create("fuzz-guest", MFD_CLOEXEC);
    if (memfd < 0 || ftruncate(memfd, FILE_SIZE) < 0)
        die("memfd");
    verbose = getenv("FUZZ_VRING_VERBOSE") != NULL;
    memset(canary_page, CANARY, PAGE);
    /* Sealed as QEMU seals its log: the switch refuses anything less. */
    logfd = memfd_create("fuzz-log", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (logfd < 0 || ftruncate(logfd, LOG_FILE) < 0 ||
        fcntl(logfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
        die("log memfd");
    logfile = mmap(NULL, LOG_FILE, PROT_READ | PROT_WRITE, MAP_SHARED, logfd, 0);
    if (logfile == MAP_FAILED)
        die("log mmap");
    file = mmap(NULL, FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (file == MAP_FAILED)
        die("mmap");
    for (int i = 0; i < 4; i++) {
        kick_fd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        call_fd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (kick_fd[i] < 0 || call_fd[i] < 0)
            die("eventfd");
    }
}

static uint64_t feature_bits(uint8_t b)
{
    uint64_t f = 0;
    if (b & 1)
        f |= 1ULL << VS_F_MRG_RXBUF;
    if (b & 2)
        f |= 1ULL << VS_F_INDIRECT_DESC;
    if (b & 4)
        f |= 1ULL << VS_F_EVENT_IDX;
    if (b & 8)
        f |= 1ULL << VS_F_VERSION_1;
    if (b & 16)
        f |= 1ULL << VS_F_LOG_ALL;
    return f;
}

static int set_mem(struct world *w, uint32_t port)
{
    struct vs_mem_region t[3];
    for (uint32_t i = 0; i < w->nreg; i++)
        t[i] = (struct vs_mem_region){w->reg[i].gpa, w->reg[i].size, w->reg[i].ua,
                                      w->reg[i].off, memfd};
    return vs_port_set_mem(w->sw, port, t, w->nreg);
}

static void setup_ring(struct world *w, uint32_t k, uint16_t base)
{
    uint32_t port = k / 2, q = k % 2;
    const struct ring *r = &w->ring[k];
    uint64_t ua = w->reg[0].ua;
    vs_vring_set_num(w->sw, port, q, r->num);
    vs_vring_set_base(w->sw, port, q, base);
    vs_vring_set_addr(w->sw, port, q, ua + r->desc, ua + r->used, ua + r->avail);
    vs_vring_set_kick(w->sw, port, q, kick_fd[k]);
    vs_vring_set_call(w->sw, port, q, call_fd[k]);
    vs_vring_enable(w->sw, port, q, 1);
}

static void setup_port(struct world *w, uint32_t port)
{
    vs_port_set_features(w->sw, port, w->features[port]);
    set_mem(w, port);
    if (w->log_size) {
        if (vs_port_set_log(w->sw, port, logfd, w->log_size, w->log_off) < 0)
            die("vs_port_set_log refused a good log");
    }
    setup_ring(w, 2 * port, w->base[2 * port]);
    setup_ring(w, 2 * port + 1, w->base[2 * port + 1]);
    for (uint32_t q = 0; q < 2; q++) {
        const struct ring *r = &w->ring[2 * port + q];
        vs_vring_set_log(w->sw, port, q, w->log_size != 0, w->reg[0].gpa + r->used);
    }
}

/* The log: nothing written outside it, and no bit for a page the guest
 * does not have. */
static void check_log(const struct world *w)
{
    for (uint64_t i = 0; i < LOG_FILE; i++) {
        bool in = w->log_size && i >= w->log_off && i < w->log_off + w->log_size;
        if (!in && logfile[i] != CANARY)
            die("write outside the dirty log");
        if (!in)
            continue;
        for (uint32_t b = 0; b < 8; b++) {
            if (!(logfile[i] >> b & 1))
                continue;
            uint64_t gpa = ((i - w->log_off) * 8 + b) * PAGE;
            bool mine = false;
            for (uint32_t r = 0; r < w->nreg; r++)
                mine |= gpa + PAGE > w->reg[r].gpa && gpa < w->reg[r].gpa + w->reg[r].size;
            if (!mine)
                die("dirty log bit for a page outside guest memory");
        }
    }
}

/* Where ring k's avail index lies in our own mapping, if it is inside region 0. */
static uint16_t *avail_idx(struct world *w, uint32_t k)
{
    uint64_t off = w->ring[k].avail + 2;
    if (off + 2 > w->reg[0].size || (off & 1))
        return NULL;
    return (uint16_t *)(file + w->reg[0].off + off);
}

/* Region 0's bytes at offset off, if n of them fit. */
static uint8_t *at0(struct world *w, uint64_t off, uint64_t n)
{
    if (off > w->reg[0].size || n > w->reg[0].size - off)
        return NULL;
    return file + w->reg[0].off + off;
}

static void put_desc(uint8_t *d, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

/* Publishes head in ring k's next avail slot, if the avail ring is in region 0. */
static void publish(struct world *w, uint32_t k, uint16_t head)
{
    const struct ring *r = &w->ring[k];
    uint8_t *a = at0(w, r->avail, 4 + 2 * (uint64_t)r->num);
    if (!a || (r->avail & 1))
        return;
    uint16_t idx;
    memcpy(&idx, a + 2, 2);
    memcpy(a + 4 + 2 * (idx & (r->num - 1)), &head, 2);
    __atomic_store_n((uint16_t *)(void *)(a + 2), (uint16_t)(idx + 1), __ATOMIC_RELEASE);
}

/* Op 14: one long chain from head 0 of ring k: ndirect descriptors, the
 * first with a frame's worth of bytes, the rest 0 to 4 bytes long (many
 * zero), then maybe an indirect table of ntable more, maybe not 8-byte
 * aligned.  Lengths reach past the queue size (a broken ring) and past
 * VS_FRAME_MAX_DESCS (a dropped frame) from either part. */
static void long_chain(struct world *w, uint8_t arg)
{
    uint32_t k = arg & 3;
    const struct ring *r = &w->ring[k];
    uint16_t wflag = (k % 2 == 0) ? 2 : 0;
    uint32_t ndirect = 1 + ((arg >> 2) & 7) * r->num / 7;
    if (ndirect > r->num)
        ndirect = r->num;
    static const uint32_t tsizes[4] = {0, 3, VS_FRAME_MAX_DESCS, 300};
    uint32_t ntable = tsizes[(arg >> 5) & 3];
    uint64_t buf = w->reg[0].gpa + 0x200;
    uint64_t toff = (REGION0_SIZE - 16 * 301 - 8) + ((arg & 0x80) ? 4 : 0);
    uint8_t *d = at0(w, r->desc, 16 * (uint64_t)r->num);
    uint8_t *t = at0(w, toff, 16 * (uint64_t)ntable);
    if (!d || (ntable && !t))
        return;
    for (uint32_t i = 0; i < ndirect; i++) {
        uint32_t len = i == 0 ? 74 : i % 5;
        bool last = i + 1 == ndirect;
        if (last && ntable)
            put_desc(d + 16 * i, w->reg[0].gpa + toff, 16 * ntable, 4, 0);
        else
            put_desc(d + 16 * i, buf, len, (uint16_t)(wflag | (last ? 0 : 1)), (uint16_t)(i + 1));
    }
    for (uint32_t i = 0; i < ntable; i++)
        put_desc(t + 16 * i, buf, i % 3 ? 0 : 2, (uint16_t)(wflag | (i + 1 < ntable ? 1 : 0)),
                 (uint16_t)(i + 1));
    publish(w, k, 0);
}

/* Op 15: count heads of one tiny descriptor each (0 or 1 byte) in ring k,
 * all published: room for no frame, or only after many heads. */
static void tiny_heads(struct world *w, uint8_t arg)
{
    uint32_t k = arg & 3;
    const struct ring *r = &w->ring[k];
    uint32_t count = 1 + (uint32_t)((arg >> 2) & 15) * 17;
    if (count > r->num)
        count = r->num;
    uint8_t *d = at0(w, r->desc, 16 * (uint64_t)r->num);
    if (!d)
        return;
    for (uint32_t i = 0; i < count; i++) {
        put_desc(d + 16 * i, w->reg[0].gpa + 0x300 + i, (arg & 0x40) ? 0 : 1 + (i & 1),
                 (k % 2 == 0) ? 2 : 0, 0);
        publish(w, k, (uint16_t)i);
    }
}

static void check_port(struct world *w, uint32_t port)
{
    uint32_t st = vs_port_state(w->sw, port);
    const char *err = vs_port_error(w->sw, port);
    if (!(st & VS_STATE_OPEN))
        die("port not open");
    if ((st & VS_STATE_BROKEN) && err[0] == 0)
        die("broken port without a reason");
    if (!(st & VS_STATE_BROKEN) && err[0] != 0)
        die("port has a reason but is not broken");
    if ((st & VS_STATE_BROKEN) && (st & VS_STATE_UP))
        die("broken port is up");
}

static void check_capture(uint32_t n, uint32_t snaplen)
{
    uint32_t off = 0;
    while (off < n) {
        struct vs_cap_hdr h;
        if (n - off < sizeof(h))
            die("capture: truncated record header");
        memcpy(&h, capbuf + off, sizeof(h));
        if (h.caplen > h.len || h.caplen > snaplen || h.port > 1 ||
            (h.dir != VS_CAP_RX && h.dir != VS_CAP_TX) || h.len > VS_MAX_MTU + 18)
            die("capture: bad record");
        uint32_t rec = (uint32_t)((sizeof(h) + h.caplen + 7) & ~7u);
        if (rec > n - off)
            die("capture: record past the end");
        off += rec;
    }
}

/* Chains taken from a port's TX ring (each ends in one of these), and
 * frames offered to its RX ring. */
static uint64_t chains_taken(const struct vs_port_stats *st)
{
    return st->rx_packets + st->rx_drop_runt + st->rx_drop_too_long + st->rx_drop_bad_hdr +
           st->rx_drop_bad_desc + st->rx_drop_desc_limit + st->rx_drop_disabled;
}

static uint64_t frames_offered(const struct vs_port_stats *st)
{
    return st->tx_packets + st->tx_drop_no_buffer + st->tx_drop_desc_limit;
}

/* What vs_port_kick may spend on the kicked port's TX ring: vs_forward.c's
 * KICK_BUDGET (8 bursts) of units, and one chain past it. */
#define KICK_DESCS (8 * VS_BURST * VS_BUDGET_DESCS + VS_FRAME_MAX_DESCS + 1)

/* The descriptor work of one op is bounded by what it moved: at most
 * VS_FRAME_MAX_DESCS + 1 reads per chain taken, twice that per frame
 * offered to an RX ring (a frame is walked again once when the burst's
 * span table fills), and a kick by its budget. */
static void check_work(const struct vs_port_stats *before, const struct vs_port_stats *after,
                       bool kicked)
{
    uint64_t per = VS_FRAME_MAX_DESCS + 1;
    uint64_t d = after->descs - before->descs;
    uint64_t chains = chains_taken(after) - chains_taken(before);
    uint64_t offered = frames_offered(after) - frames_offered(before);
    if (d > per * (chains + 2 * offered))
        die("more descriptor reads than the frames moved allow");
    if (kicked && d > KICK_DESCS + 2 * per * offered)
        die("a kick read more descriptors than its budget");
}

/* A capture filter whose loads land where the frame says (an IPv4 header
 * length, then a word behind it), inside or past the end of frames whose
 * bytes lie scattered in guest memory, and whose verdict (ret a) is a
 * loaded word: what vs_capture.c's interpreter must survive. */
static const struct vs_bpf_insn fuzz_filter[] = {
    {0x28, 0, 0, 12},         /* ldh [12] */
    {0x15, 0, 4, 0x0800},     /* jeq #0x800, else to 6 */
    {0xb1, 0, 0, 14},         /* ldxb 4*([14]&0xf) */
    {0x48, 0, 0, 14},         /* ldh [x + 14] */
    {0x40, 0, 0, 16},         /* ld [x + 16] */
    {0x45, 1, 0, 0x80000000}, /* jset #0x80000000, to 7 */
    {0x80, 0, 0, 0},          /* ld #len */
    {0x16, 0, 0, 0},          /* ret a */
};

/* A port's VLANs (vs_vlan.c): 0 not VLAN-aware, 1 an access port of 10, 2 a
 * trunk of 10 and 20, 3 a trunk of 10 with 20 native, so frames the guest
 * tags (or not) are taken in, refused, tagged and untagged on the way. */
static const uint16_t fuzz_trunks[2] = {10, 20};

static void set_vlan_mode(struct world *w, uint32_t port, uint32_t mode)
{
    static const uint32_t access[4] = {0, 10, 0, 0}, ntrunks[4] = {0, 0, 2, 1},
                          native[4] = {0, 0, 0, 20};
    mode %= 4;
    if (vs_port_set_vlans(w->sw, port, access[mode], fuzz_trunks, ntrunks[mode], native[mode]) < 0)
        die("vs_port_set_vlans");
    w->vmode[port] = mode;
}

static bool vlan_carried(uint32_t mode, uint32_t vlan)
{
    return mode == 0 ? vlan == 0 : mode == 1 ? vlan == 10 : vlan == 10 || vlan == 20;
}

static void run_op(struct world *w, uint8_t op, uint8_t arg)
{
    uint32_t port = arg & 1;
    struct vs_port_stats before[2], after[2];
    vs_port_get_stats(w->sw, 0, &before[0]);
    vs_port_get_stats(w->sw, 1, &before[1]);
    uint32_t kind = op < 224 ? op % 14 : 14 + (op & 1);
    switch (kind) {
    case 0:
    case 1:
    case 2:     /* the common case: a guest kicks its TX ring */
        vs_port_kick(w->sw, port, VS_QUEUE_TX);
        break;
    case 3:
        vs_port_kick(w->sw, port, VS_QUEUE_RX);
        break;
    case 4:
        vs_poll(w->sw, 1 + arg);
        break;
    case 5: {   /* the guest adds more to a ring */
        uint16_t *idx = avail_idx(w, arg & 3);
        if (idx)
            __atomic_store_n(idx, (uint16_t)(*idx + 1 + ((arg >> 2) & 7)), __ATOMIC_RELEASE);
        break;
    }
    case 6: {   /* GET_VRING_BASE, then the front end starts the ring again */
        uint32_t k = arg & 3;
        int base = vs_vring_stop(w->sw, k / 2, k % 2);
        if (arg & 4)
            setup_ring(w, k, base < 0 ? 0 : (uint16_t)base);
        break;
    }
    case 7:     /* reconnect */
        vs_port_reset(w->sw, port);
        if (arg & 2)
            setup_port(w, port);
        break;
    case 8:
        if (arg & 16)
            set_vlan_mode(w, port, (uint32_t)arg >> 5);
        else if (arg & 2)
            vs_fdb_age(w->sw, 0);
        else
            vs_fdb_flush(w->sw, (arg & 4) ? -1 : (int)port, arg & 8);
        break;
    case 9: {
        uint32_t snaplen = 1 + (uint32_t)(arg >> 1) * 40;
        vs_capture_start(w->sw, port, 1 + (arg >> 6) % 3, snaplen, 64u << 10);
        if (arg & 1)
            vs_capture_set_filter(w->sw, port, fuzz_filter,
                                  sizeof(fuzz_filter) / sizeof(fuzz_filter[0]));
        break;
    }
    case 10: {
        uint32_t n = vs_capture_read(w->sw, port, capbuf, (arg & 2) ? 100 : sizeof(capbuf));
        check_capture(n, VS_MAX_MTU + 18);
        if (arg & 4)
            vs_capture_stop(w->sw, port);
        break;
    }
    case 11:
        w->features[port] = feature_bits(arg >> 1);
        vs_port_set_features(w->sw, port, w->features[port]);
        break;
    case 12:
        set_mem(w, port);
        break;
    case 13:
        vs_port_set_mtu(w->sw, port, VS_MIN_MTU + (uint32_t)arg * 36);
        break;
    case 14:
        long_chain(w, arg);
        break;
    case 15:
        tiny_heads(w, arg);
        break;
    }
    vs_port_get_stats(w->sw, 0, &after[0]);
    vs_port_get_stats(w->sw, 1, &after[1]);
    /* Counters survive resets and reconnects (op 7): they only grow. */
    for (uint32_t i = 0; i < 2; i++)
        check_work(&before[i], &after[i], kind <= 2 && i == port);
    check_port(w, 0);
    check_port(w, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader in = {data, size};
    struct world w;
    memset(&w, 0, sizeof(w));
    init_once();

    w.nreg = 1 + u8(&in) % 3;
    uint8_t order = u8(&in);
    w.features[0] = feature_bits(u8(&in));
    w.features[1] = feature_bits(u8(&in));
    uint32_t num[2];
    num[0] = 1u << (u8(&in) % 9);
    num[1] = 1u << (u8(&in) % 9);
    w.mtu[0] = VS_MIN_MTU + u16(&in) % (VS_MAX_MTU - VS_MIN_MTU + 1);
    w.mtu[1] = VS_MIN_MTU + u16(&in) % (VS_MAX_MTU - VS_MIN_MTU + 1);
    uint8_t fdb_byte = u8(&in);
    uint32_t fdb_size = 1 + fdb_byte % 16;
    uint8_t vlan_byte = fdb_byte >> 4;
    uint8_t layout = u8(&in);
    uint8_t logb = 0;

    /* Regions: region 0 holds the rings; gpa gaps may be zero, making
     * regions adjacent in guest-physical space but not in the file. */
    uint64_t gpa = (uint64_t)(u8(&in) % 16) * PAGE;
    for (uint32_t i = 0; i < 3; i++) {
        if (i > 0)
            gpa += (uint64_t)(u8(&in) % 4) * PAGE;
        uint64_t sz = i == 0 ? REGION0_SIZE : (uint64_t)(1 + u8(&in) % 4) * PAGE;
        if (i == 0)
            logb = u8(&in);
        w.reg[i] = (struct region){gpa, sz, UA_BASE + (uint64_t)i * 0x10000000ULL, 0};
        gpa += sz;
    }
    /* File order: regions in one of six permutations, a canary gap before each. */
    static const uint8_t perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                        {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    const uint8_t *perm = perms[order % 6];
    uint64_t off = GAP;
    for (uint32_t j = 0; j < 3; j++) {
        struct region *r = &w.reg[perm[j]];
        if (perm[j] >= w.nreg)
            continue;
        r->off = off;
        off += r->size + GAP;
    }
    if (off > FILE_SIZE)
        die("layout does not fit the file");

    /* Rings. */
    uint64_t pos = 0;
    for (uint32_t k = 0; k < 4; k++) {
        struct ring *r = &w.ring[k];
        r->num = num[k / 2];
        uint16_t d = u16(&in), a = u16(&in), u = u16(&in);
        if (layout == 0) {
            r->desc = pos;
            r->avail = r->desc + 16 * r->num;
            r->used = (r->avail + 6 + 2 * r->num + 3) & ~3ULL;
            pos = (r->used + 6 + 8 * r->num + 15) & ~15ULL;
        } else {
            r->desc = d % REGION0_SIZE;
            r->avail = a % REGION0_SIZE;
            r->used = u % REGION0_SIZE;
        }
    }
    for (uint32_t k = 0; k < 4; k++)
        w.base[k] = u16(&in);
    uint32_t nops = u8(&in) % 24;
    uint8_t ops[2 * 24];
    for (uint32_t i = 0; i < 2 * nops; i++)
        ops[i] = u8(&in);

    if (logb & 0x80) {
        w.log_off = (uint64_t)(logb & 7) * 8;
        w.log_size = 1 + ((logb >> 3) & 15);
    }
    memset(logfile, CANARY, LOG_FILE);
    if (w.log_size)
        memset(logfile + w.log_off, 0, w.log_size);

    /* Guest memory: canaries everywhere, then the input over the regions. */
    memset(file, CANARY, FILE_SIZE);
    for (uint32_t i = 0; i < w.nreg; i++) {
        uint8_t *dst = file + w.reg[i].off;
        size_t n = in.n < w.reg[i].size ? in.n : w.reg[i].size;
        memset(dst, 0, w.reg[i].size);
        memcpy(dst, in.p, n);
        in.p += n;
        in.n -= n;
    }

    w.sw = vs_switch_new(fdb_size);
    if (!w.sw)
        die("vs_switch_new");
    for (uint32_t port = 0; port < 2; port++) {
        if (vs_port_open(w.sw, port, VS_PORT_VHOST, w.mtu[port]) < 0)
            die("vs_port_open");
        setup_port(&w, port);
        set_vlan_mode(&w, port, (uint32_t)vlan_byte >> (2 * port));
    }
    check_port(&w, 0);
    check_port(&w, 1);
    for (uint32_t i = 0; i < nops; i++)
        run_op(&w, ops[2 * i], ops[2 * i + 1]);
    /* Every input ends with both TX rings kicked and a poll. */
    run_op(&w, 0, 0);
    run_op(&w, 0, 1);
    vs_poll(w.sw, 64);

    struct vs_fdb_entry fdb[64];
    uint32_t n = vs_fdb_dump(w.sw, fdb, 64);
    if (n > fdb_size)
        die("MAC table holds more than its size");
    for (uint32_t i = 0; i < n; i++)
        if (fdb[i].port > 1 || fdb[i].mac >> 48)
            die("MAC table entry out of range");
        else if (!vlan_carried(w.vmode[fdb[i].port], fdb[i].vlan))
            die("MAC table entry on a VLAN its port does not carry");
    for (uint32_t port = 0; port < 2; port++) {
        struct vs_port_stats st;
        vs_port_get_stats(w.sw, port, &st);
        if (st.fdb_count > fdb_size)
            die("fdb_count out of range");
        if (verbose)
            fprintf(stderr,
                    "port %u: state %u error '%s' rx %lu tx %lu drop runt %lu long %lu "
                    "hdr %lu desc %lu desc_limit %lu disabled %lu nobuf %lu tx_desc_limit %lu "
                    "flood %lu ring_errors %lu calls %lu cap %lu descs %lu\n",
                    port, vs_port_state(w.sw, port), vs_port_error(w.sw, port),
                    st.rx_packets, st.tx_packets, st.rx_drop_runt, st.rx_drop_too_long,
                    st.rx_drop_bad_hdr, st.rx_drop_bad_desc, st.rx_drop_desc_limit,
                    st.rx_drop_disabled, st.tx_drop_no_buffer, st.tx_drop_desc_limit,
                    st.tx_flood, st.ring_errors, st.calls, st.cap_packets, st.descs);
    }
    vs_switch_free(w.sw);
    check_log(&w);

    /* The regions were laid out in file order with a gap before each. */
    uint64_t at = 0;
    for (uint32_t j = 0; j <= 3; j++) {
        uint64_t end = FILE_SIZE;
        if (j < 3 && perm[j] >= w.nreg)
            continue;
        if (j < 3)
            end = w.reg[perm[j]].off;
        for (; at < end; at += PAGE) {
            uint64_t n = end - at < PAGE ? end - at : PAGE;
            if (memcmp(file + at, canary_page, n) != 0)
                die("write outside guest memory");
        }
        if (j < 3)
            at = end + w.reg[perm[j]].size;
    }
    uint64_t v;
    for (int i = 0; i < 4; i++) {
        while (read(kick_fd[i], &v, sizeof(v)) == sizeof(v))
            ;
        while (read(call_fd[i], &v, sizeof(v)) == sizeof(v))
            ;
    }
    return 0;
}
