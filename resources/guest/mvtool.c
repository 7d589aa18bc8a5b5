/* mvtool: the test guest's data tool (static, in rootfs.ext4 as /bin/mvtool).
 *
 * Why it exists: on PVM hosts (shared/notes/kvm-host.md) every byte the guest
 * *kernel* copies runs in KVM's instruction emulator, at a few hundred KB/s, while
 * guest *user* code runs natively. `dd iflag=direct if=/dev/vdb | sha256sum` copies
 * the data twice more through a pipe (25 s for 4 MiB on a slow day); `seq | nc`
 * and `nc | sha256sum` do the same to network data. mvtool generates, hashes and
 * moves data inside one process: disks are read with O_DIRECT (the device writes
 * straight into this process's buffer, no kernel copy), and network data is
 * generated and hashed where it is sent and received (the one copy TCP needs).
 *
 *   mvtool sha256 [-l LABEL] PATH [OFFSET LENGTH]
 *       SHA-256 of PATH (a file or block device) from OFFSET (default 0) for LENGTH
 *       bytes (default: to the end), read with O_DIRECT in 1 MiB requests when the
 *       file allows it (buffered otherwise). Prints "<hex>  <bytes>", or with -l
 *       "LABEL=<hex> <bytes>" (what `echo LABEL=$(mvtool ...)` would, without the
 *       subshell's fork).
 *   mvtool send ADDR PORT seq N | text STRING
 *       Connect to ADDR:PORT (retrying for up to 300 s), send what busybox `seq 1 N`
 *       prints, or STRING and a newline, half-close, and wait for the peer to close.
 *       Prints "sent <bytes> <hex>".
 *   mvtool recv PORT [text]
 *       Accept one connection on PORT (waiting up to 300 s), read to the end; prints
 *       "received <bytes> <hex>", or with `text` the data itself.
 *
 *   mvtool spin MILLIONS CPU[,CPU...]
 *       One thread per CPU listed, pinned to it, each busy-looping MILLIONS million
 *       iterations of a multiply chain in user space (about 1 s per 1000 on a 3 GHz
 *       core) without a system call. One process, so nothing else starts while it
 *       runs (tests/README.md, "A PVM host bug"). Prints each loop's wall time:
 *       "spin cpu0=<secs> cpu1=<secs>".
 *
 * Exit status 0 on success, 1 on an I/O or network error (with a message on stderr),
 * 2 on bad arguments. SHA-256 is implemented here from FIPS 180-4. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define WAIT_SECS 300

/* --- SHA-256 (FIPS 180-4, section 6.2) ------------------------------------------ */

struct sha256 {
	uint32_t h[8];
	uint8_t block[64];
	size_t used;
	uint64_t bytes;
};

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};

static uint32_t ror(uint32_t x, int n)
{
	return (x >> n) | (x << (32 - n));
}

static void sha256_init(struct sha256 *s)
{
	static const uint32_t h0[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
					0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, h0, sizeof(h0));
	s->used = 0;
	s->bytes = 0;
}

static void sha256_block(struct sha256 *s, const uint8_t *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
	e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) +
			      K[i] + w[i];
		uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1;
		d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha256_update(struct sha256 *s, const void *data, size_t n)
{
	const uint8_t *p = data;
	s->bytes += n;
	while (n > 0) {
		if (s->used == 0 && n >= 64) {
			sha256_block(s, p);
			p += 64, n -= 64;
			continue;
		}
		size_t take = 64 - s->used < n ? 64 - s->used : n;
		memcpy(s->block + s->used, p, take);
		s->used += take, p += take, n -= take;
		if (s->used == 64) {
			sha256_block(s, s->block);
			s->used = 0;
		}
	}
}

/* Finish and write the digest as 64 hex digits and a NUL into out. */
static void sha256_hex(struct sha256 *s, char out[65])
{
	uint64_t bits = s->bytes * 8;
	uint8_t pad[72] = { 0x80 };
	size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
	for (int i = 0; i < 8; i++)
		pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
	sha256_update(s, pad, padlen + 8);
	for (int i = 0; i < 8; i++)
		sprintf(out + 8 * i, "%08x", s->h[i]);
}

