"""vswitch: a userspace virtual switch for QEMU vhost-user guests, with a C fast path."""

__version__ = "0.1.0"
