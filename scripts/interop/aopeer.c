/*
 * aopeer.c — a small TCP-AO (RFC 5925) test peer using the Linux kernel's native TCP-AO
 * (Linux >= 6.7, CONFIG_TCP_AO=y). Part of the tcpaod interop harness (scripts/interop/):
 * it runs inside the qemu guest (built statically) and, without keys, as a plain TCP peer on
 * the host side. Self-contained: one file, no dependencies beyond libc.
 *
 *   aopeer server --listen ADDR --port N [common options]   accepts ONE connection, then exits
 *   aopeer client --connect ADDR --port N [common options]
 *   aopeer gen N                                            writes the N-byte test pattern
 *
 * Common options:
 *   --key SNDID:RCVID:ALG:SECRET[:x]  repeatable; ALG hmac(sha1) | cmac(aes128) | hmac(sha256)
 *                                     SECRET is text, or hex when prefixed 0x; a trailing ":x"
 *                                     sets TCP_AO_KEYF_EXCLUDE_OPT (so a text secret cannot
 *                                     end in ":x"; use hex for such secrets).
 *   --peer ADDR/PREFIXLEN             peer address the keys apply to (default: the whole
 *                                     address family of the socket, prefix 0). Host bits
 *                                     beyond the prefix are cleared. An IPv4 peer on an IPv6
 *                                     socket becomes v4-mapped (prefix counted in IPv4 bits).
 *   --maclen N                        MAC length for all keys (default 12)
 *   --current SNDID --rnext RCVID     initial Current_key / RNext_key (TCP_AO_INFO).
 *                                     client: set before connect(); default: the first --key.
 *                                     server: the kernel picks them for the accepted socket
 *                                     from the client's SYN; when given, they are applied to
 *                                     the accepted socket right after accept().
 *   --ao-required                     TCP_AO_INFO ao_required (inherited by accepted sockets)
 *   --send N                          after connecting send N pattern bytes, then
 *                                     shutdown(SHUT_WR). Without --send: shutdown(SHUT_WR)
 *                                     right after connecting (i.e. --send 0).
 *   --recv                            read until EOF; the transfer only completes at EOF.
 *                                     Without --recv, incoming bytes are still read, counted
 *                                     and hashed; after sending, aopeer waits up to --timeout
 *                                     for the peer's EOF and succeeds either way (NOTE line).
 *   --rollover-at BYTES:SNDID:RCVID   repeatable; when BYTES bytes have been sent (if --send N
 *                                     with N > 0, else: received), set Current_key=SNDID and
 *                                     RNext_key=RCVID via TCP_AO_INFO (ao_required and
 *                                     accept_icmps are preserved: TCP_AO_INFO overwrites them).
 *   --timeout SECONDS                 connect/accept/idle read/write timeout (default 20);
 *                                     on timeout: "ERROR timeout ..." and exit status 3.
 *   --sndbuf N / --rcvbuf N           SO_SNDBUF / SO_RCVBUF before connect()/listen() (the
 *                                     kernel doubles the value; autotuning is then off).
 *                                     Small buffers keep the two ends' byte counts close
 *                                     together, which makes --rollover-at points on both
 *                                     ends happen near the same place on the wire.
 *
 * Key rollover, as Linux does it: on every verified segment the kernel sets Current_key to the
 * key the peer names in RNextKeyID. So a rollover needs the receiving end to change its RNext
 * (the peer's Current follows); a Current change alone is undone by the peer's next segment.
 *
 * Test pattern: xorshift32 (x ^= x << 13; x ^= x >> 17; x ^= x << 5) seeded with 0x12345678;
 * each step yields one byte, the low 8 bits of the new state. So `aopeer gen N | sha256sum`
 * is the digest of the first N pattern bytes.
 *
 * Output (stdout, one record per line, key=value fields; extra fields may be appended):
 *   LISTENING addr=.. port=..            server, once listen() succeeded (for synchronisation)
 *   CONNECTED local=.. peer=..           once the connection is established
 *   ROLLOVER bytes=.. current=.. rnext=..
 *   NOTE ...                             informational
 *   ERROR ...                            on failure (before the records below)
 *   RESULT sent=<n> received=<n> sha256=<hex of all bytes received>
 *   AOINFO pkt_good=.. pkt_bad=.. pkt_key_not_found=.. pkt_ao_required=.. pkt_dropped_icmp=..
 *          current_key=.. rnext=.. ao_required=.. socket=connected|listening|connecting
 *     or   AOINFO unavailable reason=<errno name> socket=..
 *   AOKEY sndid=.. rcvid=.. pkt_good=.. pkt_bad=.. alg=.. maclen=.. current=0|1 rnext=0|1
 * current_key/rnext print "none" when the socket has none.
 *
 * Exit status: 0 transfer completed; 1 error; 2 usage; 3 timeout.
 *
 * Build: gcc -static -O2 -Wall -Wextra -o aopeer aopeer.c
 * (the SHA-256 below is written for this file and dedicated to the public domain.)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <linux/types.h>
#include <linux/socket.h> /* struct __kernel_sockaddr_storage */
#include <linux/tcp.h>

#ifndef TCP_AO_ADD_KEY
/*
 * Debian bookworm's linux-libc-dev (6.1) predates TCP-AO (Linux 6.7). The definitions below
 * are copied from include/uapi/linux/tcp.h of Linux 6.12 (Debian linux-source-6.12); when the
 * system header has them, it is used instead, and the _Static_asserts further down check that
 * both agree on the layout (build-initramfs.sh compiles this file once against the 6.12 header).
 */
