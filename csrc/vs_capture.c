/* Packet capture: a byte ring per port that the fast path fills and the
 * control plane drains into a pcap file.  Single producer (whoever runs the
 * data path), single consumer (the event loop), no locks: head and tail are
 * published with release stores.  A full ring drops the frame for the
 * capture only; the port never waits for a reader.
 *
 * A capture may carry a classic BPF filter (what tcpdump's expressions
 * compile to: the daemon compiles it with libpcap's pcap_compile).  It runs
 * here, over the frame where it lies (the switch's copy of the Ethernet
 * header, then the segments in guest memory), before anything is copied: a
 * frame it rejects costs the instructions it ran and a counter.  The
 * interpreter follows libpcap's bpf_filter() (bpf_filter.c) instruction for
 * instruction, but reads a scattered frame instead of one buffer; every load
 * is checked against the frame's length, so a program reads nothing outside
 * the frame whatever the guest sent. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vs_capture.h"
#include "vs_internal.h"

_Static_assert((VS_CAP_MIN_RING & (VS_CAP_MIN_RING - 1)) == 0 &&
                   (VS_CAP_MAX_RING & (VS_CAP_MAX_RING - 1)) == 0,
               "capture rings are powers of two");

static inline uint32_t rec_size(uint32_t caplen)
{
    return (uint32_t)((sizeof(struct vs_cap_hdr) + caplen + 7) & ~7u);
}

static void ring_put(struct vs_capture *c, uint64_t at, const void *src, uint32_t len)
{
    uint32_t off = (uint32_t)(at & (c->size - 1));
    uint32_t first = len < c->size - off ? len : c->size - off;
    memcpy(c->buf + off, src, first);
    memcpy(c->buf, (const uint8_t *)src + first, len - first);
}

static void ring_get(const struct vs_capture *c, uint64_t at, void *dst, uint32_t len)
{
    uint32_t off = (uint32_t)(at & (c->size - 1));
    uint32_t first = len < c->size - off ? len : c->size - off;
    memcpy(dst, c->buf + off, first);
    memcpy((uint8_t *)dst + first, c->buf, len - first);
}

/* ---------------------------------------------------------------- BPF */

/* Opcode fields (libpcap's pcap/bpf.h; the values are the ABI). */
#define BPF_CLASS(c) ((c) & 0x07)
#define BPF_LD 0x00
#define BPF_LDX 0x01
#define BPF_ST 0x02
#define BPF_STX 0x03
#define BPF_ALU 0x04
#define BPF_JMP 0x05
#define BPF_RET 0x06
#define BPF_MISC 0x07
#define BPF_W 0x00
#define BPF_H 0x08
#define BPF_B 0x10
#define BPF_IMM 0x00
#define BPF_ABS 0x20
#define BPF_IND 0x40
#define BPF_MEM 0x60
#define BPF_LEN 0x80
#define BPF_MSH 0xa0
#define BPF_OP(c) ((c) & 0xf0)
#define BPF_ADD 0x00
#define BPF_SUB 0x10
#define BPF_MUL 0x20
#define BPF_DIV 0x30
#define BPF_OR 0x40
#define BPF_AND 0x50
#define BPF_LSH 0x60
#define BPF_RSH 0x70
#define BPF_NEG 0x80
#define BPF_MOD 0x90
#define BPF_XOR 0xa0
#define BPF_JA 0x00
#define BPF_JEQ 0x10
#define BPF_JGT 0x20
#define BPF_JGE 0x30
#define BPF_JSET 0x40
#define BPF_SRC(c) ((c) & 0x08)
#define BPF_K 0x00
#define BPF_X 0x08
#define BPF_A 0x10
#define BPF_TAX 0x00
#define BPF_TXA 0x80
#define BPF_MEMWORDS 16

