#ifndef TCPAOD_CNFQ_SHIM_H
#define TCPAOD_CNFQ_SHIM_H
// <netinet/in.h> must come before any <linux/...> header: the kernel's libc-compat guards then
// skip their own in_addr/in6_addr, which would otherwise clash with SwiftGlibc's.
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <stdint.h>
#include <stddef.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

// recvmmsg(2) and struct mmsghdr are declared by glibc only under _GNU_SOURCE, which the
// Swift Glibc module is built without. Same layout as glibc's struct mmsghdr.
struct tcpaod_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};
extern int recvmmsg(int sockfd, void *msgvec, unsigned int vlen, int flags, struct timespec *timeout);
static inline int tcpaod_recvmmsg(int fd, struct tcpaod_mmsghdr *vec, unsigned int vlen, int flags) {
    return recvmmsg(fd, vec, vlen, flags, 0);
}

// The calling thread's name (15 bytes at most), as `ps -L` and `top -H` show it: prctl(2) is
// variadic, which Swift cannot call.
#include <sys/prctl.h>
static inline int tcpaod_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}
#endif