#define TCP_AO_ADD_KEY		38	/* Add/Set MKT */
#define TCP_AO_DEL_KEY		39	/* Delete MKT */
#define TCP_AO_INFO		40	/* Set/list TCP-AO per-socket options */
#define TCP_AO_GET_KEYS		41	/* List MKT(s) */
#define TCP_AO_REPAIR		42	/* Get/Set SNEs and ISNs */

#define TCP_AO_MAXKEYLEN	80

#define TCP_AO_KEYF_IFINDEX	(1 << 0)	/* L3 ifindex for VRF */
#define TCP_AO_KEYF_EXCLUDE_OPT	(1 << 1)	/* "Indicates whether TCP
						 *  options other than TCP-AO
						 *  are included in the MAC
						 *  calculation"
						 */

struct tcp_ao_add { /* setsockopt(TCP_AO_ADD_KEY) */
	struct __kernel_sockaddr_storage addr;	/* peer's address for the key */
	char	alg_name[64];		/* crypto hash algorithm to use */
	__s32	ifindex;		/* L3 dev index for VRF */
	__u32   set_current	:1,	/* set key as Current_key at once */
		set_rnext	:1,	/* request it from peer with RNext_key */
		reserved	:30;	/* must be 0 */
	__u16	reserved2;		/* padding, must be 0 */
	__u8	prefix;			/* peer's address prefix */
	__u8	sndid;			/* SendID for outgoing segments */
	__u8	rcvid;			/* RecvID to match for incoming seg */
	__u8	maclen;			/* length of authentication code (hash) */
	__u8	keyflags;		/* see TCP_AO_KEYF_ */
	__u8	keylen;			/* length of ::key */
	__u8	key[TCP_AO_MAXKEYLEN];
} __attribute__((aligned(8)));

struct tcp_ao_del { /* setsockopt(TCP_AO_DEL_KEY) */
	struct __kernel_sockaddr_storage addr;	/* peer's address for the key */
	__s32	ifindex;		/* L3 dev index for VRF */
	__u32   set_current	:1,	/* corresponding ::current_key */
		set_rnext	:1,	/* corresponding ::rnext */
		del_async	:1,	/* only valid for listen sockets */
		reserved	:29;	/* must be 0 */
	__u16	reserved2;		/* padding, must be 0 */
	__u8	prefix;			/* peer's address prefix */
	__u8	sndid;			/* SendID for outgoing segments */
	__u8	rcvid;			/* RecvID to match for incoming seg */
	__u8	current_key;		/* KeyID to set as Current_key */
	__u8	rnext;			/* KeyID to set as Rnext_key */
	__u8	keyflags;		/* see TCP_AO_KEYF_ */
} __attribute__((aligned(8)));

struct tcp_ao_info_opt { /* setsockopt(TCP_AO_INFO), getsockopt(TCP_AO_INFO) */
	/* Here 'in' is for setsockopt(), 'out' is for getsockopt() */
	__u32   set_current	:1,	/* in/out: corresponding ::current_key */
		set_rnext	:1,	/* in/out: corresponding ::rnext */
		ao_required	:1,	/* in/out: don't accept non-AO connects */
		set_counters	:1,	/* in: set/clear ::pkt_* counters */
		accept_icmps	:1,	/* in/out: accept incoming ICMPs */
		reserved	:27;	/* must be 0 */
	__u16	reserved2;		/* padding, must be 0 */
	__u8	current_key;		/* in/out: KeyID of Current_key */
	__u8	rnext;			/* in/out: keyid of RNext_key */
	__u64	pkt_good;		/* in/out: verified segments */
	__u64	pkt_bad;		/* in/out: failed verification */
	__u64	pkt_key_not_found;	/* in/out: could not find a key to verify */
	__u64	pkt_ao_required;	/* in/out: segments missing TCP-AO sign */
	__u64	pkt_dropped_icmp;	/* in/out: ICMPs that were ignored */
} __attribute__((aligned(8)));

struct tcp_ao_getsockopt { /* getsockopt(TCP_AO_GET_KEYS) */
	struct __kernel_sockaddr_storage addr;	/* in/out: dump keys for peer
						 * with this address/prefix
						 */
	char	alg_name[64];		/* out: crypto hash algorithm */
	__u8	key[TCP_AO_MAXKEYLEN];
	__u32	nkeys;			/* in: size of the userspace buffer
					 * @optval, measured in @optlen - the
					 * sizeof(struct tcp_ao_getsockopt)
					 * out: number of keys that matched
					 */
	__u16   is_current	:1,	/* in: match and dump Current_key,
					 * out: the dumped key is Current_key
					 */

		is_rnext	:1,	/* in: match and dump RNext_key,
					 * out: the dumped key is RNext_key
					 */
		get_all		:1,	/* in: dump all keys */
		reserved	:13;	/* padding, must be 0 */
	__u8	sndid;			/* in/out: dump keys with SendID */
	__u8	rcvid;			/* in/out: dump keys with RecvID */
	__u8	prefix;			/* in/out: dump keys with address/prefix */
	__u8	maclen;			/* out: key's length of authentication
					 * code (hash)
					 */
	__u8	keyflags;		/* in/out: see TCP_AO_KEYF_ */
	__u8	keylen;			/* out: length of ::key */
	__s32	ifindex;		/* in/out: L3 dev index for VRF */
	__u64	pkt_good;		/* out: verified segments */
	__u64	pkt_bad;		/* out: segments that failed verification */
} __attribute__((aligned(8)));
#endif /* !TCP_AO_ADD_KEY */

/* Layout as in Linux 6.12 on x86_64 (checked against the kernel header, see above). */
_Static_assert(TCP_AO_ADD_KEY == 38 && TCP_AO_DEL_KEY == 39 && TCP_AO_INFO == 40 &&
	       TCP_AO_GET_KEYS == 41, "TCP-AO socket option numbers");
