/*
 * vminit: a small PID 1 for the minivmm Debian server image.
 *
 * Why it exists: on the project's PVM hosts every instruction of guest kernel code
 * runs in KVM's instruction emulator, so every system call, page fault and process
 * costs milliseconds to a second. systemd as PID 1 makes tens of thousands of
 * them before the first service starts (see resources/guest/README.md, "The
 * Debian server guest"). vminit makes a few hundred and starts the same services
 * from one shell script. systemd stays installed: `init=/lib/systemd/systemd` on
 * the kernel command line boots it instead.
 *
 * What it does:
 *  1. mounts /proc, /sys, /dev (if the kernel has not), /dev/pts, /dev/shm, /run
 *     and /run/lock; remounts / read-write; sets the host name from /etc/hostname;
 *     brings up lo; gives a first boot its machine-id; creates /run/utmp and the
 *     runtime directories listed in /etc/vminit/runtime-dirs;
 *     when the kernel does not save the AVX/AVX-512 registers that user space can
 *     use (see vector_state_guard()), tells glibc and OpenSSL not to use them and
 *     puts a MariaDB server without its AVX-512 code in place;
 *  2. starts the serial console's getty (agetty on ttyS0, respawned when it exits)
 *     and /etc/vminit/boot, the shell script that starts the services;
 *  3. reaps every process that ends (orphans come to PID 1), and keeps the syslog
 *     socket /dev/log: what programs send there (sshd's PAM, sudo, login, logger)
 *     is appended to /var/log/syslog;
 *  4. shuts down on:
 *     - the ACPI power button (KEY_POWER from an input device: minivmm presses it
 *       on SIGTERM), SIGUSR2 or SIGPWR: power off;
 *     - `poweroff`, `halt`, `reboot`, `shutdown`: Debian's are systemctl, which
 *       without systemd falls back to SysV's /run/initctl (runlevel 0 or 6);
 *     - SIGTERM or SIGINT (Ctrl-Alt-Del): reboot.
 *     Shutting down sends SIGTERM to every process, waits until all have ended
 *     (at most vminit.stop_timeout= seconds from the kernel command line, default
 *     60: MariaDB flushes its tables), then SIGKILL; unmounts, remounts / read-only,
 *     syncs, and powers off (ACPI S5: minivmm exits 0) or reboots (minivmm exits 0).
 *
 * Progress lines go to the console with the seconds since boot:
 *   [   95.21] vminit: ...
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <cpuid.h>
#include <unistd.h>

#define BOOT_SCRIPT "/etc/vminit/boot"
#define RUNTIME_DIRS "/etc/vminit/runtime-dirs"
#define INITCTL "/run/initctl"
#define SYSLOG_SOCKET "/dev/log"
#define SYSLOG_FILE "/var/log/syslog"
#define MAX_INPUTS 8
/* Debian's base-passwd gives the utmp group this fixed gid. */
#define UTMP_GID 43

/* The environment of every process vminit starts (spawn): these, and the vector
 * guard's variables when it is on (vector_state_guard adds them before the first
 * spawn). */
static const char *child_env[8] = {
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"TERM=vt220",
	"LANG=C.UTF-8",
	NULL,
};
static size_t child_env_len = 4;

static const char *const getty_argv[] = {
	"/sbin/agetty", "-o", "-p -- \\u", "--keep-baud", "115200,57600,38400,9600",
	"ttyS0", "vt220", NULL,
};

static pid_t getty_pid, boot_pid;
static struct timespec getty_started;

static double uptime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void say(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "[%9.2f] vminit: ", uptime());
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	/* The console is fd 1 (the kernel opened /dev/console for init). */
	(void)!write(1, buf, n);
}

/* mount(2), quiet when the file system is there already (EBUSY). */
static void mnt(const char *src, const char *dir, const char *type, unsigned long flags,
		const char *data)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, flags, data) < 0 && errno != EBUSY)
		say("mounting %s on %s: %s", type, dir, strerror(errno));
}

