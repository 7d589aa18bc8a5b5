/* netbench: a tiny TCP throughput tool for resources/bench/net.sh (static, runs in the
 * guest and on the host).
 *   netbench send ADDR PORT BYTES   connect (retrying for up to 120 s), send BYTES in 64 KiB
 *                                    writes, half-close, wait for the peer to close
 *   netbench recv PORT              accept one connection, read to EOF in 64 KiB reads
 * Both print one line: "netbench <mode> bytes=N secs=S mbps=M" (MB/s = 10^6 bytes/s),
 * timed from connect/accept to the end. Data is generated and consumed in user space. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (64 * 1024)
static char buf[BUF];

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void report(const char *mode, long long n, double secs)
{
	printf("netbench %s bytes=%lld secs=%.3f mbps=%.2f\n", mode, n, secs,
	       secs > 0 ? n / secs / 1e6 : 0.0);
	fflush(stdout);
}

static int do_send(const char *addr, int port, long long total)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return fprintf(stderr, "bad address %s\n", addr), 2;
	int fd = -1;
	double give_up = now() + 120;
	for (;;) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			return perror("socket"), 1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
			break;
		close(fd);
		if (now() > give_up)
			return perror("connect"), 1;
		usleep(200000);
	}
	for (int i = 0; i < BUF; i++)
		buf[i] = (char)(i * 131 + 7);
	double t0 = now();
	long long sent = 0;
	while (sent < total) {
		long long want = total - sent < BUF ? total - sent : BUF;
		ssize_t n = write(fd, buf, want);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return perror("write"), 1;
		}
		sent += n;
	}
	shutdown(fd, SHUT_WR);
	while (read(fd, buf, BUF) > 0)
		;
	report("send", sent, now() - t0);
	close(fd);
	return 0;
}

static int do_recv(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0)
		return perror("socket"), 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1))
		return perror("bind/listen"), 1;
	int fd = accept(ls, NULL, NULL);
	if (fd < 0)
		return perror("accept"), 1;
	double t0 = now();
	long long got = 0;
	for (;;) {
		ssize_t n = read(fd, buf, BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return perror("read"), 1;
		if (n == 0)
			break;
		got += n;
	}
	report("recv", got, now() - t0);
	close(fd);
	close(ls);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "send"))
		return do_send(argv[2], atoi(argv[3]), atoll(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "recv"))
		return do_recv(atoi(argv[2]));
	fprintf(stderr, "usage: netbench send ADDR PORT BYTES | netbench recv PORT\n");
	return 2;
}
