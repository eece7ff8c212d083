"""cffi builder for vswitch._pcap (out-of-line API mode): the few libpcap calls the daemon
uses to compile a capture filter (pcap_open_dead, pcap_compile, pcap_geterr, pcap_freecode)
and libpcap's own bpf_filter(), which the tests hold the fast path's interpreter against.

A module of its own, not part of vswitch._fastpath: fastpath.h stays the fast path's whole
API (and cdef-clean without libpcap's headers), and the fast path does not link libpcap,
since it runs the compiled program itself (csrc/vs_capture.c) over frames that lie
scattered in guest memory, where bpf_filter() wants one buffer.  Needs libpcap's headers
(Debian: libpcap-dev).
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CDEF = """
typedef struct pcap pcap_t;
struct bpf_insn { unsigned short code; unsigned char jt; unsigned char jf; unsigned int k; };
struct bpf_program { unsigned int bf_len; struct bpf_insn *bf_insns; };
#define DLT_EN10MB 1
#define PCAP_NETMASK_UNKNOWN 4294967295
#define PCAP_ERRBUF_SIZE 256
pcap_t *pcap_open_dead(int linktype, int snaplen);
int pcap_compile(pcap_t *p, struct bpf_program *fp, const char *str, int optimize,
                 unsigned int netmask);
char *pcap_geterr(pcap_t *p);
void pcap_freecode(struct bpf_program *fp);
void pcap_close(pcap_t *p);
const char *pcap_lib_version(void);
unsigned int bpf_filter(const struct bpf_insn *pc, const unsigned char *pkt,
                        unsigned int wirelen, unsigned int buflen);
"""


def make_builder() -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "vswitch._pcap",
        "#include <pcap/pcap.h>",
        libraries=["pcap"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    make_builder().compile(tmpdir=str(out), verbose=False)