/* The size in bytes a load of this opcode reads, 0 when it is no packet load. */
static uint32_t load_size(uint16_t code)
{
    switch (code) {
    case BPF_LD | BPF_W | BPF_ABS:
    case BPF_LD | BPF_W | BPF_IND:
        return 4;
    case BPF_LD | BPF_H | BPF_ABS:
    case BPF_LD | BPF_H | BPF_IND:
        return 2;
    case BPF_LD | BPF_B | BPF_ABS:
    case BPF_LD | BPF_B | BPF_IND:
    case BPF_LDX | BPF_B | BPF_MSH:
        return 1;
    }
    return 0;
}

/* libpcap's bpf_validate(), for the opcodes its bpf_filter() runs: every
 * jump lands inside the program (jumps only go forward, so it ends), scratch
 * memory indexes are below BPF_MEMWORDS, no division or shift by a constant
 * that has no result, and the last instruction returns. */
static bool bpf_valid(const struct vs_bpf_insn *prog, uint32_t n)
{
    if (n == 0 || n > VS_BPF_MAX_INSNS || BPF_CLASS(prog[n - 1].code) != BPF_RET)
        return false;
    for (uint32_t i = 0; i < n; i++) {
        const struct vs_bpf_insn *f = &prog[i];
        uint32_t left = n - i - 1; /* instructions after this one */
        switch (f->code) {
        case BPF_LD | BPF_W | BPF_ABS:
        case BPF_LD | BPF_H | BPF_ABS:
        case BPF_LD | BPF_B | BPF_ABS:
        case BPF_LD | BPF_W | BPF_IND:
        case BPF_LD | BPF_H | BPF_IND:
        case BPF_LD | BPF_B | BPF_IND:
        case BPF_LDX | BPF_B | BPF_MSH:
        case BPF_LD | BPF_W | BPF_LEN:
        case BPF_LDX | BPF_W | BPF_LEN:
        case BPF_LD | BPF_IMM:
        case BPF_LDX | BPF_W | BPF_IMM:
        case BPF_ALU | BPF_ADD | BPF_K:
        case BPF_ALU | BPF_SUB | BPF_K:
        case BPF_ALU | BPF_MUL | BPF_K:
        case BPF_ALU | BPF_AND | BPF_K:
        case BPF_ALU | BPF_OR | BPF_K:
        case BPF_ALU | BPF_XOR | BPF_K:
        case BPF_ALU | BPF_ADD | BPF_X:
        case BPF_ALU | BPF_SUB | BPF_X:
        case BPF_ALU | BPF_MUL | BPF_X:
        case BPF_ALU | BPF_DIV | BPF_X:
        case BPF_ALU | BPF_MOD | BPF_X:
        case BPF_ALU | BPF_AND | BPF_X:
        case BPF_ALU | BPF_OR | BPF_X:
        case BPF_ALU | BPF_XOR | BPF_X:
        case BPF_ALU | BPF_LSH | BPF_X:
        case BPF_ALU | BPF_RSH | BPF_X:
        case BPF_ALU | BPF_NEG:
        case BPF_RET | BPF_K:
        case BPF_RET | BPF_A:
        case BPF_MISC | BPF_TAX:
        case BPF_MISC | BPF_TXA:
            break;
        case BPF_LD | BPF_MEM:
        case BPF_LDX | BPF_W | BPF_MEM:
        case BPF_ST:
        case BPF_STX:
            if (f->k >= BPF_MEMWORDS)
                return false;
            break;
        case BPF_ALU | BPF_DIV | BPF_K:
        case BPF_ALU | BPF_MOD | BPF_K:
            if (f->k == 0)
                return false;
            break;
        case BPF_ALU | BPF_LSH | BPF_K:
        case BPF_ALU | BPF_RSH | BPF_K:
            if (f->k >= 32)
                return false;
            break;
        case BPF_JMP | BPF_JA:
            if (f->k >= left)
                return false;
            break;
        case BPF_JMP | BPF_JEQ | BPF_K:
        case BPF_JMP | BPF_JGT | BPF_K:
        case BPF_JMP | BPF_JGE | BPF_K:
        case BPF_JMP | BPF_JSET | BPF_K:
        case BPF_JMP | BPF_JEQ | BPF_X:
        case BPF_JMP | BPF_JGT | BPF_X:
        case BPF_JMP | BPF_JGE | BPF_X:
        case BPF_JMP | BPF_JSET | BPF_X:
            if (f->jt >= left || f->jf >= left)
                return false;
            break;
        default:
            return false;
        }
    }
    return true;
}

