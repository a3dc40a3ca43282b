/*
 * fleetload.c - load generator for the "fleet" benchmark (scripts/bench/fleet.py): many
 * concurrent management sessions (telemetry fan-in), connection churn, and idle connections.
 * Epoll, non-blocking sockets, one thread per worker process; the same tool for every mode (plain TCP, kernel
 * TCP-MD5, tcpaod), so all modes are measured the same way.
 *
 * Build:  gcc -O2 -Wall -Wextra -o fleetload fleetload.c      (libc only)
 *
 *   fleetload server --listen ADDR --port N [--md5 SECRET --peer ADDR] [--procs 4]
 *       Accepts any number of connections (backlog 65535: raise net.core.somaxconn too), in
 *       PROCS worker processes sharing the listening socket, each holding at most 15,000
 *       (RLIMIT_NOFILE cannot be raised without CAP_SYS_RESOURCE, which containers often lack;
 *       the hard limit here is 20,000). Reads updates (type 1) and records their latency: the
 *       update carries the CLOCK_MONOTONIC time at which the client sent it, and both
 *       namespaces share the host's monotonic clock. Answers churn requests (type 2) with a
 *       64-byte answer. The workers count into one histogram in shared memory.
 *       Commands on stdin, one a line: "reset" (zero the statistics), "report" (print one JSON
 *       line: updates, bytes, latency p50/p99/max in us, connections open/accepted/errors).
 *       Prints "LISTENING" once it listens. Exits when stdin closes.
 *
 *   fleetload telemetry --connect ADDR --port N --count N --seconds S [--rate R] [--warmup W]
 *                       [--size 300] [--md5 SECRET]
 *       Opens N connections, at most R new ones a second (default 5000) and 256 pending at once,
 *       then prints "CONNECTED {json}" (connections, failures, first error, seconds). Then each
 *       connection sends one SIZE-byte update a second, the N connections' updates spread evenly
 *       over the second; after W seconds of warm-up (default 2) it prints "START", after S
 *       more seconds "END {json}" (updates due, sent, late/skipped, errors). Then it stops
 *       sending, holds the connections until stdin closes, and aborts them (SO_LINGER 0: an
 *       RST each, no TIME_WAIT left behind for the next run).
 *       A connection that fails to connect within 20 s counts as failed (the first errno is
 *       reported); the run goes on with those that connected. The connections are spread over
 *       worker processes of at most 15,000 each (see server), and each is bound to a local port
 *       of its own, 1024 + its number (so N <= 64,511): with tens of thousands of connections
 *       to one address and port, connect()'s own search for a free ephemeral port slows to
 *       ~60 a second past ~32,000. SO_REUSEADDR, so that a TIME_WAIT left on a port by an
 *       earlier run towards another server port is no obstacle.
 *
 *   fleetload idle --connect ADDR --port N --count N [--rate R] [--md5 SECRET]
 *       Opens N connections like telemetry, prints "CONNECTED {json}", sends nothing, holds
 *       them until stdin closes, then aborts them.
 *
 *   fleetload churn --connect ADDR --port N --seconds S [--inflight K] [--md5 SECRET]
 *       K (default 4) connections at a time, each: connect, 64-byte request, 64-byte answer,
 *       close (FIN from the client: the client keeps TIME_WAIT, so set net.ipv4.tcp_tw_reuse=1
 *       in its namespace), and the next one, as fast as possible for S seconds. Prints one JSON
 *       line: connections completed, per second, setup time (connect() to writable) p50/p99,
 *       whole-transaction time p50/p99, failures and the first error; then waits for stdin
 *       to close (so that the caller can read its CPU time while it still exists).
 *
 * Wire format: every message starts with u32 magic 'FLT1', u16 type, u16 length (the whole
 * message, 24..1024), u64 CLOCK_MONOTONIC ns at send, then padding up to length.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x464c5431u /* "FLT1" */
#define T_UPDATE 1
#define T_REQ 2
#define T_ANS 3
#define HDR 16
#define MAXMSG 1024
#define CHURN_SIZE 64
#define HIST_US 2000000 /* 1-us buckets up to 2 s, then one overflow bucket */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
#include <stdarg.h>
static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fleetload: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------ histogram */

/* In shared memory (MAP_SHARED), so that the server's and the client's worker processes add
 * to one histogram; every update is atomic. */
