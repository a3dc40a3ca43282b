#ifndef TCPAOD_CNFQ_SHIM_H
#define TCPAOD_CNFQ_SHIM_H
// <netinet/in.h> must come before any <linux/...> header: the kernel's libc-compat guards then
// skip their own in_addr/in6_addr, which would otherwise clash with SwiftGlibc's.
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stddef.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#endif