/* size (1, 2 or 4) bytes at off of the frame, big-endian, into *out; false
 * when they are not all inside the frame.  The frame is eth (the first
 * VS_ETH_HDR bytes, or fewer for a runt), then its segments. */
static bool pkt_load(const struct vs_pkt *pkt, uint64_t off, uint32_t size, uint32_t *out)
{
    if (off + size > pkt->len)
        return false;
    uint32_t o = (uint32_t)off;
    uint32_t head = pkt->len < VS_ETH_HDR ? pkt->len : VS_ETH_HDR;
    uint32_t v = 0, got = 0;
    while (got < size && o < head) {
        v = v << 8 | pkt->eth[o++];
        got++;
    }
    uint32_t base = VS_ETH_HDR; /* frame offset of the segment below */
    for (uint32_t k = 0; got < size && k < pkt->nseg && k < VS_PKT_SEGS + 1; k++) {
        const struct vs_seg *s = &pkt->seg[k];
        if (o >= base + s->len) {
            base += s->len;
            continue;
        }
        while (got < size && o < base + s->len) {
            v = v << 8 | s->p[o - base];
            o++;
            got++;
        }
        base += s->len;
    }
    if (got < size)
        return false; /* the segments hold less than len says: reject */
    *out = v;
    return true;
}

/* The program's verdict on the frame: 0 = rejected, else the bytes to keep
 * (pcap_compile's programs return the snap length or 0).  libpcap's
 * bpf_filter() semantics: a load outside the frame or a division by zero
 * rejects; prog has passed bpf_valid(). */