typedef struct {
    uint64_t n, max_ns, sum_ns;
    uint32_t b[HIST_US + 1];
} hist_t;

static void *shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    return p;
}

static hist_t *hist_new(void) { return shared(sizeof(hist_t)); }

static void hist_reset(hist_t *h) { memset(h, 0, sizeof *h); }

static inline void hist_add(hist_t *h, uint64_t ns)
{
    uint64_t us = ns / 1000;
    __atomic_fetch_add(&h->b[us < HIST_US ? us : HIST_US], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->n, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->sum_ns, ns, __ATOMIC_RELAXED);
    if (ns > __atomic_load_n(&h->max_ns, __ATOMIC_RELAXED))
        __atomic_store_n(&h->max_ns, ns, __ATOMIC_RELAXED);
}

/* Percentile in us (bucket midpoint; the overflow bucket reports the maximum). */
static double hist_pct(const hist_t *h, double p)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i <= HIST_US; i++)
        n += h->b[i];
    if (n == 0)
        return 0;
    uint64_t want = (uint64_t)(p * (double)n);
    if (want >= n)
        want = n - 1;
    uint64_t acc = 0;
    for (uint32_t i = 0; i <= HIST_US; i++) {
        acc += h->b[i];
        if (acc > want)
            return i == HIST_US ? (double)h->max_ns / 1000.0 : i + 0.5;
    }
    return (double)h->max_ns / 1000.0;
}

#define ADD(x, v) __atomic_fetch_add(&(x), (v), __ATOMIC_RELAXED)

/* ------------------------------------------------------------ sockets */

static void raise_nofile(void)
{
    struct rlimit r = {1048576, 1048576};
    if (setrlimit(RLIMIT_NOFILE, &r) != 0) {
        r.rlim_cur = r.rlim_max = 200000;
        if (setrlimit(RLIMIT_NOFILE, &r) != 0) {
            getrlimit(RLIMIT_NOFILE, &r);
            r.rlim_cur = r.rlim_max;
            setrlimit(RLIMIT_NOFILE, &r);
        }
    }
}

static socklen_t make_addr(const char *a, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (void *)ss;
    struct sockaddr_in6 *s6 = (void *)ss;
    if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        return sizeof *s4;
    }
    if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        return sizeof *s6;
    }
    die("bad address %s", a);
}