/* --- helpers -------------------------------------------------------------------- */

static int fail(const char *what)
{
	fprintf(stderr, "mvtool: %s: %s\n", what, strerror(errno));
	return 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: mvtool sha256 [-l LABEL] PATH [OFFSET LENGTH] | send ADDR PORT seq N | "
			"send ADDR PORT text STRING | recv PORT [text] | spin MILLIONS CPU[,CPU...]\n");
	return 2;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int parse_u64(const char *s, unsigned long long *v)
{
	char *end;
	errno = 0;
	*v = strtoull(s, &end, 0);
	return errno || *end || end == s ? -1 : 0;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w, n -= (size_t)w;
	}
	return 0;
}

/* --- sha256 of a file or device ----------------------------------------------------- */

static int cmd_sha256(int argc, char **argv)
{
	unsigned long long off = 0, len = ~0ULL;
	const char *label = NULL;
	if (argc >= 2 && strcmp(argv[0], "-l") == 0) {
		label = argv[1];
		argc -= 2, argv += 2;
	}
	if (argc != 1 && argc != 3)
		return usage();
	if (argc == 3 && (parse_u64(argv[1], &off) || parse_u64(argv[2], &len)))
		return usage();
	int direct = 1;
	int fd = open(argv[0], O_RDONLY | O_DIRECT);
	if (fd < 0 && errno == EINVAL) {
		direct = 0;
		fd = open(argv[0], O_RDONLY);
	}
	if (fd < 0)
		return fail(argv[0]);
	char *buf = aligned_alloc(4096, CHUNK);
	if (!buf)
		return fail("memory");
	struct sha256 s;
	sha256_init(&s);
	/* O_DIRECT wants aligned offsets and sizes: read whole 4 KiB-aligned blocks and
	 * hash the requested part of each. */
	unsigned long long pos = direct ? off & ~4095ULL : off, end = len == ~0ULL ? ~0ULL : off + len;
	while (pos < end) {
		/* Never ask for more than is wanted: a device such as /dev/hwrng makes every byte. */
		size_t want = CHUNK;
		if (end != ~0ULL && end - pos < want)
			want = direct ? (size_t)((end - pos + 4095) & ~4095ULL) : (size_t)(end - pos);
		ssize_t n = pread(fd, buf, want, (off_t)pos);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail(argv[0]);
		if (n == 0)
			break;
		unsigned long long from = pos < off ? off - pos : 0;
		unsigned long long to = (unsigned long long)n;
		if (end - pos < to)
			to = end - pos;
		if (to > from)
			sha256_update(&s, buf + from, (size_t)(to - from));
		pos += (unsigned long long)n;
	}
	if (len != ~0ULL && s.bytes != len) {
		fprintf(stderr, "mvtool: %s: only %llu of %llu bytes\n", argv[0],
			(unsigned long long)s.bytes, len);
		return 1;
	}
	char hex[65];
	unsigned long long total = s.bytes;
	sha256_hex(&s, hex);
	if (label)
		printf("%s=%s %llu\n", label, hex, total);
	else
		printf("%s  %llu\n", hex, total);
	return 0;
}

/* --- TCP ------------------------------------------------------------------------------ */

