/*
 * tcpbench.c - the single traffic tool used by every mode of the tcpaod
 * performance benchmark (plain TCP, kernel TCP-MD5, and the user-space
 * TCP-AO gateway modes), so that all modes are measured the same way.
 *
 * Build:  gcc -O2 -Wall -Wextra -o tcpbench tcpbench.c      (libc only)
 *
 * Usage:
 *   tcpbench server --listen ADDR --port N [--md5 SECRET --peer ADDR ...]
 *       Serves connections forever (one forked child per connection).
 *       Handles both bulk and rr clients; the client announces which test it
 *       wants in a 16-byte header at the start of the connection.
 *       With --md5 the key is installed with TCP_MD5SIG on the listening
 *       socket (before listen) for each --peer address (accepted sockets
 *       inherit it).
 *
 *   tcpbench bulk --connect ADDR --port N --seconds S [--md5 SECRET] [--mss N]
 *       Sends as fast as possible for S seconds, then half-closes.  The
 *       server counts what it received and sends the count back (8 bytes,
 *       big endian); the figure reported is that count divided by the time
 *       from the first write until the count arrived, i.e. what actually got
 *       to the server, not what was buffered locally.
 *       Prints {"mode":"bulk","bytes":..,"seconds":..,"gbit_per_s":..}
 *
 *   tcpbench rr --connect ADDR --port N --count N --size 64 [--md5 SECRET]
 *               [--warmup N]
 *       Ping-pong of SIZE-byte messages, TCP_NODELAY on both ends.  After
 *       WARMUP (default 1000) untimed round trips, each of COUNT round trips
 *       is timed with CLOCK_MONOTONIC.
 *       Prints {"mode":"rr","count":..,"p50_us":..,"p99_us":..,"mean_us":..}
 *
 *   Clients also take --timeout S (default 10): connect/send/recv that blocks longer than
 *   that is an error, so a gateway that drops packets fails the run instead of hanging it.
 *
 * Addresses may be IPv4 or IPv6 literals.  Any error prints a message on
 * stderr and exits non-zero.  EINTR and short reads/writes are handled.
 *
 * Wire header (client -> server, 16 bytes, network byte order):
 *   u32 magic 'TCPB' | u8 version (1) | u8 mode (1 bulk, 2 rr) | u16 zero |
 *   u32 size (rr message size, 0 for bulk) | u32 zero
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x54435042u /* "TCPB" */
#define VERSION 1
#define MODE_BULK 1
#define MODE_RR 2
#define HDR_LEN 16
#define BULK_BUF (128 * 1024)
#define MAX_PEERS 16
#define MAX_RR_SIZE (1024 * 1024)

static const char *prog = "tcpbench";

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
    fprintf(stderr,
            "usage:\n"
            "  tcpbench server --listen ADDR --port N [--md5 SECRET --peer ADDR [--peer ADDR..]]\n"
            "  tcpbench bulk --connect ADDR --port N --seconds S [--md5 SECRET] [--mss N] [--timeout S]\n"
            "  tcpbench rr --connect ADDR --port N --count N --size BYTES [--md5 SECRET] [--warmup N]\n"
            "              [--timeout S]\n");
    exit(2);
}

/* strerror, but say what EAGAIN means on a socket with SO_RCVTIMEO/SO_SNDTIMEO. */
static const char *errstr(int e)
{
    if (e == EAGAIN || e == EWOULDBLOCK)
        return "timed out (no progress within --timeout)";
    return strerror(e);
}

static double now_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        die("clock_gettime: %s", errstr(errno));
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Write all of buf; returns 0 or -1 with errno set. */
static int write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read exactly len bytes.  Returns 1 on success, 0 on clean EOF before the
 * first byte, -1 on error (errno set) or EOF part-way (errno = EPROTO). */
static int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, p + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            if (got == 0)
                return 0;
            errno = EPROTO;
            return -1;
        }
        got += (size_t)n;
    }
    return 1;
}

static unsigned long parse_ulong(const char *opt, const char *s, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || s[0] == '-' || v > max)
        die("bad value for %s: '%s'", opt, s);
    return v;
}

static double parse_double(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v > 0))
        die("bad value for %s: '%s'", opt, s);
    return v;
}

