#!/usr/bin/env python3
"""What one guest-kernel operation costs, measured from inside a Linux guest.

Run it IN the guest (any Python 3.10+; the Debian image has one): for example from
cloud-init, with the file given as `write_files` (encoding b64) and run by `bootcmd`,
`runcmd` or a wrapper, or over SSH. It prints one line per operation: how many, the
total and the cost of one, in wall-clock time.

Why: on a PVM host (no VT-x/AMD-V; resources/guest/README.md) the guest kernel runs in
KVM's instruction emulator, so what a boot costs is mostly how many of these it does.
The numbers in the guest README ("Measured here") come from this script, run by the
Debian image's cloud-init in its network stage (nothing else running in the guest).

Operations: getpid() (a bare system call); stat() of /etc/passwd (a path walk);
touching fresh anonymous pages (a page fault and a zeroed page each); the same pages
populated by mmap(MAP_POPULATE) (the zeroing without the faults); read() of a file that
is in the page cache (a page copied to user space); touching a mapping of that file
(page-cache pages mapped, no copy); fork() and _exit() of this Python; spawning
/bin/true.

Usage: guest-ops.py [PAGES]   (default 2000 pages of 4 KiB for the memory tests)
"""
import mmap
import os
import subprocess
import sys
import time

PAGE = 4096
FILE = next((f for f in ("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/bin/python3", sys.executable)
             if os.path.isfile(f)), sys.executable)


def timed(name, n, fn):
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{name}: n={n} total={dt:.3f}s per={dt / n * 1000:.3f}ms", flush=True)


def touch_anonymous(pages):
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, pages * PAGE, PAGE):
        m[i] = 1
    m.close()


def populate_anonymous(pages):
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    m.close()


def read_file():
    with open(FILE, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def touch_file_mapping():
    with open(FILE, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        total = 0
        for i in range(0, len(m), PAGE):
            total += m[i]
        m.close()


def fork_exit(n):
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def main():
    pages = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    file_pages = max(1, os.path.getsize(FILE) // PAGE)
    read_file()  # into the page cache first
    timed("getpid", 500, lambda: [os.getpid() for _ in range(500)])
    timed("stat /etc/passwd", 200, lambda: [os.stat("/etc/passwd") for _ in range(200)])
    timed("anonymous page fault", pages, lambda: touch_anonymous(pages))
    timed("anonymous page, MAP_POPULATE", pages, lambda: populate_anonymous(pages))
    timed(f"read() of a cached page ({os.path.basename(FILE)})", file_pages, read_file)
    timed("touch of a mapped cached page", file_pages, touch_file_mapping)
    timed("fork + _exit of this Python", 10, lambda: fork_exit(10))
    timed("spawn /bin/true", 10, lambda: [subprocess.run(["/bin/true"], check=True) for _ in range(10)])


if __name__ == "__main__":
    main()
