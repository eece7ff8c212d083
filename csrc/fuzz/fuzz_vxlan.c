/* libFuzzer harness for VXLAN ports: decapsulation of hostile datagrams,
 * learning behind remotes, flooding and unicast back out through encap.
 *
 * Links the vs_*.c sources directly.  One input is a script of datagrams
 * and frames.  Datagrams travel through real sockets on the loopback (the
 * fast path's recvmmsg reads them), from a remote in the port's flood list
 * (127.0.0.2) or from one that is not (127.0.0.3), so every check of the
 * decapsulation runs on bytes the fuzzer chose, and accepted frames are
 * learned, flooded and forwarded as the switch does: to a second VXLAN port
 * on the same socket (VNI 7: datagrams of that VNI are its own, from its
 * remote 127.0.0.4, or 127.0.0.2 when it learns remotes) and to a TAP-kind
 * port (one end of a socketpair), whose frames the script can also inject
 * so that they go out unicast to a learned remote.  With a
 * raw socket (root) the VXLAN ports really encapsulate and send; without
 * one their sends fail and are counted, the rest is the same.
 *
 * Besides ASan/UBSan, the harness checks what the sanitizers cannot see:
 * every datagram is accounted for exactly once, on one of the two VXLAN
 * ports (taken, or dropped for one reason), no port breaks, and every MAC table entry names a remote the
 * port has (a reconfiguration renumbers them).
 *
 * Build and run: scripts/fuzz vxlan [SECONDS]; FUZZ_VXLAN_VERBOSE=1 scripts/fuzz
 * vxlan repro FILE prints what an input did.  Input layout (missing bytes
 * read as zero):
 *
 *   0   u8  bit 0 learn_remotes, bit 1 a second flood remote (127.0.0.5),
 *           bit 2 learn_remotes on port 1 (VNI 7)
 *   1   u16 inner MTU (VS_MIN_MTU + value % 9000, capped at VS_MAX_MTU)
 *   3   u24 VNI
 *   6   u8  MAC limit of the port (0 = none)
 *   7.. records: u8 op, u16 length (little-endian), length bytes of data
 *       op % 6: 0 datagram from 127.0.0.2, 1 from 127.0.0.3, 2 frame into
 *       the TAP port, 3 poll, 4 datagram padded with zeros to 9000 + length
 *       % 1024 bytes (over a receive buffer when long enough), 5 reconfigure
 *       (learn_remotes = data[0] & 1, flood list of data[0] >> 1 & 3 remotes)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fastpath.h"

#define BIG 9000
static int rx0 = -1, tx = -1, from2 = -1, from3 = -1, tap_sw = -1, tap_peer = -1;
static uint16_t port0;
static uint8_t bigbuf[BIG + 1024];

static int udp_at(const char *addr, uint16_t port)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &a.sin_addr);
    int big = 1 << 22;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
        perror("fuzz_vxlan: udp socket");
        abort();
    }
    return s;
}

static void setup(void)
{
    if (rx0 >= 0)
        return;
    rx0 = udp_at("127.0.0.1", 0);
    from2 = udp_at("127.0.0.2", 0);
    from3 = udp_at("127.0.0.3", 0);
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    getsockname(rx0, (struct sockaddr *)&a, &len);
    port0 = ntohs(a.sin_port);
    /* As vswitch.netsys.vxlan opens it; without CAP_NET_RAW there is none. */
    tx = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
    if (tx >= 0) {
        struct sock_filter drop = BPF_STMT(BPF_RET | BPF_K, 0);
        struct sock_fprog prog = {1, &drop};
        int pmtu = IP_PMTUDISC_DO;
        struct sockaddr_in l = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        setsockopt(tx, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
        setsockopt(tx, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof(pmtu));
        bind(tx, (struct sockaddr *)&l, sizeof(l));
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    int big = 1 << 22;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    tap_sw = sv[0];
    tap_peer = sv[1];
}

static void drain(int fd)
{
    static uint8_t b[65536];
    while (recv(fd, b, sizeof(b), MSG_DONTWAIT) >= 0)
        ;
}

static void send_from(int s, const uint8_t *p, size_t n)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port0),
                             .sin_addr.s_addr = htonl(0x7f000001)};
    /* Loopback queues hold them all (4 MiB); a full one just loses the datagram. */
    (void)!sendto(s, p, n, 0, (struct sockaddr *)&to, sizeof(to));
}