static uint32_t bpf_run(const struct vs_bpf_insn *prog, const struct vs_pkt *pkt)
{
    uint32_t A = 0, X = 0, v;
    uint32_t mem[BPF_MEMWORDS] = {0};
    for (const struct vs_bpf_insn *f = prog;; f++) {
        switch (f->code) {
        case BPF_RET | BPF_K:
            return f->k;
        case BPF_RET | BPF_A:
            return A;
        case BPF_LD | BPF_W | BPF_ABS:
        case BPF_LD | BPF_H | BPF_ABS:
        case BPF_LD | BPF_B | BPF_ABS:
            if (!pkt_load(pkt, f->k, load_size(f->code), &A))
                return 0;
            break;
        case BPF_LD | BPF_W | BPF_IND:
        case BPF_LD | BPF_H | BPF_IND:
        case BPF_LD | BPF_B | BPF_IND:
            if (!pkt_load(pkt, (uint64_t)X + f->k, load_size(f->code), &A))
                return 0;
            break;
        case BPF_LDX | BPF_B | BPF_MSH:
            if (!pkt_load(pkt, f->k, 1, &v))
                return 0;
            X = (v & 0xf) << 2;
            break;
        case BPF_LD | BPF_W | BPF_LEN:
            A = pkt->len;
            break;
        case BPF_LDX | BPF_W | BPF_LEN:
            X = pkt->len;
            break;
        case BPF_LD | BPF_IMM:
            A = f->k;
            break;
        case BPF_LDX | BPF_W | BPF_IMM:
            X = f->k;
            break;
        case BPF_LD | BPF_MEM:
            A = mem[f->k];
            break;
        case BPF_LDX | BPF_W | BPF_MEM:
            X = mem[f->k];
            break;
        case BPF_ST:
            mem[f->k] = A;
            break;
        case BPF_STX:
            mem[f->k] = X;
            break;
        case BPF_JMP | BPF_JA:
            f += f->k;
            break;
        case BPF_JMP | BPF_JGT | BPF_K:
            f += (A > f->k) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JGE | BPF_K:
            f += (A >= f->k) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JEQ | BPF_K:
            f += (A == f->k) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JSET | BPF_K:
            f += (A & f->k) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JGT | BPF_X:
            f += (A > X) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JGE | BPF_X:
            f += (A >= X) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JEQ | BPF_X:
            f += (A == X) ? f->jt : f->jf;
            break;
        case BPF_JMP | BPF_JSET | BPF_X:
            f += (A & X) ? f->jt : f->jf;
            break;
        case BPF_ALU | BPF_ADD | BPF_X:
            A += X;
            break;
        case BPF_ALU | BPF_SUB | BPF_X:
            A -= X;
            break;
        case BPF_ALU | BPF_MUL | BPF_X:
            A *= X;
            break;
        case BPF_ALU | BPF_DIV | BPF_X:
            if (X == 0)
                return 0;
            A /= X;
            break;
        case BPF_ALU | BPF_MOD | BPF_X:
            if (X == 0)
                return 0;
            A %= X;
            break;
        case BPF_ALU | BPF_AND | BPF_X:
            A &= X;
            break;
        case BPF_ALU | BPF_OR | BPF_X:
            A |= X;
            break;
        case BPF_ALU | BPF_XOR | BPF_X:
            A ^= X;
            break;
        case BPF_ALU | BPF_LSH | BPF_X:
            A = X < 32 ? A << X : 0;
            break;
        case BPF_ALU | BPF_RSH | BPF_X:
            A = X < 32 ? A >> X : 0;
            break;
        case BPF_ALU | BPF_ADD | BPF_K:
            A += f->k;
            break;
        case BPF_ALU | BPF_SUB | BPF_K:
            A -= f->k;
            break;
        case BPF_ALU | BPF_MUL | BPF_K:
            A *= f->k;
            break;
        case BPF_ALU | BPF_DIV | BPF_K:
            A /= f->k;
            break;
        case BPF_ALU | BPF_MOD | BPF_K:
            A %= f->k;
            break;
        case BPF_ALU | BPF_AND | BPF_K:
            A &= f->k;
            break;
        case BPF_ALU | BPF_OR | BPF_K:
            A |= f->k;
            break;
        case BPF_ALU | BPF_XOR | BPF_K:
            A ^= f->k;
            break;
        case BPF_ALU | BPF_LSH | BPF_K:
            A <<= f->k;
            break;
        case BPF_ALU | BPF_RSH | BPF_K:
            A >>= f->k;
            break;
        case BPF_ALU | BPF_NEG:
            A = -A;
            break;
        case BPF_MISC | BPF_TAX:
            X = A;
            break;
        case BPF_MISC | BPF_TXA:
            A = X;
            break;
        default:
            return 0; /* bpf_valid() let no other opcode in */
        }
    }
}

int vs_capture_set_filter(struct vs_switch *sw, uint32_t port, const struct vs_bpf_insn *prog,
                          uint32_t n)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->cap)
        return -ENODEV;
    struct vs_bpf_insn *copy = NULL;
    if (n) {
        if (!prog || !bpf_valid(prog, n))
            return -EINVAL;
        copy = malloc(n * sizeof(*copy));
        if (!copy)
            return -ENOMEM;
        memcpy(copy, prog, n * sizeof(*copy));
    }
    free(p->cap->filter);
    p->cap->filter = copy;
    p->cap->filter_len = n;
    return 0;
}

int64_t vs_bpf_test(const struct vs_bpf_insn *prog, uint32_t n, const uint8_t *frame,
                    uint32_t len, uint32_t seg_len)
{
    if (!prog || !bpf_valid(prog, n) || len > VS_PKT_SIZE)
        return -EINVAL;
    struct vs_pkt pkt = {.len = len};
    uint32_t head = len < VS_ETH_HDR ? len : VS_ETH_HDR;
    memcpy(pkt.eth, frame, head);
    for (uint32_t at = head; at < len && pkt.nseg < VS_PKT_SEGS; pkt.nseg++) {
        uint32_t n_bytes = len - at;
        if (seg_len && n_bytes > seg_len && pkt.nseg + 1 < VS_PKT_SEGS)
            n_bytes = seg_len;
        pkt.seg[pkt.nseg] = (struct vs_seg){.p = frame + at, .len = n_bytes};
        at += n_bytes;
    }
    return bpf_run(prog, &pkt);
}