static void set_md5(int fd, const struct sockaddr_storage *peer, socklen_t plen, const char *secret)
{
    struct tcp_md5sig sig;
    size_t klen = strlen(secret);
    if (klen == 0 || klen > TCP_MD5SIG_MAXKEYLEN)
        die("--md5 secret must be 1..%d bytes", TCP_MD5SIG_MAXKEYLEN);
    memset(&sig, 0, sizeof sig);
    memcpy(&sig.tcpm_addr, peer, plen);
    sig.tcpm_keylen = (uint16_t)klen;
    memcpy(sig.tcpm_key, secret, klen);
    if (setsockopt(fd, IPPROTO_TCP, TCP_MD5SIG, &sig, sizeof sig) != 0)
        die("setsockopt(TCP_MD5SIG): %s", strerror(errno));
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void abort_close(int fd)
{
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static void fill_msg(char *m, uint16_t type, uint16_t len)
{
    uint32_t magic = htonl(MAGIC);
    uint16_t t = htons(type), l = htons(len);
    uint64_t ts = now_ns();
    memcpy(m, &magic, 4);
    memcpy(m + 4, &t, 2);
    memcpy(m + 6, &l, 2);
    memcpy(m + 8, &ts, 8);
}

/* ------------------------------------------------------------ server */

/* RLIMIT_NOFILE may not be raisable (no CAP_SYS_RESOURCE in a container): the server and the
 * fleet clients spread their connections over worker processes of at most PER_PROC each. */
#define PER_PROC 15000

typedef struct {
    uint64_t updates, bytes, open, accepted, errors, answered, bad;
} sstat_t;

typedef struct {
    uint16_t fill;
    char buf[MAXMSG];
} sconn_t;

/* One server worker: accepts from the shared listening socket while it holds fewer than
 * PER_PROC connections, reads updates, answers requests. Never returns. */
static void server_worker(int lfd, sstat_t *st, hist_t *h)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = (uint64_t)lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    int listening = 1;
    long mine = 0;
    size_t maxfd = PER_PROC + 4096;
    sconn_t **conns = calloc(maxfd, sizeof *conns);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            int fd = (int)evs[i].data.u64;
            if (fd == lfd) {
                while (mine < PER_PROC) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                            break;
                        die("accept: %s", strerror(errno));
                    }
                    if ((size_t)c >= maxfd)
                        die("descriptor %d beyond the table (%zu)", c, maxfd);
                    nodelay(c);
                    if (!conns[c] && !(conns[c] = malloc(sizeof(sconn_t))))
                        die("out of memory");
                    conns[c]->fill = 0;
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                    mine++;
                    ADD(st->open, 1);
                    ADD(st->accepted, 1);
                }
                if (mine >= PER_PROC && listening) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL);
                    listening = 0;
                }
                continue;
            }
            sconn_t *sc = conns[fd];
            int closeit = 0;
            for (;;) {
                ssize_t r = recv(fd, sc->buf + sc->fill, MAXMSG - sc->fill, 0);
                if (r < 0) {
                    if (errno == EAGAIN || errno == EINTR)
                        break;
                    if (errno != ECONNRESET)
                        ADD(st->errors, 1);
                    closeit = 1;
                    break;
                }
                if (r == 0) {
                    closeit = 1;
                    break;
                }
                uint64_t t = now_ns();
                sc->fill += (uint16_t)r;
                ADD(st->bytes, (uint64_t)r);
                size_t off = 0;
                while (sc->fill - off >= HDR) {
                    uint32_t magic;
                    uint16_t type, len;
                    uint64_t ts;
                    memcpy(&magic, sc->buf + off, 4);
                    memcpy(&type, sc->buf + off + 4, 2);
                    memcpy(&len, sc->buf + off + 6, 2);
                    len = ntohs(len);
                    type = ntohs(type);
                    if (ntohl(magic) != MAGIC || len < HDR || len > MAXMSG) {
                        ADD(st->bad, 1);
                        closeit = 1;
                        break;
                    }
                    if (sc->fill - off < len)
                        break;
                    memcpy(&ts, sc->buf + off + 8, 8);
                    if (type == T_UPDATE) {
                        ADD(st->updates, 1);
                        hist_add(h, t > ts ? t - ts : 0);
                    } else if (type == T_REQ) {
                        char ans[CHURN_SIZE];
                        memset(ans, 0, sizeof ans);
                        fill_msg(ans, T_ANS, CHURN_SIZE);
                        if (send(fd, ans, sizeof ans, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof ans)
                            ADD(st->errors, 1);
                        ADD(st->answered, 1);
                    }
                    off += len;
                }
                if (closeit)
                    break;
                if (off) {
                    memmove(sc->buf, sc->buf + off, sc->fill - off);
                    sc->fill -= (uint16_t)off;
                }
            }
            if (closeit || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                ADD(st->open, (uint64_t)-1);
                mine--;
                if (!listening && mine < PER_PROC) {
                    struct epoll_event le = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = (uint64_t)lfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
                    listening = 1;
                }
            }
        }
    }
}

static int server(const char *addr, int port, const char *md5, const char *peer, int procs)
{
    struct sockaddr_storage ss, ps;
    socklen_t l = make_addr(addr, port, &ss);
    int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (lfd < 0)
        die("socket: %s", strerror(errno));
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (md5) {
        if (!peer)
            die("--md5 needs --peer");
        socklen_t pl = make_addr(peer, 0, &ps);
        set_md5(lfd, &ps, pl, md5);
    }
    if (bind(lfd, (void *)&ss, l) || listen(lfd, 65535))
        die("bind/listen %s:%d: %s", addr, port, strerror(errno));
    sstat_t *st = shared(sizeof *st);
    hist_t *h = hist_new();
    pid_t *kids = calloc((size_t)procs, sizeof *kids);
    for (int i = 0; i < procs; i++) {
        kids[i] = fork();
        if (kids[i] < 0)
            die("fork: %s", strerror(errno));
        if (kids[i] == 0)
            server_worker(lfd, st, h);
    }
    printf("LISTENING\n");
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (!strcmp(line, "reset")) {
            hist_reset(h);
            st->updates = st->bytes = st->errors = st->answered = st->bad = st->accepted = 0;
        } else if (!strcmp(line, "report")) {
            printf("{\"updates\":%llu,\"bytes\":%llu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
                   "\"mean_us\":%.1f,\"open\":%llu,\"accepted\":%llu,\"errors\":%llu,\"answered\":%llu,\"bad\":%llu}\n",
                   (unsigned long long)st->updates, (unsigned long long)st->bytes, hist_pct(h, 0.50), hist_pct(h, 0.99),
                   (double)h->max_ns / 1000.0, h->n ? (double)h->sum_ns / 1000.0 / (double)h->n : 0.0,
                   (unsigned long long)st->open, (unsigned long long)st->accepted, (unsigned long long)st->errors,
                   (unsigned long long)st->answered, (unsigned long long)st->bad);
            fflush(stdout);
        }
    }
    for (int i = 0; i < procs; i++)
        kill(kids[i], SIGKILL);
    while (wait(NULL) > 0) {
    }
    return 0;
}