static void addr4(uint8_t out[16], uint32_t host)
{
    memset(out, 0, 16);
    uint32_t be = htonl(host);
    memcpy(out, &be, 4);
}

/* Remotes: nremotes of 127.0.0.2, .5, .4 from the first'th. */
static int configure(struct vs_switch *sw, uint32_t port, uint32_t vni, bool learn,
                     uint32_t first, uint32_t nremotes, int tx_fd, uint16_t dstport)
{
    static const uint32_t hosts[3] = {0x7f000002, 0x7f000005, 0x7f000004};
    uint8_t remotes[3][16], local[16];
    if (first + nremotes > 3)
        nremotes = 3 - first;
    for (uint32_t i = 0; i < nremotes; i++)
        addr4(remotes[i], hosts[first + i]);
    addr4(local, 0x7f000001);
    struct vs_vxlan_config c = {.vni = vni, .learn_remotes = learn, .nremotes = nremotes,
                                .tx_fd = tx_fd, .dstport = dstport, .remotes = &remotes[0][0]};
    memcpy(c.local, local, 16);
    return vs_vxlan_configure(sw, port, &c);
}

/* Every datagram is taken or dropped for exactly one reason, by one of the
 * two VXLAN ports. */
static void check(struct vs_switch *sw)
{
    uint64_t datagrams = 0, dropped = 0, taken = 0;
    for (uint32_t p = 0; p < 2; p++) {
        struct vs_vxlan_stats v;
        struct vs_port_stats s;
        vs_vxlan_get_stats(sw, p, &v);
        vs_port_get_stats(sw, p, &s);
        datagrams += v.rx_datagrams;
        dropped += v.rx_drop_vxlan_short + v.rx_drop_vxlan_flags + v.rx_drop_vxlan_vni +
                   v.rx_drop_vxlan_remote + v.rx_drop_vxlan_remotes_full +
                   v.rx_drop_vxlan_trunc + s.rx_drop_runt + s.rx_drop_too_long;
        taken += s.rx_packets;
    }
    if (datagrams != dropped + taken) {
        fprintf(stderr, "datagrams %llu != dropped %llu + taken %llu\n",
                (unsigned long long)datagrams, (unsigned long long)dropped,
                (unsigned long long)taken);
        abort();
    }
    for (uint32_t p = 0; p < 3; p++) {
        if (vs_port_state(sw, p) & VS_STATE_BROKEN) {
            fprintf(stderr, "port %u broken: %s\n", p, vs_port_error(sw, p));
            abort();
        }
    }
    static struct vs_fdb_entry e[64];
    uint32_t n = vs_fdb_dump(sw, e, 64);
    for (uint32_t i = 0; i < n && i < 64; i++) {
        uint32_t have = vs_vxlan_remotes(sw, e[i].port, NULL, 0);
        if (e[i].remote > have || (e[i].remote && e[i].port == 2)) {
            fprintf(stderr, "entry on port %u names remote %u of %u\n", e[i].port,
                    e[i].remote, have);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    uint8_t hdr[7] = {0};
    memcpy(hdr, data, size < 7 ? size : 7);
    drain(rx0);
    drain(tap_peer);
    drain(tap_sw);
    struct vs_switch *sw = vs_switch_new(32);
    if (!sw)
        abort();
    uint32_t mtu = VS_MIN_MTU + (uint32_t)(hdr[1] | hdr[2] << 8) % 9000;
    if (mtu > VS_MAX_MTU)
        mtu = VS_MAX_MTU;
    uint32_t vni = (uint32_t)hdr[3] | (uint32_t)hdr[4] << 8 | (uint32_t)hdr[5] << 16;
    if (vs_port_open(sw, 0, VS_PORT_VXLAN, mtu) < 0 || vs_port_open(sw, 1, VS_PORT_VXLAN, 1500) < 0 ||
        vs_port_open(sw, 2, VS_PORT_TAP, 9000) < 0)
        abort();
    if (configure(sw, 0, vni, hdr[0] & 1, 0, 1 + (hdr[0] >> 1 & 1), tx, port0) < 0 ||
        configure(sw, 1, 7, hdr[0] >> 2 & 1, 2, 1, tx, 9) < 0)
        abort();
    vs_port_set_mac_limit(sw, 0, hdr[6]);
    vs_port_set_fd(sw, 0, rx0);
    vs_port_set_fd(sw, 1, rx0);   /* the same endpoint: VNI 7's datagrams are port 1's */
    vs_port_set_fd(sw, 2, tap_sw);
    size_t at = 7;
    while (at + 3 <= size) {
        uint8_t op = data[at] % 6;
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at)
            len = size - at;
        const uint8_t *d = data + at;
        at += len;
        switch (op) {
        case 0:
        case 1:
            send_from(op == 0 ? from2 : from3, d, len);
            break;
        case 2:
            /* A tap never reads 0 bytes (that is a deleted interface): a
             * socketpair would, for an empty datagram. */
            if (len > 0)
                (void)!send(tap_peer, d, len, MSG_DONTWAIT);
            break;
        case 3:
            vs_poll(sw, 1 + (uint32_t)len % 256);
            break;
        case 4: {
            size_t n = BIG + len % 1024, k = len < n ? len : n;
            memset(bigbuf, 0, n);
            memcpy(bigbuf, d, k);
            send_from(from2, bigbuf, n);
            break;
        }
        case 5: {
            uint8_t b = len ? d[0] : 0;
            if (configure(sw, 0, vni, b & 1, 0, b >> 1 & 3, tx, port0) < 0)
                abort();
            break;
        }
        }
        check(sw);
    }
    /* Whatever is still queued goes through too. */
    for (int i = 0; i < 64 && vs_poll(sw, 64) > 0; i++)
        ;
    check(sw);
    if (getenv("FUZZ_VXLAN_VERBOSE")) {
        /* What an input did, for writing seeds: scripts/fuzz vxlan repro FILE */
        struct vs_vxlan_stats v;
        struct vs_port_stats s[3];
        vs_vxlan_get_stats(sw, 0, &v);
        for (uint32_t p = 0; p < 3; p++)
            vs_port_get_stats(sw, p, &s[p]);
        fprintf(stderr,
                "vx0: datagrams %llu short %llu flags %llu vni %llu remote %llu full %llu "
                "trunc %llu runt %llu long %llu taken %llu learned-remotes %llu tx %llu/%llu\n"
                "vx1 tx %llu, tap tx %llu rx %llu; raw socket %s\n",
                (unsigned long long)v.rx_datagrams, (unsigned long long)v.rx_drop_vxlan_short,
                (unsigned long long)v.rx_drop_vxlan_flags, (unsigned long long)v.rx_drop_vxlan_vni,
                (unsigned long long)v.rx_drop_vxlan_remote,
                (unsigned long long)v.rx_drop_vxlan_remotes_full,
                (unsigned long long)v.rx_drop_vxlan_trunc, (unsigned long long)s[0].rx_drop_runt,
                (unsigned long long)s[0].rx_drop_too_long, (unsigned long long)s[0].rx_packets,
                (unsigned long long)v.remotes_learned, (unsigned long long)s[0].tx_packets,
                (unsigned long long)v.tx_datagrams, (unsigned long long)s[1].tx_packets,
                (unsigned long long)s[2].tx_packets, (unsigned long long)s[2].rx_packets,
                tx >= 0 ? "yes" : "no");
    }
    vs_switch_free(sw);
    return 0;
}