/* ------------------------------------------------------------ capture */

void vs_capture_frame(struct vs_port *p, uint32_t dir, const struct vs_pkt *pkt)
{
    struct vs_capture *c = p->cap;
    uint32_t len = pkt->len;
    uint32_t caplen = len < c->snaplen ? len : c->snaplen;
    if (c->filter_len) {
        uint32_t keep = bpf_run(c->filter, pkt);
        if (keep == 0) {
            p->st.cap_filtered++;
            return;
        }
        if (keep < caplen)
            caplen = keep;
    }
    uint32_t need = rec_size(caplen);
    uint64_t tail = __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE);
    if (c->size - (c->head - tail) < need) {
        p->st.cap_drops++;
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct vs_cap_hdr h = {
        .ts_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
        .caplen = caplen,
        .len = len,
        .port = p->id,
        .dir = dir,
    };
    ring_put(c, c->head, &h, sizeof(h));
    uint64_t at = c->head + sizeof(h);
    uint32_t n = caplen < VS_ETH_HDR ? caplen : VS_ETH_HDR;
    ring_put(c, at, pkt->eth, n);
    at += n;
    for (uint32_t k = 0; k < pkt->nseg && at < c->head + sizeof(h) + caplen; k++) {
        uint32_t left = (uint32_t)(c->head + sizeof(h) + caplen - at);
        n = pkt->seg[k].len < left ? pkt->seg[k].len : left;
        ring_put(c, at, pkt->seg[k].p, n);
        at += n;
    }
    __atomic_store_n(&c->head, c->head + need, __ATOMIC_RELEASE);
    p->st.cap_packets++;
}

int vs_capture_start(struct vs_switch *sw, uint32_t port, uint32_t dirs, uint32_t snaplen,
                     uint32_t ring_bytes)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p)
        return -ENODEV;
    if (p->cap)
        return -EBUSY;
    if (!dirs || (dirs & ~(uint32_t)(VS_CAP_RX | VS_CAP_TX)) || snaplen == 0 ||
        ring_bytes < VS_CAP_MIN_RING || ring_bytes > VS_CAP_MAX_RING)
        return -EINVAL;
    uint32_t size = VS_CAP_MIN_RING;
    while (size < ring_bytes)
        size <<= 1;
    if (snaplen > VS_PKT_SIZE)
        snaplen = VS_PKT_SIZE;
    struct vs_capture *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->buf = malloc(size);
    if (!c->buf) {
        free(c);
        return -ENOMEM;
    }
    c->size = size;
    c->dirs = dirs;
    c->snaplen = snaplen;
    p->cap = c;
    return 0;
}

void vs_capture_stop(struct vs_switch *sw, uint32_t port)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->cap)
        return;
    free(p->cap->filter);
    free(p->cap->buf);
    free(p->cap);
    p->cap = NULL;
}

uint32_t vs_capture_read(struct vs_switch *sw, uint32_t port, uint8_t *buf, uint32_t max)
{
    struct vs_port *p = vs_port_get(sw, port);
    if (!p || !p->cap)
        return 0;
    struct vs_capture *c = p->cap;
    uint64_t head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
    uint64_t tail = c->tail;
    uint32_t out = 0;
    while (tail < head) {
        struct vs_cap_hdr h;
        ring_get(c, tail, &h, sizeof(h));
        uint32_t n = rec_size(h.caplen);
        if (n > max - out)
            break;
        ring_get(c, tail, buf + out, n);
        out += n;
        tail += n;
    }
    __atomic_store_n(&c->tail, tail, __ATOMIC_RELEASE);
    return out;
}