/* Resolve a numeric address + port into a sockaddr_storage. */
static socklen_t resolve(const char *addr, unsigned port, int passive, struct sockaddr_storage *out)
{
    struct addrinfo hints, *res;
    char portstr[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    snprintf(portstr, sizeof portstr, "%u", port);
    int rc = getaddrinfo(addr, portstr, &hints, &res);
    if (rc != 0)
        die("bad address '%s': %s", addr, gai_strerror(rc));
    socklen_t len = res->ai_addrlen;
    memset(out, 0, sizeof *out);
    memcpy(out, res->ai_addr, len);
    freeaddrinfo(res);
    return len;
}

static void set_md5(int fd, const struct sockaddr_storage *peer, socklen_t peerlen, const char *secret,
                    const char *peer_str)
{
    struct tcp_md5sig sig;
    size_t klen = strlen(secret);
    if (klen == 0 || klen > TCP_MD5SIG_MAXKEYLEN)
        die("--md5 secret must be 1..%d bytes", TCP_MD5SIG_MAXKEYLEN);
    memset(&sig, 0, sizeof sig);
    memcpy(&sig.tcpm_addr, peer, peerlen);
    sig.tcpm_keylen = (uint16_t)klen;
    memcpy(sig.tcpm_key, secret, klen);
    if (setsockopt(fd, IPPROTO_TCP, TCP_MD5SIG, &sig, sizeof sig) != 0)
        die("setsockopt(TCP_MD5SIG, peer %s): %s", peer_str, errstr(errno));
}

static void set_nodelay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("setsockopt(TCP_NODELAY): %s", errstr(errno));
}

/* ------------------------------------------------------------------ server */

static void serve_bulk(int fd)
{
    static char buf[256 * 1024];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("server bulk recv: %s", errstr(errno));
        }
        if (n == 0)
            break;
        total += (uint64_t)n;
    }
    unsigned char rep[8];
    for (int i = 0; i < 8; i++)
        rep[i] = (unsigned char)(total >> (56 - 8 * i));
    if (write_full(fd, rep, sizeof rep) != 0)
        die("server bulk report: %s", errstr(errno));
}

static void serve_rr(int fd, uint32_t size)
{
    char *buf = malloc(size);
    if (!buf)
        die("out of memory");
    for (;;) {
        int r = read_full(fd, buf, size);
        if (r == 0)
            break;
        if (r < 0)
            die("server rr read: %s", errstr(errno));
        if (write_full(fd, buf, size) != 0)
            die("server rr write: %s", errstr(errno));
    }
    free(buf);
}

static void serve_conn(int fd)
{
    unsigned char hdr[HDR_LEN];
    set_nodelay(fd);
    int r = read_full(fd, hdr, sizeof hdr);
    if (r == 0)
        exit(0);
    if (r < 0)
        die("server: reading header: %s", errstr(errno));
    uint32_t magic, size;
    memcpy(&magic, hdr, 4);
    memcpy(&size, hdr + 8, 4);
    magic = ntohl(magic);
    size = ntohl(size);
    if (magic != MAGIC || hdr[4] != VERSION)
        die("server: bad header (magic %08x version %u)", magic, hdr[4]);
    switch (hdr[5]) {
    case MODE_BULK:
        serve_bulk(fd);
        break;
    case MODE_RR:
        if (size == 0 || size > MAX_RR_SIZE)
            die("server: bad rr size %u", size);
        serve_rr(fd, size);
        break;
    default:
        die("server: unknown mode %u", hdr[5]);
    }
}

static int run_server(const char *listen_addr, unsigned port, const char *md5, const char **peers, int npeers)
{
    struct sockaddr_storage ss;
    socklen_t sl = resolve(listen_addr, port, 1, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s", errstr(errno));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        die("setsockopt(SO_REUSEADDR): %s", errstr(errno));
    if (md5) {
        if (npeers == 0)
            die("server: --md5 requires at least one --peer");
        for (int i = 0; i < npeers; i++) {
            struct sockaddr_storage ps;
            socklen_t pl = resolve(peers[i], 0, 0, &ps);
            set_md5(fd, &ps, pl, md5, peers[i]);
        }
    }
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0)
        die("bind %s port %u: %s", listen_addr, port, errstr(errno));
    if (listen(fd, 128) != 0)
        die("listen: %s", errstr(errno));

    /* Children are reaped automatically. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    fprintf(stderr, "%s: listening on %s port %u%s\n", prog, listen_addr, port, md5 ? " (TCP-MD5)" : "");

    pid_t parent = getpid();
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            die("accept: %s", errstr(errno));
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "%s: fork: %s\n", prog, errstr(errno));
            close(c);
            continue;
        }
        if (pid == 0) {
            /* Do not outlive the server when the harness stops it. */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                _exit(0);
            close(fd);
            serve_conn(c);
            close(c);
            _exit(0);
        }
        close(c);
    }
}