_Static_assert(TCP_AO_MAXKEYLEN == 80 && TCP_AO_KEYF_EXCLUDE_OPT == 2, "TCP-AO constants");
_Static_assert(sizeof(struct tcp_ao_add) == 288, "struct tcp_ao_add size");
_Static_assert(offsetof(struct tcp_ao_add, alg_name) == 128, "tcp_ao_add.alg_name");
_Static_assert(offsetof(struct tcp_ao_add, ifindex) == 192, "tcp_ao_add.ifindex");
_Static_assert(offsetof(struct tcp_ao_add, reserved2) == 200, "tcp_ao_add.reserved2");
_Static_assert(offsetof(struct tcp_ao_add, prefix) == 202, "tcp_ao_add.prefix");
_Static_assert(offsetof(struct tcp_ao_add, keylen) == 207, "tcp_ao_add.keylen");
_Static_assert(offsetof(struct tcp_ao_add, key) == 208, "tcp_ao_add.key");
_Static_assert(sizeof(struct tcp_ao_info_opt) == 48, "struct tcp_ao_info_opt size");
_Static_assert(offsetof(struct tcp_ao_info_opt, current_key) == 6, "tcp_ao_info_opt.current_key");
_Static_assert(offsetof(struct tcp_ao_info_opt, pkt_good) == 8, "tcp_ao_info_opt.pkt_good");
_Static_assert(offsetof(struct tcp_ao_info_opt, pkt_dropped_icmp) == 40, "tcp_ao_info_opt.pkt_dropped_icmp");
_Static_assert(sizeof(struct tcp_ao_getsockopt) == 304, "struct tcp_ao_getsockopt size");
_Static_assert(offsetof(struct tcp_ao_getsockopt, nkeys) == 272, "tcp_ao_getsockopt.nkeys");
_Static_assert(offsetof(struct tcp_ao_getsockopt, sndid) == 278, "tcp_ao_getsockopt.sndid");
_Static_assert(offsetof(struct tcp_ao_getsockopt, ifindex) == 284, "tcp_ao_getsockopt.ifindex");
_Static_assert(offsetof(struct tcp_ao_getsockopt, pkt_bad) == 296, "tcp_ao_getsockopt.pkt_bad");

/* ------------------------------------------------------------------------------------------ */
/* SHA-256 (FIPS 180-4). Written for this file; public domain.                                 */

struct sha256 {
	uint32_t h[8];
	uint64_t len;
	uint8_t buf[64];
	size_t fill;
};

static const uint32_t sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(struct sha256 *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, iv, sizeof(iv));
	s->len = 0;
	s->fill = 0;
}

static void sha256_block(struct sha256 *s, const uint8_t *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ROR32(w[i - 15], 7) ^ ROR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR32(w[i - 2], 17) ^ ROR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
	e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
	for (i = 0; i < 64; i++) {
		uint32_t t1 = h + (ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25)) + ((e & f) ^ (~e & g)) +
			      sha256_k[i] + w[i];
		uint32_t t2 = (ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22)) +
			      ((a & b) ^ (a & c) ^ (b & c));
		h = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
	s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_update(struct sha256 *s, const void *data, size_t n)
{
	const uint8_t *p = data;

	s->len += n;
	if (s->fill) {
		size_t take = 64 - s->fill < n ? 64 - s->fill : n;
		memcpy(s->buf + s->fill, p, take);
		s->fill += take;
		p += take;
		n -= take;
		if (s->fill < 64)
			return;
		sha256_block(s, s->buf);
		s->fill = 0;
	}
	for (; n >= 64; p += 64, n -= 64)
		sha256_block(s, p);
	memcpy(s->buf, p, n);
	s->fill = n;
}

static void sha256_hex(struct sha256 *s, char out[65])
{
	uint64_t bits = s->len * 8;
	uint8_t pad[72] = { 0x80 };
	size_t padlen = (s->fill < 56 ? 56 : 120) - s->fill;
	int i;

	for (i = 0; i < 8; i++)
		pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
	sha256_update(s, pad, padlen + 8);
	for (i = 0; i < 8; i++)
		snprintf(out + 8 * i, 9, "%08" PRIx32, s->h[i]);
}

/* ------------------------------------------------------------------------------------------ */
/* Test pattern: xorshift32 seeded with 0x12345678, one byte (low 8 bits) per step.            */

struct pattern {
	uint32_t x;
};

static void pattern_init(struct pattern *p)
{
	p->x = 0x12345678u;
}

static void pattern_fill(struct pattern *p, uint8_t *buf, size_t n)
{
	uint32_t x = p->x;
	size_t i;

	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)x;
	}
	p->x = x;
}

/* ------------------------------------------------------------------------------------------ */

#define EXIT_ERR 1
#define EXIT_USAGE 2
#define EXIT_TIMEOUT 3
#define MAX_KEYS 64
#define MAX_ROLLOVERS 64
#define CHUNK 65536

struct key_spec {
	unsigned sndid, rcvid;
	char alg[64];
	uint8_t secret[TCP_AO_MAXKEYLEN];
	size_t secret_len;
	int exclude_opt;
};

struct rollover {
	uint64_t at;
	unsigned sndid, rcvid;
};

static struct {
	int is_server;
	const char *addr;
	unsigned port;
	struct key_spec keys[MAX_KEYS];
	int nkeys;
	int have_peer;
	struct sockaddr_storage peer;
	unsigned peer_prefix;
	unsigned maclen;
	int current, rnext; /* -1: not given */
	int ao_required;
	uint64_t send_n;
	int recv;
	struct rollover roll[MAX_ROLLOVERS];
	int nroll;
	unsigned timeout_s;
	int sndbuf, rcvbuf; /* 0: kernel default */
} opt;

