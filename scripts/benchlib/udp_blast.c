/* A UDP traffic source for scripts/bench_vxlan.py: sendmmsg bursts of one
 * flow's datagrams of a given payload size to DST:PORT for SECONDS, then
 * prints how many it sent.  usage: udp_blast DST PORT PAYLOAD SECONDS */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: udp_blast DST PORT PAYLOAD SECONDS\n");
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1)
        return 2;
    size_t len = (size_t)atoi(argv[3]);
    double secs = atof(argv[4]);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof(to)) < 0) {
        perror("udp_blast");
        return 1;
    }
    static char buf[65536];
    memset(buf, 0x5a, sizeof(buf));
    struct iovec iov = {buf, len};
    struct mmsghdr m[BATCH];
    memset(m, 0, sizeof(m));
    for (int i = 0; i < BATCH; i++) {
        m[i].msg_hdr.msg_iov = &iov;
        m[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long sent = 0;
    double end = now() + secs;
    while (now() < end) {
        int n = sendmmsg(s, m, BATCH, 0);
        if (n > 0)
            sent += (unsigned long long)n;
    }
    printf("%llu\n", sent);
    return 0;
}