static void mount_api_filesystems(void)
{
	const unsigned long nosuid_nodev_noexec = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	mnt("proc", "/proc", "proc", nosuid_nodev_noexec, NULL);
	mnt("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, NULL);
	mnt("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=755");
	mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=000");
	mnt("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=20%");
	mnt("tmpfs", "/run/lock", "tmpfs", nosuid_nodev_noexec, "mode=1777,size=5m");
	/* Debian links /dev/fd and friends in systemd's tmpfiles; the shells need them. */
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
	struct statvfs sv;
	if (statvfs("/", &sv) == 0 && (sv.f_flag & ST_RDONLY) &&
	    mount(NULL, "/", NULL, MS_REMOUNT, NULL) < 0)
		say("remounting / read-write: %s", strerror(errno));
}

/* The first line of PATH into buf (newline removed); 0 on success. */
static int read_line(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static void set_hostname(void)
{
	char name[65];
	if (read_line("/etc/hostname", name, sizeof(name)) == 0 && name[0] &&
	    sethostname(name, strlen(name)) < 0)
		say("sethostname %s: %s", name, strerror(errno));
}

static void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0 ||
	    (ifr.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &ifr) < 0))
		say("bringing up lo: %s", strerror(errno));
	if (s >= 0)
		close(s);
}

/* An empty /etc/machine-id (the image's) gets a random one, as systemd does on a
 * first boot: every VM made from the image has its own. */