/* ------------------------------------------------------------ fleet clients */

typedef struct {
    int fd;
    int state; /* 0 unused, 1 connecting, 2 established, 3 failed */
    uint16_t pend_off; /* 0x8000 | bytes of the current update already sent, while some remain */
    uint64_t started;
} cconn_t;

/* Counters shared by the client's worker processes. */
typedef struct {
    uint64_t established, failed, due, sent, late, errors, conn_errs, alive;
    uint64_t t0, tstart, tend; /* set by the parent before "go" */
    int first_err;
    char where[32];
} cstat_t;

static cstat_t *cst;
static int first_err = 0;
static const char *first_err_where = "";

static void note_err(int e, const char *where)
{
    if (!first_err) {
        first_err = e;
        first_err_where = where;
    }
    if (cst && __sync_bool_compare_and_swap(&cst->first_err, 0, e))
        snprintf(cst->where, sizeof cst->where, "%s", where);
}

/* Opens up to `count` connections; returns the number established. */
static long open_conns(int ep, cconn_t *cs, long count, const char *addr, int port, const char *md5, double rate,
                       long *failed, int first_port)
{
    struct sockaddr_storage ss, local;
    socklen_t l = make_addr(addr, port, &ss);
    memset(&local, 0, sizeof local);
    local.ss_family = ss.ss_family;
    long opened = 0, done = 0, pending = 0, est = 0;
    uint64_t t0 = now_ns(), last_scan = t0;
    struct epoll_event evs[512];
    while (done < count) {
        uint64_t now = now_ns();
        long allowed = (long)((double)(now - t0) / 1e9 * rate) + 1;
        while (opened < count && pending < 256 && opened < allowed) {
            cconn_t *c = &cs[opened];
            int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0)
                die("socket: %s (connection %ld)", strerror(errno), opened);
            if (md5)
                set_md5(fd, &ss, l, md5);
            nodelay(fd);
            /* Each connection its own local port: with tens of thousands of connections to one
             * address and port, connect()'s search for a free ephemeral port gets slower with
             * every connection (it stalls at ~32,000, half the range). SO_REUSEADDR: a port may
             * still be in TIME_WAIT towards an earlier run's (other) server port. */
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (ss.ss_family == AF_INET)
                ((struct sockaddr_in *)&local)->sin_port = htons((uint16_t)(first_port + opened));
            else
                ((struct sockaddr_in6 *)&local)->sin6_port = htons((uint16_t)(first_port + opened));
            if (bind(fd, (void *)&local, l) != 0)
                die("bind to local port %ld: %s", first_port + opened, strerror(errno));
            c->fd = fd;
            c->started = now_ns();
            if (connect(fd, (void *)&ss, l) != 0 && errno != EINPROGRESS) {
                note_err(errno, "connect");
                close(fd);
                c->fd = -1;
                c->state = 3;
                (*failed)++;
                done++;
                opened++;
                continue;
            }
            c->state = 1;
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)opened};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            opened++;
            pending++;
        }
        int n = epoll_wait(ep, evs, 512, 5);
        for (int i = 0; i < n; i++) {
            cconn_t *c = &cs[evs[i].data.u64];
            if (c->state != 1)
                continue;
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            pending--;
            done++;
            if (err) {
                note_err(err, "connect");
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                c->state = 3;
                (*failed)++;
                continue;
            }
            c->state = 2;
            est++;
            /* From now on: errors and hang-ups only (the server never writes). */
            struct epoll_event ev = {.events = EPOLLRDHUP, .data.u64 = evs[i].data.u64};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        /* Connect timeouts (20 s). */
        now = now_ns();
        if (now - last_scan > 1000000000ull) {
            last_scan = now;
            for (long i = 0; i < opened; i++) {
                cconn_t *c = &cs[i];
                if (c->state == 1 && now - c->started > 20000000000ull) {
                    note_err(ETIMEDOUT, "connect");
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = -1;
                    c->state = 3;
                    (*failed)++;
                    pending--;
                    done++;
                }
            }
        }
    }
    return est;
}