static uint64_t g_sent, g_received;
static struct sha256 g_hash;

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static const char *errname(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "EUNKNOWN";
}

static void usage(void)
{
	fprintf(stderr,
		"usage: aopeer server --listen ADDR --port N [options]\n"
		"       aopeer client --connect ADDR --port N [options]\n"
		"       aopeer gen N\n"
		"options: --key SNDID:RCVID:ALG:SECRET[:x] (repeatable) --peer ADDR/PREFIXLEN\n"
		"         --maclen N --current SNDID --rnext RCVID --ao-required --send N --recv\n"
		"         --rollover-at BYTES:SNDID:RCVID (repeatable) --timeout SECONDS\n"
		"         --sndbuf N --rcvbuf N\n"
		"see the header of aopeer.c for details\n");
	exit(EXIT_USAGE);
}

static void usage_err(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_err(const char *fmt, ...)
{
	va_list ap;

	printf("ERROR usage: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	usage();
	exit(EXIT_USAGE); /* not reached */
}

static uint64_t parse_u64(const char *s, uint64_t max, const char *what)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!s || !*s || *s == '-')
		usage_err("%s: not a number: '%s'", what, s ? s : "");
	v = strtoull(s, &end, 0);
	if (errno || *end || v > max)
		usage_err("%s: bad value '%s' (max %" PRIu64 ")", what, s, max);
	return v;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* SNDID:RCVID:ALG:SECRET[:x] */
static void parse_key(const char *arg)
{
	struct key_spec *k;
	char *copy, *p, *c1, *c2, *c3, *secret;
	size_t len;

	if (opt.nkeys >= MAX_KEYS)
		usage_err("too many --key (max %d)", MAX_KEYS);
	k = &opt.keys[opt.nkeys++];
	memset(k, 0, sizeof(*k));
	copy = strdup(arg);
	if (!copy)
		abort();
	c1 = strchr(copy, ':');
	c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	c3 = c2 ? strchr(c2 + 1, ':') : NULL;
	if (!c3)
		usage_err("--key '%s': expected SNDID:RCVID:ALG:SECRET[:x]", arg);
	*c1 = *c2 = *c3 = '\0';
	k->sndid = (unsigned)parse_u64(copy, 255, "--key SNDID");
	k->rcvid = (unsigned)parse_u64(c1 + 1, 255, "--key RCVID");
	if (strcmp(c2 + 1, "hmac(sha1)") && strcmp(c2 + 1, "cmac(aes128)") &&
	    strcmp(c2 + 1, "hmac(sha256)"))
		usage_err("--key '%s': ALG must be hmac(sha1), cmac(aes128) or hmac(sha256)", arg);
	snprintf(k->alg, sizeof(k->alg), "%s", c2 + 1);
	secret = c3 + 1;
	len = strlen(secret);
	if (len >= 2 && !strcmp(secret + len - 2, ":x")) {
		k->exclude_opt = 1;
		secret[len - 2] = '\0';
		len -= 2;
	}
	if (len == 0)
		usage_err("--key '%s': empty secret", arg);
	if (len > 2 && secret[0] == '0' && (secret[1] == 'x' || secret[1] == 'X')) {
		p = secret + 2;
		len -= 2;
		if (len % 2 || len / 2 > TCP_AO_MAXKEYLEN)
			usage_err("--key '%s': hex secret needs an even number of digits, at most %d bytes",
				  arg, TCP_AO_MAXKEYLEN);
		for (size_t i = 0; i < len / 2; i++) {
			int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
			if (hi < 0 || lo < 0)
				usage_err("--key '%s': bad hex digit", arg);
			k->secret[i] = (uint8_t)(hi << 4 | lo);
		}
		k->secret_len = len / 2;
	} else {
		if (len > TCP_AO_MAXKEYLEN)
			usage_err("--key '%s': secret longer than %d bytes", arg, TCP_AO_MAXKEYLEN);
		memcpy(k->secret, secret, len);
		k->secret_len = len;
	}
	free(copy);
}

static int parse_addr(const char *s, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		return 0;
	}
	return -1;
}

static void parse_peer(const char *arg)
{
	char *copy = strdup(arg), *slash;
	unsigned max;

	if (!copy)
		abort();
	slash = strchr(copy, '/');
	if (slash)
		*slash = '\0';
	if (parse_addr(copy, &opt.peer))
		usage_err("--peer '%s': not an IPv4/IPv6 address", arg);
	max = opt.peer.ss_family == AF_INET ? 32 : 128;
	opt.peer_prefix = slash ? (unsigned)parse_u64(slash + 1, max, "--peer PREFIXLEN") : max;
	opt.have_peer = 1;
	free(copy);
}

static void parse_rollover(const char *arg)
{
	char *copy = strdup(arg), *c1, *c2;
	struct rollover *r;

	if (!copy)
		abort();
	if (opt.nroll >= MAX_ROLLOVERS)
		usage_err("too many --rollover-at (max %d)", MAX_ROLLOVERS);
	c1 = strchr(copy, ':');
	c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c2)
		usage_err("--rollover-at '%s': expected BYTES:SNDID:RCVID", arg);
	*c1 = *c2 = '\0';
	r = &opt.roll[opt.nroll++];
	r->at = parse_u64(copy, UINT64_MAX, "--rollover-at BYTES");
	r->sndid = (unsigned)parse_u64(c1 + 1, 255, "--rollover-at SNDID");
	r->rcvid = (unsigned)parse_u64(c2 + 1, 255, "--rollover-at RCVID");
	free(copy);
}

