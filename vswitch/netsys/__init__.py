"""The host's networking, as the switch and the lab use it: network namespaces,
TUN/TAP interfaces and unix socket files.  One implementation for ports and labs."""
