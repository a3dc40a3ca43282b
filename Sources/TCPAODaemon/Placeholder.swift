import CNetfilterQueue
func _nfqProbe() -> OpaquePointer? { mnl_socket_open(NETLINK_NETFILTER) }