static int cmp_roll(const void *a, const void *b)
{
	const struct rollover *x = a, *y = b;
	return x->at < y->at ? -1 : x->at > y->at;
}

/* ------------------------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* poll() one fd until an event or the deadline; retries on EINTR.
 * Returns revents, 0 on timeout, -1 on error (errno set). */
static int poll_until(int fd, short events, uint64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		uint64_t now = now_ms();
		int ms = now >= deadline ? 0 : (int)(deadline - now);
		int r = poll(&p, 1, ms);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return 0;
		return p.revents;
	}
}

static const char *fmt_sa(const struct sockaddr_storage *ss, char *buf, size_t n)
{
	char a[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s->sin_addr, a, sizeof(a));
		snprintf(buf, n, "%s:%u", a, ntohs(s->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof(a));
		snprintf(buf, n, "[%s]:%u", a, ntohs(s->sin6_port));
	} else {
		snprintf(buf, n, "?");
	}
	return buf;
}

/* The key's peer address (kernel rules: port 0, no host bits beyond the prefix, prefix 0 only
 * with the any-address). Fills addr/prefix for struct tcp_ao_add. */
static void key_peer(int family, struct __kernel_sockaddr_storage *dst, __u8 *prefix)
{
	memset(dst, 0, sizeof(*dst));
	if (!opt.have_peer || opt.peer_prefix == 0) {
		dst->ss_family = (unsigned short)family;
		*prefix = 0;
		return;
	}
	if (opt.peer.ss_family == AF_INET) {
		uint32_t a = ntohl(((struct sockaddr_in *)&opt.peer)->sin_addr.s_addr);
		uint32_t mask = opt.peer_prefix >= 32 ? 0xffffffffu : ~(0xffffffffu >> opt.peer_prefix);

		a &= mask;
		if (family == AF_INET) {
			struct sockaddr_in *s = (struct sockaddr_in *)dst;
			s->sin_family = AF_INET;
			s->sin_addr.s_addr = htonl(a);
		} else { /* v4-mapped; the kernel counts the prefix in IPv4 bits */
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)dst;
			s->sin6_family = AF_INET6;
			s->sin6_addr.s6_addr[10] = 0xff;
			s->sin6_addr.s6_addr[11] = 0xff;
			uint32_t be = htonl(a);
			memcpy(&s->sin6_addr.s6_addr[12], &be, 4);
		}
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)dst;
		*s = *(struct sockaddr_in6 *)&opt.peer;
		s->sin6_port = 0;
		for (unsigned i = 0; i < 16; i++) {
			unsigned bits = opt.peer_prefix > 8 * i ? opt.peer_prefix - 8 * i : 0;
			if (bits < 8)
				s->sin6_addr.s6_addr[i] &= (uint8_t)(0xff00 >> bits);
		}
	}
	*prefix = (__u8)opt.peer_prefix;
}

