/*
 * blkbench: a tiny block-device benchmark for the minivmm test guest, which has
 * no fio. It runs inside the guest as ONE process and moves data with O_DIRECT
 * from/to its own page-aligned buffer, so the guest kernel copies no data (on a
 * PVM host guest kernel code is emulated and a kernel memcpy would dominate).
 * The write buffer is filled once, in user space, before timing starts.
 *
 * Usage: blkbench DEVICE MODE SIZE_MIB|SECONDS
 *   seqread  N   read the first N MiB in 1 MiB requests
 *   seqwrite N   write the first N MiB in 1 MiB requests
 *   randread S   4 KiB reads at random 4 KiB-aligned offsets for S seconds
 * Prints one line: "blkbench MODE bytes=B secs=T MiB/s=X IOPS=Y".
 * Build (host): gcc -O2 -static -o blkbench blkbench.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "blkbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: blkbench DEVICE seqread|seqwrite|randread MIB|SECONDS\n");
		return 2;
	}
	const char *dev = argv[1], *mode = argv[2];
	long n = atol(argv[3]);
	int writing = strcmp(mode, "seqwrite") == 0;
	int fd = open(dev, (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0)
		die(dev);
	uint64_t devsize = 0;
	if (ioctl(fd, BLKGETSIZE64, &devsize) != 0) {
		struct stat st; /* a regular file (for trying it on the host) */
		if (fstat(fd, &st) != 0)
			die("fstat");
		devsize = st.st_size;
	}

	const size_t big = 1 << 20, small = 4096;
	unsigned char *buf;
	if (posix_memalign((void **)&buf, 4096, big) != 0)
		die("posix_memalign");
	/* Touch every page now (and give writes a non-zero pattern). */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < big; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(buf + i, &x, 8);
	}

	uint64_t bytes = 0, ops = 0;
	double t0 = now(), t1;
	if (strcmp(mode, "seqread") == 0 || writing) {
		if ((uint64_t)n * big > devsize) {
			fprintf(stderr, "blkbench: %s is smaller than %ld MiB\n", dev, n);
			return 1;
		}
		for (long i = 0; i < n; i++) {
			ssize_t r = writing ? pwrite(fd, buf, big, (off_t)i * big)
					    : pread(fd, buf, big, (off_t)i * big);
			if (r != (ssize_t)big)
				die(writing ? "pwrite" : "pread");
			bytes += big, ops++;
		}
		if (writing && fdatasync(fd) != 0)
			die("fdatasync");
		t1 = now();
	} else if (strcmp(mode, "randread") == 0) {
		uint64_t blocks = devsize / small;
		if (blocks == 0) {
			fprintf(stderr, "blkbench: %s is empty\n", dev);
			return 1;
		}
		double end = t0 + n;
		do {
			for (int k = 0; k < 64; k++) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				if (pread(fd, buf, small, (off_t)((x % blocks) * small)) != (ssize_t)small)
					die("pread");
				bytes += small, ops++;
			}
			t1 = now();
		} while (t1 < end);
	} else {
		fprintf(stderr, "blkbench: unknown mode %s\n", mode);
		return 2;
	}
	double secs = t1 - t0;
	printf("blkbench %s bytes=%llu secs=%.3f MiB/s=%.2f IOPS=%.0f\n", mode,
	       (unsigned long long)bytes, secs, bytes / secs / (1 << 20), ops / secs);
	return 0;
}
