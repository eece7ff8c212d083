"""vswitch: a userspace virtual switch for QEMU vhost-user guests, with a C fast path."""

__version__ = "0.1.0"
# The control protocol's version, in the `hello` reply: raised when a command changes in
# a way an existing script would notice (an argument or result key removed or changed).
PROTOCOL = 1