static int add_keys(int fd, int family)
{
	for (int i = 0; i < opt.nkeys; i++) {
		const struct key_spec *k = &opt.keys[i];
		struct tcp_ao_add a;

		memset(&a, 0, sizeof(a));
		key_peer(family, &a.addr, &a.prefix);
		snprintf(a.alg_name, sizeof(a.alg_name), "%s", k->alg);
		a.sndid = (__u8)k->sndid;
		a.rcvid = (__u8)k->rcvid;
		a.maclen = (__u8)opt.maclen;
		a.keyflags = k->exclude_opt ? TCP_AO_KEYF_EXCLUDE_OPT : 0;
		a.keylen = (__u8)k->secret_len;
		memcpy(a.key, k->secret, k->secret_len);
		if (setsockopt(fd, IPPROTO_TCP, TCP_AO_ADD_KEY, &a, sizeof(a)) < 0) {
			out("ERROR setsockopt TCP_AO_ADD_KEY sndid=%u rcvid=%u alg=%s: %s (%s)", k->sndid,
			    k->rcvid, k->alg, errname(errno), strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* TCP_AO_INFO set. TCP_AO_INFO overwrites ao_required and accept_icmps on every call, so the
 * current values are read first and written back unchanged unless ao_required is forced. */
static int ao_info_set(int fd, int cur, int rnext, int force_required)
{
	struct tcp_ao_info_opt now, set;
	socklen_t len = sizeof(now);

	memset(&now, 0, sizeof(now));
	if (getsockopt(fd, IPPROTO_TCP, TCP_AO_INFO, &now, &len) < 0) {
		if (errno != ENOENT) {
			out("ERROR getsockopt TCP_AO_INFO: %s (%s)", errname(errno), strerror(errno));
			return -1;
		}
		memset(&now, 0, sizeof(now));
	}
	memset(&set, 0, sizeof(set));
	set.ao_required = now.ao_required || force_required;
	set.accept_icmps = now.accept_icmps;
	if (cur >= 0) {
		set.set_current = 1;
		set.current_key = (__u8)cur;
	}
	if (rnext >= 0) {
		set.set_rnext = 1;
		set.rnext = (__u8)rnext;
	}
	if (setsockopt(fd, IPPROTO_TCP, TCP_AO_INFO, &set, sizeof(set)) < 0) {
		out("ERROR setsockopt TCP_AO_INFO current=%d rnext=%d ao_required=%u: %s (%s)", cur,
		    rnext, (unsigned)set.ao_required, errname(errno), strerror(errno));
		return -1;
	}
	return 0;
}

static void print_keyid(char *buf, size_t n, int set, unsigned id)
{
	if (set)
		snprintf(buf, n, "%u", id);
	else
		snprintf(buf, n, "none");
}

static void report_ao(int fd, const char *sockname)
{
	struct tcp_ao_info_opt info;
	socklen_t len = sizeof(info);
	char cur[8], rn[8];

	if (fd < 0) {
		out("AOINFO unavailable reason=no-socket socket=%s", sockname);
		return;
	}
	memset(&info, 0, sizeof(info));
	if (getsockopt(fd, IPPROTO_TCP, TCP_AO_INFO, &info, &len) < 0) {
		out("AOINFO unavailable reason=%s socket=%s", errname(errno), sockname);
		return;
	}
	print_keyid(cur, sizeof(cur), info.set_current, info.current_key);
	print_keyid(rn, sizeof(rn), info.set_rnext, info.rnext);
	out("AOINFO pkt_good=%llu pkt_bad=%llu pkt_key_not_found=%llu pkt_ao_required=%llu "
	    "pkt_dropped_icmp=%llu current_key=%s rnext=%s ao_required=%u socket=%s",
	    (unsigned long long)info.pkt_good, (unsigned long long)info.pkt_bad,
	    (unsigned long long)info.pkt_key_not_found, (unsigned long long)info.pkt_ao_required,
	    (unsigned long long)info.pkt_dropped_icmp, cur, rn, (unsigned)info.ao_required, sockname);

	/* TCP_AO_GET_KEYS: optlen is the size of ONE struct (the stride); nkeys says how many
	 * structs the buffer holds and returns how many keys matched. */
	unsigned cap = MAX_KEYS;
	for (int attempt = 0; attempt < 2; attempt++) {
		struct tcp_ao_getsockopt *keys = calloc(cap, sizeof(*keys));
		socklen_t klen = sizeof(*keys);

		if (!keys)
			abort();
		keys[0].nkeys = cap;
		keys[0].get_all = 1;
		if (getsockopt(fd, IPPROTO_TCP, TCP_AO_GET_KEYS, keys, &klen) < 0) {
			out("NOTE getsockopt TCP_AO_GET_KEYS: %s (%s)", errname(errno), strerror(errno));
			free(keys);
			return;
		}
		unsigned matched = keys[0].nkeys;
		if (matched > cap && attempt == 0) {
			cap = matched;
			free(keys);
			continue;
		}
		for (unsigned i = 0; i < matched && i < cap; i++)
			out("AOKEY sndid=%u rcvid=%u pkt_good=%llu pkt_bad=%llu alg=%s maclen=%u "
			    "current=%u rnext=%u",
			    keys[i].sndid, keys[i].rcvid, (unsigned long long)keys[i].pkt_good,
			    (unsigned long long)keys[i].pkt_bad, keys[i].alg_name, keys[i].maclen,
			    (unsigned)keys[i].is_current, (unsigned)keys[i].is_rnext);
		free(keys);
		return;
	}
}

static void report_result(void)
{
	char hex[65];

	sha256_hex(&g_hash, hex);
	out("RESULT sent=%llu received=%llu sha256=%s", (unsigned long long)g_sent,
	    (unsigned long long)g_received, hex);
}

static int finish(int rc, int fd, const char *sockname)
{
	report_result();
	report_ao(fd, sockname);
	return rc;
}

/* Bidirectional transfer on a connected, non-blocking socket. Returns an exit status. */
static int transfer(int fd)
{
	static uint8_t sbuf[CHUNK], rbuf[CHUNK];
	struct pattern pat;
	size_t spos = 0, slen = 0;
	int shut_wr = 0, eof = 0, ri = 0;
	const int count_sent = opt.send_n > 0;
	uint64_t deadline = now_ms() + (uint64_t)opt.timeout_s * 1000;

	pattern_init(&pat);
	qsort(opt.roll, (size_t)opt.nroll, sizeof(opt.roll[0]), cmp_roll);

	for (;;) {
		/* Key rollovers due at the current byte count. */
		uint64_t counted = count_sent ? g_sent : g_received;
		while (ri < opt.nroll && opt.roll[ri].at <= counted) {
			if (ao_info_set(fd, (int)opt.roll[ri].sndid, (int)opt.roll[ri].rcvid, 0) < 0)
				return EXIT_ERR;
			out("ROLLOVER bytes=%llu current=%u rnext=%u", (unsigned long long)counted,
			    opt.roll[ri].sndid, opt.roll[ri].rcvid);
			ri++;
		}
		uint64_t limit = ri < opt.nroll ? opt.roll[ri].at : UINT64_MAX; /* next boundary */

		if (!shut_wr && g_sent == opt.send_n) {
			if (shutdown(fd, SHUT_WR) < 0) {
				out("ERROR shutdown(SHUT_WR): %s (%s)", errname(errno), strerror(errno));
				return EXIT_ERR;
			}
			shut_wr = 1;
		}
		if (shut_wr && eof)
			return 0;

		short ev = (short)(eof ? 0 : POLLIN);
		if (!shut_wr)
			ev |= POLLOUT;
		int r = poll_until(fd, ev, deadline);
		if (r < 0) {
			out("ERROR poll: %s (%s)", errname(errno), strerror(errno));
			return EXIT_ERR;
		}
		if (r == 0) {
			if (shut_wr && !opt.recv) {
				out("NOTE peer did not close within %us after our shutdown; done anyway",
				    opt.timeout_s);
				return 0;
			}
			out("ERROR timeout: no progress for %us (sent=%llu/%llu received=%llu%s)",
			    opt.timeout_s, (unsigned long long)g_sent, (unsigned long long)opt.send_n,
			    (unsigned long long)g_received, eof ? " eof" : "");
			return EXIT_TIMEOUT;
		}
		int progress = 0;

		if (!eof && (r & (POLLIN | POLLHUP | POLLERR))) {
			size_t want = sizeof(rbuf);
			if (!count_sent && limit - g_received < want)
				want = (size_t)(limit - g_received);
			ssize_t n = recv(fd, rbuf, want, 0);
			if (n > 0) {
				sha256_update(&g_hash, rbuf, (size_t)n);
				g_received += (uint64_t)n;
				progress = 1;
			} else if (n == 0) {
				eof = 1;
				progress = 1;
			} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
				out("ERROR recv: %s (%s)", errname(errno), strerror(errno));
				return EXIT_ERR;
			}
		}
		if (!shut_wr && (r & (POLLOUT | POLLERR | POLLHUP))) {
			if (spos == slen) {
				uint64_t left = opt.send_n - g_sent;
				slen = left < sizeof(sbuf) ? (size_t)left : sizeof(sbuf);
				pattern_fill(&pat, sbuf, slen);
				spos = 0;
			}
			size_t want = slen - spos;
			if (count_sent && limit - g_sent < want)
				want = (size_t)(limit - g_sent);
			ssize_t n = send(fd, sbuf + spos, want, MSG_NOSIGNAL);
			if (n > 0) {
				spos += (size_t)n;
				g_sent += (uint64_t)n;
				progress = 1;
			} else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
				out("ERROR send: %s (%s)", errname(errno), strerror(errno));
				return EXIT_ERR;
			}
		}
		if (progress)
			deadline = now_ms() + (uint64_t)opt.timeout_s * 1000;
	}
}

static int make_socket(int family)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);

	if (fd < 0) {
		out("ERROR socket: %s (%s)", errname(errno), strerror(errno));
		return -1;
	}
	if ((opt.sndbuf && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opt.sndbuf, sizeof(int)) < 0) ||
	    (opt.rcvbuf && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof(int)) < 0)) {
		out("ERROR setsockopt SO_SNDBUF/SO_RCVBUF: %s (%s)", errname(errno), strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void print_connected(int fd)
{
	struct sockaddr_storage l, p;
	socklen_t ll = sizeof(l), pl = sizeof(p);
	char lb[80], pb[80];

	memset(&l, 0, sizeof(l));
	memset(&p, 0, sizeof(p));
	getsockname(fd, (struct sockaddr *)&l, &ll);
	getpeername(fd, (struct sockaddr *)&p, &pl);
	out("CONNECTED local=%s peer=%s", fmt_sa(&l, lb, sizeof(lb)), fmt_sa(&p, pb, sizeof(pb)));
}

static void set_port(struct sockaddr_storage *ss, unsigned port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

static socklen_t sa_len(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static int run_server(void)
{
	struct sockaddr_storage sa;
	int one = 1, lfd, fd, rc;
	char buf[80];

	if (parse_addr(opt.addr, &sa))
		usage_err("--listen '%s': not an IPv4/IPv6 address", opt.addr);
	set_port(&sa, opt.port);
	lfd = make_socket(sa.ss_family);
	if (lfd < 0)
		return finish(EXIT_ERR, -1, "listening");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* Keys (and ao_required) go on the listening socket before listen(); accepted sockets
	 * inherit the keys matching the peer. Current/RNext cannot be set on a TCP_LISTEN socket
	 * and are chosen per connection from the client's SYN, see --current. */
	if (add_keys(lfd, sa.ss_family) < 0)
		return finish(EXIT_ERR, lfd, "listening");
	if (opt.ao_required && ao_info_set(lfd, -1, -1, 1) < 0)
		return finish(EXIT_ERR, lfd, "listening");
	if (bind(lfd, (struct sockaddr *)&sa, sa_len(&sa)) < 0 || listen(lfd, 1) < 0 ||
	    set_nonblock(lfd) < 0) {
		out("ERROR bind/listen %s: %s (%s)", fmt_sa(&sa, buf, sizeof(buf)), errname(errno),
		    strerror(errno));
		return finish(EXIT_ERR, lfd, "listening");
	}
	out("LISTENING addr=%s port=%u", opt.addr, opt.port);

	uint64_t deadline = now_ms() + (uint64_t)opt.timeout_s * 1000;
	for (;;) {
		int r = poll_until(lfd, POLLIN, deadline);
		if (r < 0) {
			out("ERROR poll: %s (%s)", errname(errno), strerror(errno));
			return finish(EXIT_ERR, lfd, "listening");
		}
		if (r == 0) {
			out("ERROR timeout: no connection accepted within %us", opt.timeout_s);
			return finish(EXIT_TIMEOUT, lfd, "listening");
		}
		fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			break;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
		    errno != ECONNABORTED) {
			out("ERROR accept: %s (%s)", errname(errno), strerror(errno));
			return finish(EXIT_ERR, lfd, "listening");
		}
	}
	close(lfd);
	print_connected(fd);
	if ((opt.current >= 0 || opt.rnext >= 0) && ao_info_set(fd, opt.current, opt.rnext, 0) < 0)
		return finish(EXIT_ERR, fd, "connected");
	rc = transfer(fd);
	rc = finish(rc, fd, "connected");
	close(fd);
	return rc;
}

static int run_client(void)
{
	struct sockaddr_storage sa;
	int fd, rc, err = 0;
	socklen_t elen = sizeof(err);
	char buf[80];

	if (parse_addr(opt.addr, &sa))
		usage_err("--connect '%s': not an IPv4/IPv6 address", opt.addr);
	set_port(&sa, opt.port);
	fd = make_socket(sa.ss_family);
	if (fd < 0)
		return finish(EXIT_ERR, -1, "connecting");
	if (add_keys(fd, sa.ss_family) < 0)
		return finish(EXIT_ERR, fd, "connecting");
	/* Without --current/--rnext the kernel would pick the first key in its list, which is
	 * the last one added; default to the first --key instead, which is what one expects. */
	int cur = opt.current, rn = opt.rnext;
	if (opt.nkeys > 0 && cur < 0)
		cur = (int)opt.keys[0].sndid;
	if (opt.nkeys > 0 && rn < 0)
		rn = (int)opt.keys[0].rcvid;
	if ((cur >= 0 || rn >= 0 || opt.ao_required) && ao_info_set(fd, cur, rn, opt.ao_required) < 0)
		return finish(EXIT_ERR, fd, "connecting");
	if (set_nonblock(fd) < 0) {
		out("ERROR fcntl: %s", errname(errno));
		return finish(EXIT_ERR, fd, "connecting");
	}
	if (connect(fd, (struct sockaddr *)&sa, sa_len(&sa)) < 0 && errno != EINPROGRESS &&
	    errno != EINTR) {
		out("ERROR connect %s: %s (%s)", fmt_sa(&sa, buf, sizeof(buf)), errname(errno),
		    strerror(errno));
		return finish(EXIT_ERR, fd, "connecting");
	}
	int r = poll_until(fd, POLLOUT, now_ms() + (uint64_t)opt.timeout_s * 1000);
	if (r < 0) {
		out("ERROR poll: %s (%s)", errname(errno), strerror(errno));
		return finish(EXIT_ERR, fd, "connecting");
	}
	if (r == 0) {
		out("ERROR timeout: connect to %s not established within %us",
		    fmt_sa(&sa, buf, sizeof(buf)), opt.timeout_s);
		return finish(EXIT_TIMEOUT, fd, "connecting");
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
		err = errno;
	if (err) {
		out("ERROR connect %s: %s (%s)", fmt_sa(&sa, buf, sizeof(buf)), errname(err),
		    strerror(err));
		return finish(err == ETIMEDOUT ? EXIT_TIMEOUT : EXIT_ERR, fd, "connecting");
	}
	print_connected(fd);
	rc = transfer(fd);
	rc = finish(rc, fd, "connected");
	close(fd);
	return rc;
}

static int run_gen(int argc, char **argv)
{
	static uint8_t buf[CHUNK];
	struct pattern pat;
	uint64_t left;

	if (argc != 3)
		usage();
	left = parse_u64(argv[2], UINT64_MAX, "gen N");
	pattern_init(&pat);
	while (left > 0) {
		size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf), off = 0;
		pattern_fill(&pat, buf, n);
		while (off < n) {
			ssize_t w = write(STDOUT_FILENO, buf + off, n - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				fprintf(stderr, "aopeer gen: write: %s\n", strerror(errno));
				return EXIT_ERR;
			}
			off += (size_t)w;
		}
		left -= n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "connect", required_argument, NULL, 'c' },
		{ "port", required_argument, NULL, 'p' },
		{ "key", required_argument, NULL, 'k' },
		{ "peer", required_argument, NULL, 'P' },
		{ "maclen", required_argument, NULL, 'm' },
		{ "current", required_argument, NULL, 'C' },
		{ "rnext", required_argument, NULL, 'R' },
		{ "ao-required", no_argument, NULL, 'A' },
		{ "send", required_argument, NULL, 's' },
		{ "recv", no_argument, NULL, 'r' },
		{ "rollover-at", required_argument, NULL, 'o' },
		{ "timeout", required_argument, NULL, 't' },
		{ "sndbuf", required_argument, NULL, 'S' },
		{ "rcvbuf", required_argument, NULL, 'B' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *listen_addr = NULL, *connect_addr = NULL;
	int have_port = 0, c;

	signal(SIGPIPE, SIG_IGN);
	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "gen"))
		return run_gen(argc, argv);
	if (!strcmp(argv[1], "server"))
		opt.is_server = 1;
	else if (strcmp(argv[1], "client"))
		usage();

	opt.maclen = 12;
	opt.current = opt.rnext = -1;
	opt.timeout_s = 20;
	sha256_init(&g_hash);
	optind = 2;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'l': listen_addr = optarg; break;
		case 'c': connect_addr = optarg; break;
		case 'p': opt.port = (unsigned)parse_u64(optarg, 65535, "--port"); have_port = 1; break;
		case 'k': parse_key(optarg); break;
		case 'P': parse_peer(optarg); break;
		case 'm': opt.maclen = (unsigned)parse_u64(optarg, 255, "--maclen"); break;
		case 'C': opt.current = (int)parse_u64(optarg, 255, "--current"); break;
		case 'R': opt.rnext = (int)parse_u64(optarg, 255, "--rnext"); break;
		case 'A': opt.ao_required = 1; break;
		case 's': opt.send_n = parse_u64(optarg, UINT64_MAX, "--send"); break;
		case 'r': opt.recv = 1; break;
		case 'o': parse_rollover(optarg); break;
		case 't':
			opt.timeout_s = (unsigned)parse_u64(optarg, 86400, "--timeout");
			if (opt.timeout_s == 0)
				usage_err("--timeout must be > 0");
			break;
		case 'S': opt.sndbuf = (int)parse_u64(optarg, 1 << 30, "--sndbuf"); break;
		case 'B': opt.rcvbuf = (int)parse_u64(optarg, 1 << 30, "--rcvbuf"); break;
		case 'h': usage(); break;
		default: usage_err("unknown option");
		}
	}
	if (optind != argc)
		usage_err("unexpected argument '%s'", argv[optind]);
	if (!have_port)
		usage_err("--port is required");
	if (opt.is_server) {
		if (!listen_addr || connect_addr)
			usage_err("server needs --listen ADDR (and no --connect)");
		opt.addr = listen_addr;
		return run_server();
	}
	if (!connect_addr || listen_addr)
		usage_err("client needs --connect ADDR (and no --listen)");
	opt.addr = connect_addr;
	return run_client();
}