static void machine_id(void)
{
	struct stat st;
	if (stat("/etc/machine-id", &st) == 0 && st.st_size > 0)
		return;
	uint8_t id[16];
	if (getrandom(id, sizeof(id), 0) != sizeof(id))
		return;
	id[6] = (id[6] & 0x0f) | 0x40; /* a v4 UUID, as systemd makes */
	id[8] = (id[8] & 0x3f) | 0x80;
	char hex[34];
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", id[i]);
	hex[32] = '\n';
	int fd = open("/etc/machine-id", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	if (fd < 0 || write(fd, hex, 33) != 33)
		say("writing /etc/machine-id: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* The uid (or gid, with group=1) of NAME from /etc/passwd (/etc/group); -1 if none. */
static long lookup_id(const char *name, int group)
{
	FILE *f = fopen(group ? "/etc/group" : "/etc/passwd", "re");
	char line[512];
	long id = -1;
	size_t len = strlen(name);
	while (f && fgets(line, sizeof(line), f)) {
		char *p;
		if (strncmp(line, name, len) || line[len] != ':')
			continue;
		p = strchr(line + len + 1, ':'); /* past the password field */
		if (p)
			id = strtol(p + 1, NULL, 10);
		break;
	}
	if (f)
		fclose(f);
	return id;
}

/* /etc/vminit/runtime-dirs: "PATH MODE USER GROUP" per line, what the services'
 * units would have created under /run (RuntimeDirectory=, tmpfiles.d). */
static void runtime_dirs(void)
{
	int fd = open("/run/utmp", O_WRONLY | O_CREAT | O_CLOEXEC, 0664);
	if (fd >= 0) {
		fchown(fd, 0, UTMP_GID);
		close(fd);
	}
	FILE *f = fopen(RUNTIME_DIRS, "re");
	char line[512], path[256], user[64], group[64];
	unsigned mode;
	while (f && fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || sscanf(line, "%255s %o %63s %63s", path, &mode, user, group) != 4)
			continue;
		long uid = lookup_id(user, 0), gid = lookup_id(group, 1);
		if (mkdir(path, mode) < 0 && errno != EEXIST)
			say("mkdir %s: %s", path, strerror(errno));
		else if (chmod(path, mode) < 0 || chown(path, uid, gid) < 0)
			say("chown %s %s:%s: %s", path, user, group, strerror(errno));
	}
	if (f)
		fclose(f);
}

static pid_t spawn(const char *const argv[], int console)
{
	pid_t pid = fork();
	if (pid < 0) {
		say("fork for %s: %s", argv[0], strerror(errno));
		return -1;
	}
	if (pid > 0)
		return pid;
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid();
	if (!console) {
		int fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	execve(argv[0], (char *const *)argv, (char *const *)child_env);
	say("exec %s: %s", argv[0], strerror(errno));
	_exit(127);
}

static void start_getty(void)
{
	getty_pid = spawn(getty_argv, 0);
	clock_gettime(CLOCK_BOOTTIME, &getty_started);
}

/* Input devices that can send KEY_POWER (the ACPI power button). */
static int open_power_buttons(struct pollfd *pfd, int max)
{
	int n = 0;
	DIR *d = opendir("/dev/input");
	struct dirent *e;
	while (d && n < max && (e = readdir(d))) {
		char path[300];
		unsigned long keys[KEY_MAX / (8 * sizeof(long)) + 1] = {0};
		if (strncmp(e->d_name, "event", 5))
			continue;
		snprintf(path, sizeof(path), "/dev/input/%s", e->d_name);
		int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (ioctl(fd, EVIOCGBIT(EV_KEY, sizeof(keys)), keys) >= 0 &&
		    (keys[KEY_POWER / (8 * sizeof(long))] >> (KEY_POWER % (8 * sizeof(long)))) & 1) {
			pfd[n].fd = fd;
			pfd[n].events = POLLIN;
			n++;
		} else {
			close(fd);
		}
	}
	if (d)
		closedir(d);
	return n;
}

/* /dev/log, the socket syslog(3) writes to; -1 if it cannot be made. */
static int open_syslog(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, SYSLOG_SOCKET);
	unlink(SYSLOG_SOCKET);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(SYSLOG_SOCKET, 0666) < 0) {
		say("no %s: %s", SYSLOG_SOCKET, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* Append the waiting syslog messages to /var/log/syslog, without their <PRI>. */
static void read_syslog(int fd, int *out)
{
	char buf[4096];
	ssize_t n;
	while ((n = recv(fd, buf, sizeof(buf) - 1, 0)) > 0) {
		char *m = buf;
		if (*out < 0)
			*out = open(SYSLOG_FILE, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (*out < 0)
			continue;
		if (m[0] == '<') {
			char *end = memchr(m, '>', n < 5 ? n : 5);
			if (end) {
				n -= end + 1 - m;
				m = end + 1;
			}
		}
		while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == 0))
			n--;
		m[n++] = '\n';
		(void)!write(*out, m, n);
	}
}

/* SysV's /run/initctl request, as systemctl's talk_initctl() writes it. */
struct init_request {
	int magic; /* 0x03091969 */
	int cmd;   /* 1: change runlevel */
	int runlevel;
	int sleeptime;
	char pad[368];
};

enum action { NONE, POWEROFF, REBOOT };

static enum action read_initctl(int fd)
{
	struct init_request req;
	enum action a = NONE;
	while (read(fd, &req, sizeof(req)) == (ssize_t)sizeof(req)) {
		if (req.magic != 0x03091969 || req.cmd != 1)
			continue;
		if (req.runlevel == '0')
			a = POWEROFF;
		else if (req.runlevel == '6')
			a = REBOOT;
	}
	return a;
}

static int power_key_pressed(int fd)
{
	struct input_event ev[16];
	ssize_t n;
	int pressed = 0;
	while ((n = read(fd, ev, sizeof(ev))) > 0)
		for (size_t i = 0; i < n / sizeof(ev[0]); i++)
			if (ev[i].type == EV_KEY && ev[i].code == KEY_POWER && ev[i].value == 1)
				pressed = 1;
	return pressed;
}

/* Reap what has ended; respawn the getty unless shutting down. */
static void reap(int respawn)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == boot_pid) {
			boot_pid = 0;
			if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
				say("%s finished", BOOT_SCRIPT);
			else
				say("%s failed (status %d)", BOOT_SCRIPT, status);
		} else if (pid == getty_pid) {
			getty_pid = 0;
			if (!respawn)
				continue;
			struct timespec now;
			clock_gettime(CLOCK_BOOTTIME, &now);
			if (now.tv_sec - getty_started.tv_sec < 2) {
				say("getty on ttyS0 exited at once; restarting it in 5 s");
				sleep(5);
			}
			start_getty();
		}
	}
}

static int stop_timeout(void)
{
	char cmdline[4096];
	if (read_line("/proc/cmdline", cmdline, sizeof(cmdline)) == 0) {
		char *p = strstr(cmdline, "vminit.stop_timeout=");
		if (p)
			return atoi(p + strlen("vminit.stop_timeout="));
	}
	return 60;
}

static void unmount_all(void)
{
	/* Everything but the API file systems, last mounted first; / read-only. */
	char dirs[64][256];
	int n = 0;
	FILE *f = fopen("/proc/self/mounts", "re");
	char src[256], dir[256], type[64];
	while (f && n < 64 && fscanf(f, "%255s %255s %63s %*[^\n]", src, dir, type) == 3) {
		static const char *const api[] = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs",
						  "cgroup2", "mqueue", "autofs", NULL};
		int skip = !strcmp(dir, "/");
		for (int i = 0; api[i]; i++)
			skip |= !strcmp(type, api[i]);
		if (!skip)
			strcpy(dirs[n++], dir);
	}
	if (f)
		fclose(f);
	while (n-- > 0)
		if (umount2(dirs[n], 0) < 0)
			say("unmounting %s: %s", dirs[n], strerror(errno));
	sync();
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
		say("remounting / read-only: %s", strerror(errno));
}

