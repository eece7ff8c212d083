"""Test-side tools for vhost-user back ends, installed with vswitch.

- virtio_driver: a virtio-net driver in pure Python that plays the guest, with split
  virtqueues laid out in memfd guest memory, driving the C fast path through cffi;
- vhost_frontend: a vhost-user front end that plays QEMU's side of the protocol (and can
  send anything at all, malformed messages included);
- testpmd: DPDK's testpmd (virtio-user) as an independent front end, driven over a pipe.

The tests and scripts/bench use them; so can anyone debugging a vhost-user back end.  The
product never imports this package: nothing else under vswitch/ may.
"""