/* ------------------------------------------------------------------ client */

/* Client socket timeout (seconds) for connect, send and recv: a gateway that black-holes
 * packets makes the run fail instead of hanging. */
static double io_timeout = 10;

static int client_connect(const char *addr, unsigned port, const char *md5, unsigned mss)
{
    struct sockaddr_storage ss;
    socklen_t sl = resolve(addr, port, 0, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s", errstr(errno));
    if (md5)
        set_md5(fd, &ss, sl, md5, addr);
    if (mss) {
        int v = (int)mss;
        if (setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &v, sizeof v) != 0)
            die("setsockopt(TCP_MAXSEG %u): %s", mss, errstr(errno));
    }
    struct timeval tv = {.tv_sec = (time_t)io_timeout,
                         .tv_usec = (suseconds_t)((io_timeout - (double)(time_t)io_timeout) * 1e6)};
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
        die("setsockopt(SO_SNDTIMEO/SO_RCVTIMEO): %s", errstr(errno));
    if (connect(fd, (struct sockaddr *)&ss, sl) != 0) {
        if (errno == EINPROGRESS || errno == EAGAIN)
            die("connect %s port %u: timed out after %gs", addr, port, io_timeout);
        if (errno != EINTR)
            die("connect %s port %u: %s", addr, port, errstr(errno));
        /* Interrupted: the handshake goes on in the kernel; wait for it. */
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof err;
        while (poll(&pfd, 1, -1) < 0)
            if (errno != EINTR)
                die("poll: %s", errstr(errno));
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            die("getsockopt(SO_ERROR): %s", errstr(errno));
        if (err)
            die("connect %s port %u: %s", addr, port, strerror(err));
    }
    return fd;
}

static void send_header(int fd, int mode, uint32_t size)
{
    unsigned char hdr[HDR_LEN];
    uint32_t v;
    memset(hdr, 0, sizeof hdr);
    v = htonl(MAGIC);
    memcpy(hdr, &v, 4);
    hdr[4] = VERSION;
    hdr[5] = (unsigned char)mode;
    v = htonl(size);
    memcpy(hdr + 8, &v, 4);
    if (write_full(fd, hdr, sizeof hdr) != 0)
        die("sending header: %s", errstr(errno));
}