static void shutdown_now(enum action a, int sfd)
{
	say("%s: stopping all processes", a == POWEROFF ? "power off" : "reboot");
	kill(-1, SIGTERM);
	kill(-1, SIGCONT);
	double deadline = uptime() + stop_timeout();
	struct pollfd p = {.fd = sfd, .events = POLLIN};
	for (;;) {
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof(si)) > 0)
			;
		int status;
		pid_t pid;
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
			;
		if (pid < 0 && errno == ECHILD)
			break;
		double left = deadline - uptime();
		if (left <= 0) {
			say("processes still running after %d s: killing them", stop_timeout());
			kill(-1, SIGKILL);
			while (waitpid(-1, &status, 0) > 0)
				;
			break;
		}
		poll(&p, 1, (int)(left * 1000) + 1);
	}
	say("all processes ended; unmounting");
	unmount_all();
	say("%s", a == POWEROFF ? "powering off" : "rebooting");
	reboot(a == POWEROFF ? RB_POWER_OFF : RB_AUTOBOOT);
	say("reboot(2) failed: %s", strerror(errno));
	for (;;)
		pause();
}

/* Not PID 1: `init 0` / `init 6` (telinit) ask the running vminit through
 * /run/initctl, as systemctl's fallback does. */
static int telinit(int argc, char **argv)
{
	int rl = argc == 2 && strlen(argv[1]) == 1 ? argv[1][0] : 0;
	if (rl != '0' && rl != '6') {
		fprintf(stderr, "usage: %s 0|6 (power off or reboot; vminit runs as PID 1 only)\n",
			argv[0]);
		return 2;
	}
	struct init_request req = {.magic = 0x03091969, .cmd = 1, .runlevel = rl};
	int fd = open(INITCTL, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0 || write(fd, &req, sizeof(req)) != (ssize_t)sizeof(req)) {
		fprintf(stderr, "%s: cannot write to %s: %s\n", argv[0], INITCTL, strerror(errno));
		return 1;
	}
	close(fd);
	return 0;
}

/*
 * The vector registers the kernel does not save (PVM hosts).
 *
 * On a host whose KVM runs guest kernel code in its instruction emulator (PVM),
 * the kernel cannot execute XSAVE, so minivmm's PVM CPU template boots it with
 * clearcpuid=xsave: it switches the FPU state between processes with FXSAVE, which
 * covers the x87 and SSE registers only. Guest user code, however, runs natively
 * there, where CPUID is not intercepted and XCR0 is the host's: glibc and OpenSSL
 * find AVX2 and AVX-512 usable and use them, and every process then shares the
 * upper halves of the vector registers, ZMM16-31 and the mask registers with the
 * others. A context switch in the middle of an AVX2 memcpy hands it another
 * process's registers: random crashes (mariadbd, perl, login, Python) and corrupt
 * data on busy guests.
 *
 * Detected, not assumed: the kernel lists "xsave" in /proc/cpuinfo when it saves
 * the extended state; when it does not, but CPUID (in user mode) says the OS has
 * enabled XSAVE and XCR0 has state beyond x87|SSE, vminit puts
 *   GLIBC_TUNABLES=glibc.cpu.hwcaps=-OSXSAVE  (glibc: no AVX, FMA, AVX2, AVX-512)
 *   OPENSSL_ia32cap=~0x1000100000000000:0       (OpenSSL: no AVX, FMA, leaf-7 extensions)
 * in the environment of every process it starts (child_env: the boot script, so
 * cloud-init and its commands, systemd-networkd, sshd, mariadbd, nginx; the getty) and
 * in /etc/environment (between two marker lines), which pam_env reads for SSH and
 * console sessions and sudo reads through /etc/sudoers.d/vminit (env_file; sudo's
 * env_reset would drop them otherwise); it removes those lines when the kernel saves
 * the state (the same image on a VT-x/AMD-V host). vminit.vector_guard=off on the
 * kernel command line turns this off. Set-uid programs ignore GLIBC_TUNABLES; one
 * process using AVX alone is safe, since two are needed for one to see the other's
 * registers.
 *
 * Until 2026-12-04 vminit only set them in its own environment, which spawn() never
 * passed on (it gives children child_env): everything but login and SSH sessions ran
 * unguarded, and the faults blamed on the host since (sshd refusing a good key,
 * mariadbd crashing in Field::clone, a mariadb-dump from cloud-init's runcmd failing
 * "certificate signature failure", systemd-networkd dying in libc) all hit processes
 * that vminit had started.
 *
 * MariaDB's server checks CPUID and XCR0 itself and computes its CRC-32C (InnoDB
 * pages and redo log) with AVX-512 in any of its threads: neither variable reaches
 * it. The image carries a copy of it whose check says no (debian/no-avx512.py);
 * vminit bind-mounts that copy over /usr/sbin/mariadbd, so every way of starting
 * the server runs it. (A package upgrade of mariadb-server cannot replace the
 * binary while it is mounted over: reboot with vminit.vector_guard=off first.)
 */