static int cmd_send(int argc, char **argv)
{
	unsigned long long port, n = 0;
	if (argc != 4 || parse_u64(argv[1], &port) || port > 65535)
		return usage();
	int seq = strcmp(argv[2], "seq") == 0;
	if (!seq && strcmp(argv[2], "text") != 0)
		return usage();
	if (seq && parse_u64(argv[3], &n))
		return usage();
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, argv[0], &sa.sin_addr) != 1)
		return usage();
	int fd = -1;
	double give_up = now() + WAIT_SECS;
	for (;;) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			return fail("socket");
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		if (now() > give_up)
			return fail("connect");
		close(fd);
		sleep(1);
	}
	struct sha256 s;
	sha256_init(&s);
	static char buf[64 * 1024 + 32];
	size_t used = 0;
	if (seq) {
		for (unsigned long long i = 1; i <= n; i++) {
			used += (size_t)sprintf(buf + used, "%llu\n", i);
			if (used >= 64 * 1024 || i == n) {
				sha256_update(&s, buf, used);
				if (write_all(fd, buf, used))
					return fail("send");
				used = 0;
			}
		}
	} else {
		sha256_update(&s, argv[3], strlen(argv[3]));
		sha256_update(&s, "\n", 1);
		if (write_all(fd, argv[3], strlen(argv[3])) || write_all(fd, "\n", 1))
			return fail("send");
	}
	shutdown(fd, SHUT_WR);
	/* Wait for the peer to close: it has read everything then. */
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	char hex[65];
	unsigned long long total = s.bytes;
	sha256_hex(&s, hex);
	printf("sent %llu %s\n", total, hex);
	return 0;
}

static int cmd_recv(int argc, char **argv)
{
	unsigned long long port;
	if (argc < 1 || argc > 2 || parse_u64(argv[0], &port) || port > 65535)
		return usage();
	int text = argc == 2;
	if (text && strcmp(argv[1], "text") != 0)
		return usage();
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	if (l < 0)
		return fail("socket");
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1))
		return fail("listen");
	struct timeval tv = { .tv_sec = WAIT_SECS };
	setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	int fd = accept(l, NULL, NULL);
	if (fd < 0)
		return fail("accept");
	close(l);
	struct sha256 s;
	sha256_init(&s);
	static char buf[64 * 1024];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail("receive");
		if (n == 0)
			break;
		sha256_update(&s, buf, (size_t)n);
		if (text && write_all(1, buf, (size_t)n))
			return fail("stdout");
	}
	close(fd);
	if (!text) {
		char hex[65];
		unsigned long long total = s.bytes;
		sha256_hex(&s, hex);
		printf("received %llu %s\n", total, hex);
	}
	return 0;
}

/* --- spinning ------------------------------------------------------------------------- */

struct spinner {
	pthread_t thread;
	int cpu;
	unsigned long long millions;
	double secs;
	int err;
};

static void *spin_thread(void *arg)
{
	struct spinner *sp = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(sp->cpu, &set);
	sp->err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (sp->err)
		return NULL;
	double t0 = now();
	uint64_t x = 1;
	for (unsigned long long i = 0; i < sp->millions * 1000000ULL; i++) {
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		__asm__ volatile("" : "+r"(x));
	}
	sp->secs = now() - t0;
	return NULL;
}

static int cmd_spin(int argc, char **argv)
{
	unsigned long long millions;
	if (argc != 2 || parse_u64(argv[0], &millions))
		return usage();
	struct spinner sp[16];
	int n = 0;
	for (char *p = argv[1], *end; *p; p = *end ? end + 1 : end) {
		long cpu = strtol(p, &end, 10);
		if (end == p || (*end && *end != ',') || cpu < 0 || cpu >= CPU_SETSIZE || n == 16)
			return usage();
		sp[n] = (struct spinner){ .cpu = (int)cpu, .millions = millions };
		n++;
	}
	for (int i = 0; i < n; i++)
		if (pthread_create(&sp[i].thread, NULL, spin_thread, &sp[i]))
			return fail("pthread_create");
	printf("spin");
	for (int i = 0; i < n; i++) {
		pthread_join(sp[i].thread, NULL);
		if (sp[i].err) {
			errno = sp[i].err;
			return fail("pthread_setaffinity_np");
		}
		printf(" cpu%d=%.3f", sp[i].cpu, sp[i].secs);
	}
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	if (strcmp(argv[1], "sha256") == 0)
		return cmd_sha256(argc - 2, argv + 2);
	if (strcmp(argv[1], "send") == 0)
		return cmd_send(argc - 2, argv + 2);
	if (strcmp(argv[1], "recv") == 0)
		return cmd_recv(argc - 2, argv + 2);
	if (strcmp(argv[1], "spin") == 0)
		return cmd_spin(argc - 2, argv + 2);
	return usage();
}