/* One client worker: `count` connections; tells the parent (ready pipe) when they are up,
 * waits for "go" (the shared t0/tstart/tend are set), sends updates until tend (telemetry),
 * tells the parent (done pipe), holds the connections until the hold pipe closes. */
static void client_worker(int telemetry, const char *addr, int port, long count, double rate, int size,
                          const char *md5, int rfd_go, int wfd_ready, int rfd_hold, int index, int workers, int first_port)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    cconn_t *cs = calloc((size_t)count, sizeof *cs);
    int ep = epoll_create1(0);
    long failed = 0;
    long est = open_conns(ep, cs, count, addr, port, md5, rate, &failed, first_port);
    ADD(cst->established, (uint64_t)est);
    ADD(cst->failed, (uint64_t)failed);
    char b = 'r';
    if (write(wfd_ready, &b, 1) != 1)
        _exit(1);
    if (read(rfd_go, &b, 1) != 1)
        _exit(1);
    long *live = malloc((size_t)(est ? est : 1) * sizeof(long));
    long nl = 0;
    for (long i = 0; i < count; i++)
        if (cs[i].state == 2)
            live[nl++] = i;
    if (telemetry && nl > 0) {
        char msg[MAXMSG];
        memset(msg, 0xa5, sizeof msg);
        uint64_t interval = 1000000000ull / (uint64_t)nl; /* ns between two of this worker's updates */
        if (interval == 0)
            interval = 1;
        /* The workers' updates interleave: worker i starts i/workers of an interval later. */
        uint64_t t0 = cst->t0 + interval * (uint64_t)index / (uint64_t)workers, tstart = cst->tstart, tend = cst->tend;
        uint64_t k = 0, due_w = 0, sent_w = 0, late_w = 0, err_w = 0, conn_errs = 0;
        struct epoll_event evs[512];
        for (;;) {
            uint64_t now = now_ns();
            if (now >= tend)
                break;
            while (t0 + k * interval <= now) {
                cconn_t *c = &cs[live[k % (uint64_t)nl]];
                int inwin = t0 + k * interval >= tstart;
                k++;
                if (inwin)
                    due_w++;
                if (c->state != 2) {
                    if (inwin)
                        err_w++;
                    continue;
                }
                if (c->pend_off) { /* the last update is still not out: skip this one */
                    if (inwin)
                        late_w++;
                    continue;
                }
                fill_msg(msg, T_UPDATE, (uint16_t)size);
                ssize_t r = send(c->fd, msg, (size_t)size, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (r == size) {
                    if (inwin)
                        sent_w++;
                } else if (r >= 0 || errno == EAGAIN) {
                    c->pend_off = (uint16_t)(r > 0 ? r : 0) | 0x8000;
                    struct epoll_event ev = {.events = EPOLLOUT | EPOLLRDHUP, .data.u64 = (uint64_t)(c - cs)};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    if (inwin)
                        sent_w++;
                } else {
                    note_err(errno, "send");
                    c->state = 3;
                    conn_errs++;
                    if (inwin)
                        err_w++;
                }
            }
            uint64_t next = t0 + k * interval;
            now = now_ns();
            /* Sleep at least 1 ms when nothing is due (no spinning): updates go out in 1-ms batches. */
            int to = next > now ? (int)((next - now + 999999) / 1000000) : 0;
            if (to > 5)
                to = 5;
            int n = epoll_wait(ep, evs, 512, to);
            for (int i = 0; i < n; i++) {
                cconn_t *c = &cs[evs[i].data.u64];
                if (evs[i].events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
                    if (c->state == 2) {
                        int err = 0;
                        socklen_t el = sizeof err;
                        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                        note_err(err ? err : ECONNRESET, "connection lost");
                        c->state = 3;
                        conn_errs++;
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    }
                    continue;
                }
                if ((evs[i].events & EPOLLOUT) && c->pend_off) {
                    int off = c->pend_off & 0x7fff;
                    ssize_t r = send(c->fd, msg + off, (size_t)(size - off), MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (r > 0 && off + r == size) {
                        c->pend_off = 0;
                        struct epoll_event ev = {.events = EPOLLRDHUP, .data.u64 = evs[i].data.u64};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    } else if (r > 0) {
                        c->pend_off = (uint16_t)(off + r) | 0x8000;
                    }
                }
            }
        }
        long alive = 0;
        for (long i = 0; i < nl; i++)
            alive += cs[live[i]].state == 2;
        ADD(cst->due, due_w);
        ADD(cst->sent, sent_w);
        ADD(cst->late, late_w);
        ADD(cst->errors, err_w);
        ADD(cst->conn_errs, conn_errs);
        ADD(cst->alive, (uint64_t)alive);
    }
    if (write(wfd_ready, &b, 1) != 1)
        _exit(1);
    char hb[64];
    while (read(rfd_hold, hb, sizeof hb) > 0) {
    }
    for (long i = 0; i < count; i++)
        if (cs[i].fd > 0 && cs[i].state >= 2)
            abort_close(cs[i].fd);
    _exit(0);
}

static void sleep_until(uint64_t t)
{
    for (uint64_t now = now_ns(); now < t; now = now_ns()) {
        struct timespec ts = {(time_t)((t - now) / 1000000000ull), (long)((t - now) % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
}

static int fleet_client(int telemetry, const char *addr, int port, long count, double seconds, double rate,
                        double warmup, int size, const char *md5)
{
    cst = shared(sizeof *cst);
    int workers = (int)((count + PER_PROC - 1) / PER_PROC);
    int go[2], ready[2], hold[2];
    if (pipe(go) || pipe(ready) || pipe(hold))
        die("pipe: %s", strerror(errno));
    if (count > 65535 - 1024)
        die("at most %d connections (one local port each, from 1024)", 65535 - 1024);
    uint64_t t_conn = now_ns();
    long first = 0;
    for (int i = 0; i < workers; i++) {
        long n = count / workers + (i < count % workers ? 1 : 0);
        first += n;
        pid_t p = fork();
        if (p < 0)
            die("fork: %s", strerror(errno));
        if (p == 0) {
            close(go[1]);
            close(ready[0]);
            close(hold[1]);
            client_worker(telemetry, addr, port, n, rate * (double)n / (double)count, size, md5, go[0], ready[1], hold[0],
                          i, workers, (int)(1024 + first - n));
        }
    }
    close(go[0]);
    close(ready[1]);
    close(hold[0]);
    char b;
    for (int i = 0; i < workers; i++)
        if (read(ready[0], &b, 1) != 1)
            die("a worker failed while connecting");
    printf("CONNECTED {\"requested\":%ld,\"established\":%llu,\"failed\":%llu,\"seconds\":%.2f,\"workers\":%d,"
           "\"first_error\":\"%s%s%s\"}\n",
           count, (unsigned long long)cst->established, (unsigned long long)cst->failed,
           (double)(now_ns() - t_conn) / 1e9, workers, cst->first_err ? cst->where : "", cst->first_err ? ": " : "",
           cst->first_err ? strerror(cst->first_err) : "");
    fflush(stdout);
    cst->t0 = now_ns() + 10000000ull;
    cst->tstart = cst->t0 + (uint64_t)(warmup * 1e9);
    cst->tend = cst->tstart + (uint64_t)(seconds * 1e9);
    __sync_synchronize();
    for (int i = 0; i < workers; i++)
        if (write(go[1], "g", 1) != 1)
            die("go: %s", strerror(errno));
    if (telemetry) {
        sleep_until(cst->tstart);
        printf("START\n");
        fflush(stdout);
    }
    for (int i = 0; i < workers; i++)
        if (read(ready[0], &b, 1) != 1)
            die("a worker failed while sending");
    if (telemetry) {
        printf("END {\"connections\":%llu,\"alive\":%llu,\"seconds\":%.3f,\"due\":%llu,\"sent\":%llu,\"late\":%llu,"
               "\"errors\":%llu,\"connection_errors\":%llu,\"first_error\":\"%s%s%s\"}\n",
               (unsigned long long)cst->established, (unsigned long long)cst->alive, seconds, (unsigned long long)cst->due,
               (unsigned long long)cst->sent, (unsigned long long)cst->late, (unsigned long long)cst->errors,
               (unsigned long long)cst->conn_errs, cst->first_err ? cst->where : "", cst->first_err ? ": " : "",
               cst->first_err ? strerror(cst->first_err) : "");
        fflush(stdout);
    }
    char hb[256];
    while (read(0, hb, sizeof hb) > 0) {
    }
    close(hold[1]);
    while (wait(NULL) > 0) {
    }
    return 0;
}

static void wait_stdin_eof(void)
{
    char b[256];
    while (read(0, b, sizeof b) > 0) {
    }
}

/* ------------------------------------------------------------ churn */

typedef struct {
    int fd;
    int state; /* 1 connecting, 2 waiting for the answer */
    int got;
    uint64_t t_connect;
    char buf[CHURN_SIZE];
} chconn_t;

static int churn(const char *addr, int port, double seconds, int inflight, const char *md5)
{
    struct sockaddr_storage ss;
    socklen_t l = make_addr(addr, port, &ss);
    int ep = epoll_create1(0);
    chconn_t *cs = calloc((size_t)inflight, sizeof *cs);
    hist_t *setup = hist_new(), *whole = hist_new();
    uint64_t done = 0, failures = 0;
    uint64_t t0 = now_ns(), tend = t0 + (uint64_t)(seconds * 1e9);
    int active = 0, stopping = 0;
    char req[CHURN_SIZE];
    memset(req, 0x5a, sizeof req);
#define START_ONE(i)                                                                                                    \
    do {                                                                                                                \
        chconn_t *c = &cs[i];                                                                                           \
        for (;;) {                                                                                                      \
            c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);                                               \
            if (c->fd < 0)                                                                                              \
                die("socket: %s", strerror(errno));                                                                     \
            if (md5)                                                                                                    \
                set_md5(c->fd, &ss, l, md5);                                                                            \
            nodelay(c->fd);                                                                                             \
            int one_ = 1; /* TIME_WAIT left by this port must not block a later bind() to it */                        \
            setsockopt(c->fd, SOL_SOCKET, SO_REUSEADDR, &one_, sizeof one_);                                            \
            c->t_connect = now_ns();                                                                                    \
            if (connect(c->fd, (void *)&ss, l) != 0 && errno != EINPROGRESS) {                                          \
                note_err(errno, "connect");                                                                             \
                failures++;                                                                                             \
                close(c->fd);                                                                                           \
                if (failures > 100000 || now_ns() >= tend)                                                              \
                    die("connect: %s", strerror(errno));                                                                \
                usleep(1000);                                                                                           \
                continue;                                                                                               \
            }                                                                                                           \
            break;                                                                                                      \
        }                                                                                                               \
        c->state = 1;                                                                                                   \
        c->got = 0;                                                                                                     \
        struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)(i)};                                        \
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);                                                                       \
        active++;                                                                                                       \
    } while (0)
    for (int i = 0; i < inflight; i++)
        START_ONE(i);
    struct epoll_event evs[64];
    while (active > 0) {
        int n = epoll_wait(ep, evs, 64, 1000);
        uint64_t now = now_ns();
        if (now >= tend)
            stopping = 1;
        if (n == 0 && now > tend + 20000000000ull)
            die("churn: %d connections stuck at the end", active);
        /* Stuck connections (20 s): fail them. */
        for (int i = 0; i < inflight; i++) {
            chconn_t *c = &cs[i];
            if (c->state && now - c->t_connect > 20000000000ull) {
                note_err(ETIMEDOUT, c->state == 1 ? "connect" : "answer");
                failures++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                abort_close(c->fd);
                c->state = 0;
                active--;
                if (!stopping)
                    START_ONE(i);
            }
        }
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u64;
            chconn_t *c = &cs[i];
            if (!c->state)
                continue;
            int fail = 0;
            if (c->state == 1) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    note_err(err, "connect");
                    fail = 1;
                } else {
                    hist_add(setup, now - c->t_connect);
                    fill_msg(req, T_REQ, CHURN_SIZE);
                    if (send(c->fd, req, sizeof req, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof req) {
                        note_err(errno, "send");
                        fail = 1;
                    } else {
                        c->state = 2;
                        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                        continue;
                    }
                }
            } else {
                ssize_t r = recv(c->fd, c->buf + c->got, (size_t)(CHURN_SIZE - c->got), 0);
                if (r < 0 && errno == EAGAIN)
                    continue;
                if (r <= 0) {
                    note_err(r == 0 ? EPIPE : errno, "answer");
                    fail = 1;
                } else {
                    c->got += (int)r;
                    if (c->got < CHURN_SIZE)
                        continue;
                    hist_add(whole, now - c->t_connect);
                    done++;
                }
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            if (fail) {
                failures++;
                abort_close(c->fd);
            } else {
                close(c->fd); /* FIN: the normal end of a session */
            }
            c->state = 0;
            active--;
            if (!stopping)
                START_ONE(i);
        }
    }
    double el = (double)(now_ns() - t0) / 1e9;
    printf("{\"connections\":%llu,\"seconds\":%.3f,\"conn_per_s\":%.1f,\"setup_p50_us\":%.1f,\"setup_p99_us\":%.1f,"
           "\"setup_max_us\":%.1f,\"transaction_p50_us\":%.1f,\"transaction_p99_us\":%.1f,\"failures\":%llu,"
           "\"inflight\":%d,\"first_error\":\"%s%s%s\"}\n",
           (unsigned long long)done, el, (double)done / el, hist_pct(setup, 0.5), hist_pct(setup, 0.99),
           (double)setup->max_ns / 1000.0, hist_pct(whole, 0.5), hist_pct(whole, 0.99), (unsigned long long)failures,
           inflight, first_err ? first_err_where : "", first_err ? ": " : "", first_err ? strerror(first_err) : "");
    fflush(stdout);
    wait_stdin_eof(); /* so that the caller can read this process's CPU time before it exits */
    return 0;
}