#define MARIADBD "/usr/sbin/mariadbd"
#define MARIADBD_NO_AVX512 "/usr/local/lib/vminit/mariadbd-no-avx512"
#define ENV_FILE "/etc/environment"
#define ENV_BEGIN "# vminit: the kernel does not save AVX state (begin; see vminit.c)"
#define ENV_END "# vminit: end"
static const char *const GUARD_VARS[][2] = {
	{"GLIBC_TUNABLES", "glibc.cpu.hwcaps=-OSXSAVE"},
	{"OPENSSL_ia32cap", "~0x1000100000000000:0"},
};
_Static_assert(4 + sizeof(GUARD_VARS) / sizeof(GUARD_VARS[0]) < sizeof(child_env) / sizeof(child_env[0]),
	       "child_env has room for the guard's variables and its NULL");

static int kernel_saves_xstate(void)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	if (!f)
		return 1; /* cannot tell: leave user space alone */
	char line[4096];
	int saves = 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5) != 0)
			continue;
		saves = strstr(line, " xsave ") != NULL || strstr(line, " xsave\n") != NULL;
		break;
	}
	fclose(f);
	return saves;
}

/* XCR0 as user space sees it, or 0 when the OS has not enabled XSAVE. */
static uint64_t user_xcr0(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))
		return 0;
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

/* Rewrite /etc/environment without vminit's block, and with it if `add`. */
static void environment_file(int add)
{
	char old[16384] = "", out[20480] = "";
	int fd = open(ENV_FILE, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, old, sizeof(old) - 1) : 0;
	if (fd >= 0)
		close(fd);
	if (n < 0 || n == (ssize_t)sizeof(old) - 1)
		return; /* unreadable or too big for us: leave it */
	old[n] = 0;
	int inside = 0, had = 0;
	size_t len = 0;
	for (char *line = strtok(old, "\n"); line; line = strtok(NULL, "\n")) {
		if (strcmp(line, ENV_BEGIN) == 0) {
			inside = had = 1;
			continue;
		}
		if (inside) {
			if (strcmp(line, ENV_END) == 0)
				inside = 0;
			continue;
		}
		len += snprintf(out + len, sizeof(out) - len, "%s\n", line);
	}
	if (add) {
		len += snprintf(out + len, sizeof(out) - len, "%s\n", ENV_BEGIN);
		for (size_t i = 0; i < sizeof(GUARD_VARS) / sizeof(GUARD_VARS[0]); i++)
			len += snprintf(out + len, sizeof(out) - len, "%s=\"%s\"\n", GUARD_VARS[i][0],
					GUARD_VARS[i][1]);
		len += snprintf(out + len, sizeof(out) - len, "%s\n", ENV_END);
	}
	if (len >= sizeof(out) || (!add && !had))
		return;
	int w = open(ENV_FILE ".vminit", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w < 0 || write(w, out, len) != (ssize_t)len || fsync(w) < 0 ||
	    rename(ENV_FILE ".vminit", ENV_FILE) < 0)
		say("cannot update %s: %s", ENV_FILE, strerror(errno));
	if (w >= 0)
		close(w);
}

