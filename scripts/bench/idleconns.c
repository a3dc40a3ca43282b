/*
 * idleconns.c - opens and holds many idle TCP connections, for measuring tcpaod's memory per
 * idle flow (scripts/bench).
 *
 *   idleconns server --listen ADDR --ports P1,P2,... [--backlog N]
 *       listens and never accepts: established connections wait in the accept queues, so the
 *       server needs no descriptor per connection (set net.core.somaxconn >= N first).
 *   idleconns client --connect ADDR --ports P1,P2,... --count N
 *       opens N connections (non-blocking, spread over the ports, in child processes of at most
 *       15000 sockets each, since RLIMIT_NOFILE may not be raisable), prints "READY <n>" once all
 *       are established, and holds them until its stdin closes.
 *
 * Build: gcc -O2 -o idleconns idleconns.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PER_CHILD 15000

static void die(const char *m) { perror(m); exit(1); }

static int parse_ports(char *s, int *ports) {
    int n = 0;
    for (char *t = strtok(s, ","); t && n < 64; t = strtok(NULL, ",")) ports[n++] = atoi(t);
    return n;
}

static socklen_t make_addr(const char *a, int port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (void *)ss;
    struct sockaddr_in6 *s6 = (void *)ss;
    if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) { s4->sin_family = AF_INET; s4->sin_port = htons(port); return sizeof *s4; }
    if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) { s6->sin6_family = AF_INET6; s6->sin6_port = htons(port); return sizeof *s6; }
    fprintf(stderr, "bad address %s\n", a);
    exit(2);
}

/* Opens `count` connections, starting at port index `first`; returns when all are established. */
static void open_conns(const char *addr, int *ports, int np, long count, long first) {
    int *fds = calloc(count, sizeof(int));
    long opened = 0, done = 0;
    int ep = epoll_create1(0);
    while (done < count) {
        while (opened < count && opened - done < 256) {
            struct sockaddr_storage ss;
            socklen_t l = make_addr(addr, ports[(first + opened) % np], &ss);
            int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0) die("socket");
            if (connect(fd, (void *)&ss, l) != 0 && errno != EINPROGRESS) die("connect");
            struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = (uint64_t)opened };
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            fds[opened++] = fd;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 15000);
        if (n == 0) { fprintf(stderr, "connections stalled at %ld/%ld\n", done, count); exit(1); }
        for (int i = 0; i < n; i++) {
            int fd = fds[evs[i].data.u64], err = 0;
            socklen_t el = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) { errno = err; die("connect (async)"); }
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            done++;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: idleconns server|client ...\n"); return 2; }
    const char *addr = NULL;
    char *portlist = NULL;
    long count = 0, backlog = 65535;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--listen") || !strcmp(argv[i], "--connect")) addr = argv[i + 1];
        else if (!strcmp(argv[i], "--ports")) portlist = argv[i + 1];
        else if (!strcmp(argv[i], "--count")) count = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--backlog")) backlog = atol(argv[i + 1]);
    }
    int ports[64];
    if (!addr || !portlist) { fprintf(stderr, "missing --listen/--connect or --ports\n"); return 2; }
    int np = parse_ports(portlist, ports);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(argv[1], "server")) {
        for (int i = 0; i < np; i++) {
            struct sockaddr_storage ss;
            socklen_t l = make_addr(addr, ports[i], &ss);
            int fd = socket(ss.ss_family, SOCK_STREAM, 0), one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(fd, (void *)&ss, l) || listen(fd, (int)backlog)) die("bind/listen");
        }
        printf("LISTENING\n");
        fflush(stdout);
        for (;;) pause();
    }
    int ready[2];
    if (pipe(ready)) die("pipe");
    long children = 0;
    for (long first = 0; first < count; first += PER_CHILD) {
        long n = count - first < PER_CHILD ? count - first : PER_CHILD;
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            close(ready[0]);
            open_conns(addr, ports, np, n, first);
            if (write(ready[1], "r", 1) != 1) _exit(1);
            char b[8];
            while (read(0, b, sizeof b) > 0) {}  /* hold until the parent's stdin closes */
            _exit(0);
        }
        children++;
    }
    close(ready[1]);
    for (long i = 0; i < children; i++) {
        char c;
        if (read(ready[0], &c, 1) != 1) { fprintf(stderr, "a child failed\n"); kill(0, SIGTERM); return 1; }
    }
    printf("READY %ld\n", count);
    fflush(stdout);
    char b[64];
    while (read(0, b, sizeof b) > 0) {}
    while (wait(NULL) > 0) {}
    return 0;
}