/* ------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr, "usage:\n"
                    "  fleetload server --listen ADDR --port N [--md5 SECRET --peer ADDR]\n"
                    "  fleetload telemetry --connect ADDR --port N --count N --seconds S [--rate R] [--warmup W] [--size B] [--md5 SECRET]\n"
                    "  fleetload idle --connect ADDR --port N --count N [--rate R] [--md5 SECRET]\n"
                    "  fleetload churn --connect ADDR --port N --seconds S [--inflight K] [--md5 SECRET]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *addr = NULL, *md5 = NULL, *peer = NULL;
    int port = 0, size = 300, inflight = 4, procs = 4;
    long count = 0;
    double seconds = 10, rate = 5000, warmup = 2;
    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage();
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--listen") || !strcmp(o, "--connect"))
            addr = v;
        else if (!strcmp(o, "--port"))
            port = atoi(v);
        else if (!strcmp(o, "--md5"))
            md5 = v;
        else if (!strcmp(o, "--peer"))
            peer = v;
        else if (!strcmp(o, "--count"))
            count = atol(v);
        else if (!strcmp(o, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(o, "--rate"))
            rate = atof(v);
        else if (!strcmp(o, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(o, "--size"))
            size = atoi(v);
        else if (!strcmp(o, "--procs"))
            procs = atoi(v);
        else if (!strcmp(o, "--inflight"))
            inflight = atoi(v);
        else
            usage();
    }
    if (!addr || port <= 0 || port > 65535)
        usage();
    if (size < HDR || size > MAXMSG)
        die("--size must be %d..%d", HDR, MAXMSG);
    if (inflight < 1 || inflight > 1024 || rate <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (!strcmp(argv[1], "server"))
        return server(addr, port, md5, peer, procs);
    if (!strcmp(argv[1], "telemetry") || !strcmp(argv[1], "idle")) {
        if (count <= 0)
            usage();
        return fleet_client(!strcmp(argv[1], "telemetry"), addr, port, count, seconds, rate, warmup, size, md5);
    }
    if (!strcmp(argv[1], "churn"))
        return churn(addr, port, seconds, inflight, md5);
    usage();
}