static void vector_state_guard(void)
{
	char cmdline[4096] = "";
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
		cmdline[n > 0 ? n : 0] = 0;
		close(fd);
	}
	uint64_t xcr0 = user_xcr0();
	int unsaved = !kernel_saves_xstate() && (xcr0 & ~(uint64_t)3) != 0;
	if (unsaved && strstr(cmdline, "vminit.vector_guard=off")) {
		say("XCR0 %#llx: the kernel does not save AVX state, vminit.vector_guard=off: "
		    "user space may use it",
		    (unsigned long long)xcr0);
		unsaved = 0;
	} else if (unsaved) {
		say("XCR0 %#llx but the kernel saves x87/SSE only (no xsave in /proc/cpuinfo): "
		    "glibc and OpenSSL told not to use AVX (GLIBC_TUNABLES, OPENSSL_ia32cap)",
		    (unsigned long long)xcr0);
		static char guard_env[sizeof(GUARD_VARS) / sizeof(GUARD_VARS[0])][64];
		for (size_t i = 0; i < sizeof(GUARD_VARS) / sizeof(GUARD_VARS[0]); i++) {
			snprintf(guard_env[i], sizeof(guard_env[i]), "%s=%s", GUARD_VARS[i][0],
				 GUARD_VARS[i][1]);
			child_env[child_env_len++] = guard_env[i];
		}
		child_env[child_env_len] = NULL;
		if (access(MARIADBD_NO_AVX512, X_OK) == 0 && access(MARIADBD, X_OK) == 0) {
			if (mount(MARIADBD_NO_AVX512, MARIADBD, NULL, MS_BIND, NULL) == 0)
				say("MariaDB without AVX-512: %s bind-mounted on %s", MARIADBD_NO_AVX512,
				    MARIADBD);
			else
				say("cannot bind-mount %s on %s: %s", MARIADBD_NO_AVX512, MARIADBD,
				    strerror(errno));
		}
	}
	environment_file(unsaved);
}

int main(int argc, char **argv)
{
	if (getpid() != 1)
		return telinit(argc, argv);
	umask(022);
	sigset_t set;
	sigemptyset(&set);
	int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR, SIGQUIT};
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&set, sigs[i]);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	reboot(RB_DISABLE_CAD); /* Ctrl-Alt-Del: SIGINT to us */

	say("starting (PID 1)");
	mount_api_filesystems();
	set_hostname();
	loopback_up();
	machine_id();
	vector_state_guard();
	runtime_dirs();
	unlink(INITCTL);
	int ifd = -1;
	if (mkfifo(INITCTL, 0600) == 0)
		ifd = open(INITCTL, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (ifd < 0)
		say("no %s: %s (poweroff and reboot will not work)", INITCTL, strerror(errno));

	int logfd = open_syslog(), logout = -1;

	struct pollfd pfd[3 + MAX_INPUTS];
	pfd[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
	pfd[1] = (struct pollfd){.fd = ifd, .events = POLLIN};
	pfd[2] = (struct pollfd){.fd = logfd, .events = POLLIN};
	int nbuttons = open_power_buttons(pfd + 3, MAX_INPUTS);
	if (!nbuttons)
		say("no power button found (SIGTERM to minivmm will not power off)");

	start_getty();
	static const char *const boot_argv[] = {"/bin/sh", BOOT_SCRIPT, NULL};
	boot_pid = spawn(boot_argv, 1);

	enum action a = NONE;
	while (a == NONE) {
		if (poll(pfd, 3 + nbuttons, -1) < 0 && errno != EINTR)
			say("poll: %s", strerror(errno));
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
			switch (si.ssi_signo) {
			case SIGTERM:
			case SIGINT:
				a = REBOOT;
				break;
			case SIGUSR1:
			case SIGUSR2:
			case SIGPWR:
				a = POWEROFF;
				break;
			default:
				break;
			}
		}
		reap(a == NONE);
		if (ifd >= 0 && (pfd[1].revents & POLLIN) && a == NONE)
			a = read_initctl(ifd);
		if (logfd >= 0 && (pfd[2].revents & POLLIN))
			read_syslog(logfd, &logout);
		for (int i = 0; i < nbuttons; i++)
			if ((pfd[3 + i].revents & POLLIN) && power_key_pressed(pfd[3 + i].fd)) {
				say("power button pressed");
				a = POWEROFF;
			}
	}
	/* The root file system is remounted read-only at the end: nothing open for writing.
	 * Without a reader, the socket would block senders once its queue is full. */
	if (logout >= 0)
		close(logout);
	if (logfd >= 0) {
		close(logfd);
		unlink(SYSLOG_SOCKET);
	}
	shutdown_now(a, sfd);
	return 0;
}