static int run_bulk(const char *addr, unsigned port, double seconds, const char *md5, unsigned mss)
{
    static char buf[BULK_BUF];
    memset(buf, 0xa5, sizeof buf);
    int fd = client_connect(addr, port, md5, mss);
    send_header(fd, MODE_BULK, 0);

    uint64_t sent = 0;
    double t0 = now_s(), deadline = t0 + seconds;
    while (now_s() < deadline) {
        ssize_t n = send(fd, buf, sizeof buf, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("bulk send: %s", errstr(errno));
        }
        sent += (uint64_t)n; /* a short write is fine: just send again */
    }
    if (shutdown(fd, SHUT_WR) != 0)
        die("shutdown: %s", errstr(errno));
    unsigned char rep[8];
    int r = read_full(fd, rep, sizeof rep);
    if (r <= 0)
        die("bulk: no byte count from server: %s", r == 0 ? "connection closed" : errstr(errno));
    double t1 = now_s();
    uint64_t got = 0;
    for (int i = 0; i < 8; i++)
        got = (got << 8) | rep[i];
    close(fd);
    if (got != sent)
        die("bulk: server received %llu bytes but client sent %llu", (unsigned long long)got,
            (unsigned long long)sent);
    double el = t1 - t0;
    printf("{\"mode\":\"bulk\",\"bytes\":%llu,\"seconds\":%.6f,\"gbit_per_s\":%.4f,\"md5\":%s,\"mss\":%u}\n",
           (unsigned long long)got, el, (double)got * 8.0 / el / 1e9, md5 ? "true" : "false", mss);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double pct_us(const uint64_t *v, size_t n, double p)
{
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1000.0;
}

static int run_rr(const char *addr, unsigned port, unsigned long count, unsigned long size,
                  unsigned long warmup, const char *md5)
{
    char *buf = malloc(size);
    uint64_t *lat = malloc(count * sizeof *lat);
    if (!buf || !lat)
        die("out of memory");
    memset(buf, 0x5a, size);
    int fd = client_connect(addr, port, md5, 0);
    set_nodelay(fd);
    send_header(fd, MODE_RR, (uint32_t)size);

    for (unsigned long i = 0; i < warmup + count; i++) {
        uint64_t t0 = now_ns();
        if (write_full(fd, buf, size) != 0)
            die("rr write: %s", errstr(errno));
        int r = read_full(fd, buf, size);
        if (r <= 0)
            die("rr read: %s", r == 0 ? "connection closed by server" : errstr(errno));
        uint64_t t1 = now_ns();
        if (i >= warmup)
            lat[i - warmup] = t1 - t0;
    }
    close(fd);

    double sum = 0;
    for (unsigned long i = 0; i < count; i++)
        sum += (double)lat[i];
    qsort(lat, count, sizeof *lat, cmp_u64);
    printf("{\"mode\":\"rr\",\"count\":%lu,\"size\":%lu,\"p50_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,"
           "\"min_us\":%.2f,\"max_us\":%.2f,\"md5\":%s}\n",
           count, size, pct_us(lat, count, 50), pct_us(lat, count, 99), sum / (double)count / 1000.0,
           (double)lat[0] / 1000.0, (double)lat[count - 1] / 1000.0, md5 ? "true" : "false");
    free(lat);
    free(buf);
    return 0;
}

/* -------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];
    const char *listen_addr = NULL, *connect_addr = NULL, *md5 = NULL;
    const char *peers[MAX_PEERS];
    int npeers = 0;
    unsigned port = 0, mss = 0;
    double seconds = 0;
    unsigned long count = 0, size = 0, warmup = 1000;

    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0)
            usage();
        if (i + 1 >= argc)
            die("option %s needs a value (or is unknown)", o);
        const char *v = argv[++i];
        if (strcmp(o, "--listen") == 0)
            listen_addr = v;
        else if (strcmp(o, "--connect") == 0)
            connect_addr = v;
        else if (strcmp(o, "--port") == 0)
            port = (unsigned)parse_ulong(o, v, 65535);
        else if (strcmp(o, "--md5") == 0)
            md5 = v;
        else if (strcmp(o, "--peer") == 0) {
            if (npeers >= MAX_PEERS)
                die("too many --peer options");
            peers[npeers++] = v;
        } else if (strcmp(o, "--seconds") == 0)
            seconds = parse_double(o, v);
        else if (strcmp(o, "--mss") == 0)
            mss = (unsigned)parse_ulong(o, v, 65535);
        else if (strcmp(o, "--count") == 0)
            count = parse_ulong(o, v, 100000000ul);
        else if (strcmp(o, "--size") == 0)
            size = parse_ulong(o, v, MAX_RR_SIZE);
        else if (strcmp(o, "--timeout") == 0)
            io_timeout = parse_double(o, v);
        else if (strcmp(o, "--warmup") == 0)
            warmup = parse_ulong(o, v, 100000000ul);
        else
            die("unknown option %s", o);
    }
    if (port == 0)
        die("--port is required");
    signal(SIGPIPE, SIG_IGN);

    if (strcmp(cmd, "server") == 0) {
        if (!listen_addr)
            die("server: --listen is required");
        if (npeers && !md5)
            die("server: --peer only makes sense with --md5");
        return run_server(listen_addr, port, md5, peers, npeers);
    }
    if (npeers)
        die("--peer is a server option");
    if (listen_addr)
        die("--listen is a server option");
    if (strcmp(cmd, "bulk") == 0) {
        if (!connect_addr || seconds <= 0)
            die("bulk: --connect and --seconds are required");
        return run_bulk(connect_addr, port, seconds, md5, mss);
    }
    if (strcmp(cmd, "rr") == 0) {
        if (!connect_addr || count == 0 || size == 0)
            die("rr: --connect, --count and --size are required");
        if (mss)
            die("rr: --mss is a bulk option");
        return run_rr(connect_addr, port, count, size, warmup, md5);
    }
    usage();
}
