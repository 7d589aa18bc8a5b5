#!/usr/bin/env python3
"""Snapshot and restore benchmark: minivmm's snapshot/--restore against QEMU's own
save/restore (migration to a file and `-incoming`), same guest, alternating, N rounds.
Not a test: it prints a markdown table for docs/benchmarks.md.

The guest: the test kernel (`vmlinux`) and `initramfs.cpio` of resources/guest/build.sh,
256 MiB, 1 vCPU, no ACPI, the same kernel command line for both VMMs (as boot.py: the
`clearcpuid=` list minivmm's PVM template adds, and QEMU's qemu64 without CX16, here with
XSAVEERPTR added, see PVM_QEMU_CPU), with a
`minivmm_run` shell loop made of busybox builtins only (a process start costs about 1 s
of emulated kernel time on a PVM host): it prints a ready marker, then answers every
console line L with "got-L".

Measured per round, for each VMM (which one goes first alternates between rounds):
  - cold boot:  wall time from starting the VMM process to the guest's answer to the
                first console line (the script types `x1` once the ready marker
                appeared and waits for "got-x1");
  - snapshot:   with the guest idle in `read`,
                minivmm: wall time of `minivmm snapshot --api-sock S DIR --then stop`,
                  and the pause it reports (guest stopped until the snapshot was written);
                QEMU: over QMP on a unix socket (connected and negotiated beforehand, not
                  timed), wall time of `stop`, `migrate` to `exec:cat > FILE` and polling
                  `query-migrate` every 5 ms until "completed"; its own `total-time`;
  - size:       the snapshot's files (minivmm: DIR/memory, sparse, and DIR/snapshot.json;
                QEMU: the migration stream): allocated (st_blocks * 512) and apparent;
  - restore:    --restores times per round from the same snapshot: wall time from
                starting `minivmm --restore DIR` or `qemu-system-x86_64 ... -incoming
                'exec:cat FILE'` (the boot command line plus -incoming) until the guest
                answers a console line typed right after the process was started (the
                restored shell is blocked in `read`); also the time to the process's
                first console byte (the tty's echo of that line, in practice). After each
                answer a second line is typed and must be answered too (not timed), so
                a restored console that works only once would fail the run;
  - 2 at once:  two restores of the same snapshot started together; time until both
                answered;
  - restore / cold boot: the round's median restore time over its cold boot time.

Why this is fair: same guest, memory size, vCPU count and command line; both VMMs
start from a fresh process, both snapshots are taken of the same idle guest state, both
restores read their files from the host page cache (each snapshot was just written and
is restored several times; the first restore of a round is not treated differently), and
the same console round trip ends every timing. QEMU is given its best case:
`max-bandwidth` is raised to 100 GiB/s before migrating (its default limit would throttle
the save) and the stream goes to `cat` through a pipe (QEMU 7.2 has no `file:` URI);
`-global migration.store-global-state=off` makes the restored VM run as soon as the
stream is loaded (otherwise QEMU restores the "paused" state the `stop` left, and a QMP
`cont` would be needed), so neither restore waits for a management command. Input typed
before a VMM can deliver it waits in the pipe; each line starts with four blanks (`read`
drops them) because QEMU loses the first byte typed while -incoming is still loading (see
PAD); a VMM that dropped the whole line would not answer (the script then fails rather
than retyping). Not measured: restoring with a cold page
cache, lazy loading versus copying on hosts with slow disks.

Usage: resources/bench/snapshot.py [--rounds N] [--restores N] [--quick] [--json FILE]
--quick: 1 round, 3 restores (a smoke run; noisy). --json FILE also writes the results
in the shared shape of resources/bench/benchjson.py (read by resources/bench/run-all.py).
Env: MINIVMM (a minivmm binary; default: cargo build --release -p minivmm and
target/release/minivmm), GUEST (the guest directory; default: resources/guest/build.sh).
Needs root (/dev/kvm), qemu-system-x86 (installed if missing), the test guest. Every VM
it starts is killed and its temporary directory removed, also on errors and Ctrl-C.
Reproduce: `resources/bench/snapshot.py --rounds 3` on an otherwise idle host.
"""
import argparse, atexit, json, os, re, select, shlex, shutil, signal, socket, statistics
import subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchjson  # noqa: E402
# boot.py's (see there): what minivmm's pvm CPU template adds on PVM hosts, and the QEMU
# CPU model closest to that template, plus XSAVEERPTR. qemu64 is an AMD CPU; without
# XSAVEERPTR (which minivmm passes through from this AMD host) Linux sets
# X86_BUG_FXSAVE_LEAK and runs `fnclex` whenever it loads a task's FPU state, which the
# PVM emulator cannot run: QEMU then stops with "emulation failure" right after
# "Run /init" (on this host, some boots only; every one in a busy hour).
from boot import PVM_CMDLINE, PVM_QEMU_CPU  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEM_MIB = 256
# The guest's command. The markers are computed by the shell, so that init's log line
# that repeats the command ("running: ...") contains neither "ready-42" nor "got-x1".
RUN = 'minivmm_run="echo ready-$((6*7)); while read line; do echo got-$line; done"'
READY = b"ready-42"
# Typed before every token: `read` drops leading blanks, so the answer is "got-TOKEN" even
# when a VMM loses the first bytes of a line. QEMU does when the line arrives during
# -incoming: its serial port takes one byte from stdin before the migration stream is
# loaded, and loading the UART state discards it (seen: "r0x0" answered as "got-0x0").
PAD = "    "
BOOT_TIMEOUT = 600
RESTORE_TIMEOUT = 120

LIVE = []  # every process started, killed at exit
TMP = None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cleanup():
    for p in LIVE:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    LIVE.clear()
    if TMP and os.path.isdir(TMP):
        shutil.rmtree(TMP, ignore_errors=True)


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


class Fail(Exception):
    pass


class VM:
    """A VMM process with its console on pipes (stdin, stdout) and stderr in a file."""

    def __init__(self, name, cmd, tag):
        self.name, self.cmd = name, cmd
        self.errpath = os.path.join(TMP, f"{tag}.stderr")
        err = open(self.errpath, "wb")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=err, start_new_session=True)
        err.close()
        LIVE.append(self.p)
        self.fd = self.p.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.out = b""
        self.t_first = None  # seconds from start to the first console byte

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def pump(self, timeout):
        """Reads what is there (waiting at most timeout s). False once stdout is closed."""
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if self.t_first is None:
            self.t_first = time.monotonic() - self.t0
        self.out += chunk
        return True

    def wait_for(self, marker, timeout, start=0):
        """Seconds from process start until marker appears in the output after start."""
        deadline = time.monotonic() + timeout
        while marker not in self.out[start:]:
            if time.monotonic() > deadline:
                raise Fail(f"{self.name}: no {marker!r} within {timeout} s")
            if not self.pump(0.05):
                if marker in self.out[start:]:
                    break
                raise Fail(f"{self.name}: exited (rc {self.p.wait()}) before {marker!r}")
        return time.monotonic() - self.t0

    def answer(self, token, timeout):
        """Types token and returns seconds from process start to "got-token"."""
        start = len(self.out)
        self.send(PAD + token)
        return self.wait_for(f"got-{token}".encode(), timeout, start)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        if self.p in LIVE:
            LIVE.remove(self.p)

    def wait_exit(self, timeout):
        deadline = time.monotonic() + timeout
        try:
            while self.p.poll() is None and time.monotonic() < deadline:
                if not self.pump(0.05):
                    break
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()

    def diag(self):
        err = open(self.errpath, "rb").read()[-1500:].decode(errors="replace")
        return (f"command: {' '.join(shlex.quote(c) for c in self.cmd)}\n"
                f"console (tail): {self.out[-1500:].decode(errors='replace')}\nstderr (tail): {err}")


class QMP:
    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise Fail(f"QMP socket {path} did not appear")
                time.sleep(0.05)
        self.f = self.s.makefile("rwb")
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise Fail("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, execute, **args):
        req = {"execute": execute}
        if args:
            req["arguments"] = args
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        msg = self._read()
        if "error" in msg:
            raise Fail(f"QMP {execute}: {msg['error']}")
        return msg.get("return")

    def close(self):
        self.f.close()
        self.s.close()


def du(paths):
    """(allocated, apparent) bytes of the files."""
    st = [os.stat(p) for p in paths]
    return sum(s.st_blocks * 512 for s in st), sum(s.st_size for s in st)


def cold_boot(name, cmd, tag):
    vm = VM(name, cmd, tag)
    try:
        vm.wait_for(READY, BOOT_TIMEOUT)
        return vm, vm.answer("x1", 60)
    except Fail as e:
        vm.kill()
        raise Fail(f"{e}\n{vm.diag()}")


def snapshot_minivmm(minivmm, vm, sock, snapdir):
    t0 = time.monotonic()
    r = subprocess.run([minivmm, "snapshot", "--api-sock", sock, snapdir, "--then", "stop"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    wall = time.monotonic() - t0
    m = re.search(r"took ([\d.]+) s, the guest paused ([\d.]+) s", r.stdout)
    if r.returncode != 0 or not m:
        vm.kill()
        raise Fail(f"minivmm snapshot failed (rc {r.returncode}): {r.stdout}\n{vm.diag()}")
    rc = vm.wait_exit(30)
    if rc != 0:
        raise Fail(f"minivmm did not exit 0 after --then stop (rc {rc})\n{vm.diag()}")
    files = [os.path.join(snapdir, f) for f in sorted(os.listdir(snapdir))]
    return wall, float(m.group(2)), files


def snapshot_qemu(vm, qmp_path, file):
    q = QMP(qmp_path)
    try:
        q.cmd("migrate-set-parameters", **{"max-bandwidth": 100 << 30})
        t0 = time.monotonic()
        q.cmd("stop")
        q.cmd("migrate", uri=f"exec:cat > {shlex.quote(file)}")
        while True:
            st = q.cmd("query-migrate")
            if st.get("status") == "completed":
                break
            if st.get("status") in ("failed", "cancelled"):
                raise Fail(f"QEMU migration {st.get('status')}: {st}")
            if time.monotonic() - t0 > 300:
                raise Fail(f"QEMU migration did not complete in 300 s: {st}")
            time.sleep(0.005)
        wall = time.monotonic() - t0
        total_ms = st.get("total-time")
        try:
            q.cmd("quit")
        except Fail:
            pass
    finally:
        q.close()
        vm.wait_exit(30)
    return wall, (total_ms or 0) / 1e3, [file]


def restore(vms, tag, k):
    """Starts the given (name, cmd) restores together, types a token into each right after
    starting it; returns [(t_answer, t_first_byte)] and checks a second line is answered."""
    started = [VM(name, cmd, f"{tag}-{i}") for i, (name, cmd) in enumerate(vms)]
    try:
        starts = []
        for i, vm in enumerate(started):
            tok = f"r{k}x{i}"
            vm.send(PAD + tok)
            starts.append((vm, tok))
        res = []
        for vm, tok in starts:
            try:
                t = vm.wait_for(f"got-{tok}".encode(), RESTORE_TIMEOUT)
                vm.answer(tok + "again", 30)
            except Fail as e:
                raise Fail(f"{e}\n{vm.diag()}")
            res.append((t, vm.t_first))
        return res
    finally:
        for vm in started:
            vm.kill()


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    global TMP
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--restores", type=int, default=5, help="restores per VMM and round")
    ap.add_argument("--quick", action="store_true", help="1 round, 3 restores")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchjson.py)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.restores = 1, 3

    if not shutil.which("qemu-system-x86_64"):
        subprocess.run(["apt-get", "install", "-y", "-q", "qemu-system-x86"], check=True)
    guest = os.environ.get("GUEST") or subprocess.run(
        ["bash", f"{ROOT}/resources/guest/build.sh"], check=True, stdout=subprocess.PIPE,
        text=True).stdout.strip().splitlines()[-1]
    minivmm = os.environ.get("MINIVMM")
    if not minivmm:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "minivmm"], cwd=ROOT, check=True)
        minivmm = f"{ROOT}/target/release/minivmm"
    kernel, initrd = f"{guest}/vmlinux", f"{guest}/initramfs.cpio"
    pvm = os.path.exists("/sys/module/kvm_pvm")
    base = "console=ttyS0 reboot=k panic=1"

    TMP = tempfile.mkdtemp(prefix="minivmm-snapbench-")
    atexit.register(cleanup)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def minivmm_boot(sock):
        return [minivmm, "--kernel", kernel, "--initrd", initrd, "--memory", f"{MEM_MIB}M",
                "--cpus", "1", "--no-acpi", "--cmdline", RUN, "--api-sock", sock]

    qemu_base = ["qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,rtc=off",
                 "-accel", "kvm", "-cpu", PVM_QEMU_CPU if pvm else "host", "-m", f"{MEM_MIB}M",
                 "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                 "-global", "migration.store-global-state=off",
                 "-kernel", kernel, "-initrd", initrd,
                 "-append", " ".join([base] + ([PVM_CMDLINE] if pvm else []) + [RUN])]

    keys = ["boot", "snap_wall", "snap_reported", "size_alloc", "size_apparent", "restore",
            "first_byte", "restore2", "ratio"]
    res = {v: {k: [] for k in keys} for v in ("minivmm", "qemu")}
    t_start = time.monotonic()
    for r in range(a.rounds):
        order = ["minivmm", "qemu"] if r % 2 == 0 else ["qemu", "minivmm"]
        snaps, snapfiles = {}, {}
        # Cold boot and snapshot, one VMM after the other.
        for name in order:
            R = res[name]
            if name == "minivmm":
                sock = os.path.join(TMP, f"m{r}.sock")
                vm, t = cold_boot(name, minivmm_boot(sock), f"boot-m{r}")
                snapdir = os.path.join(TMP, f"m{r}.snap")
                wall, reported, files = snapshot_minivmm(minivmm, vm, sock, snapdir)
                snaps[name] = [minivmm, "--restore", snapdir]
                snapfiles[name] = snapdir
            else:
                qmp = os.path.join(TMP, f"q{r}.qmp")
                vm, t = cold_boot(name, qemu_base + ["-qmp", f"unix:{qmp},server=on,wait=off"],
                                  f"boot-q{r}")
                file = os.path.join(TMP, f"q{r}.mig")
                wall, reported, files = snapshot_qemu(vm, qmp, file)
                snaps[name] = qemu_base + ["-incoming", f"exec:cat {shlex.quote(file)}"]
                snapfiles[name] = file
            alloc, apparent = du(files)
            R["boot"].append(t)
            R["snap_wall"].append(wall)
            R["snap_reported"].append(reported)
            R["size_alloc"].append(alloc / 2**20)
            R["size_apparent"].append(apparent / 2**20)
            log(f"round {r + 1} {name}: cold boot to answer {t:.2f} s; snapshot {wall * 1e3:.0f} ms "
                f"(reported {reported * 1e3:.0f} ms), {alloc / 2**20:.1f} MiB allocated, "
                f"{apparent / 2**20:.1f} MiB apparent")
        # Restores, alternating VMMs.
        times = {v: [] for v in order}
        for k in range(a.restores):
            for name in order:
                (t, first), = restore([(name, snaps[name])], f"rest-{name}{r}", k)
                times[name].append(t)
                res[name]["restore"].append(t)
                res[name]["first_byte"].append(first)
                log(f"round {r + 1} {name}: restore {k + 1}: answer {t * 1e3:.0f} ms, "
                    f"first byte {first * 1e3:.0f} ms")
        for name in order:
            both = restore([(name, snaps[name])] * 2, f"rest2-{name}{r}", 99)
            t2 = max(t for t, _ in both)
            res[name]["restore2"].append(t2)
            ratio = med(times[name]) / res[name]["boot"][-1]
            res[name]["ratio"].append(ratio)
            log(f"round {r + 1} {name}: 2 restores at once: both answered after {t2 * 1e3:.0f} ms; "
                f"restore / cold boot {ratio:.4f}")
        for name in order:
            if os.path.isdir(snapfiles[name]):
                shutil.rmtree(snapfiles[name])
            else:
                os.unlink(snapfiles[name])
    cleanup()
    log(f"snapshot.py: {a.rounds} round(s) in {time.monotonic() - t_start:.0f} s")

    rows = [  # key, label, unit, scale, decimals
        ("boot", "cold boot: process start to the guest's answer", "s", 1, 2),
        ("snap_wall", "snapshot: wall time (minivmm snapshot / QMP stop+migrate)", "ms", 1e3, 0),
        ("snap_reported", "snapshot: VMM's own figure (minivmm: guest paused; QEMU: total-time)", "ms", 1e3, 0),
        ("size_alloc", "snapshot size on disk, allocated", "MiB", 1, 1),
        ("size_apparent", "snapshot size, apparent", "MiB", 1, 1),
        ("restore", "restore: process start to the guest's answer", "ms", 1e3, 0),
        ("first_byte", "restore: process start to first console byte", "ms", 1e3, 0),
        ("restore2", "restore 2 at once: until both answered", "ms", 1e3, 0),
        ("ratio", "restore / cold boot (per round: median restore / boot)", "", 1, 4),
    ]
    m, q = res["minivmm"], res["qemu"]

    def cell(xs, scale, d):
        xs = [x * scale for x in xs]
        return f"{med(xs):.{d}f} ({min(xs):.{d}f}\u2013{max(xs):.{d}f})"

    print(f"Kernel `vmlinux` + initramfs, {MEM_MIB} MiB, 1 vCPU, ACPI off, {a.rounds} round(s) "
          f"alternating, {a.restores} restore(s) per VMM and round, median (min\u2013max) "
          f"({'PVM host' if pvm else 'hardware virtualization'}).\n")
    print("| | minivmm | QEMU microvm | minivmm / QEMU |")
    print("| --- | --- | --- | --- |")
    for key, label, unit, scale, d in rows:
        u = f" ({unit})" if unit else ""
        print(f"| {label}{u} | {cell(m[key], 1 if key == 'ratio' else scale, d)} | "
              f"{cell(q[key], 1 if key == 'ratio' else scale, d)} | {med(m[key]) / med(q[key]):.3f} |")
    if a.json:
        write_json(a, pvm, qemu_base, res, rows)


def write_json(a, pvm, qemu_base, res, rows):
    argv = ["resources/bench/snapshot.py"] + (["--quick"] if a.quick else
                                              ["--rounds", str(a.rounds), "--restores", str(a.restores)])
    metrics = []
    for key, label, unit, scale, d in rows:
        s = 1 if key == "ratio" else scale
        metrics.append(benchjson.metric(label, unit or "ratio", "lower",
                                        [x * s for x in res["minivmm"][key]],
                                        [x * s for x in res["qemu"][key]]))
    notes = f"""
Each round cold-boots minivmm and QEMU microvm (which one first alternates) on the same
`vmlinux`, `initramfs.cpio` and kernel command line ({"the `clearcpuid=` list minivmm's PVM template adds, and " if pvm else ""}a
`minivmm_run` busybox-builtin loop that prints a marker and answers every console line L
with `got-L`), {MEM_MIB} MiB, 1 vCPU, ACPI off, then snapshots the idle guest:
`minivmm snapshot --api-sock S DIR --then stop` against QMP `stop` + `migrate` to
`exec:cat > FILE` (polled with `query-migrate`; `max-bandwidth` raised to 100 GiB/s).
Then {a.restores} restore(s) per VMM of that snapshot, alternating: `minivmm --restore DIR`
against the same QEMU command line plus `-incoming 'exec:cat FILE'` (and `-global
migration.store-global-state=off` so that the restored VM runs without a QMP `cont`).
Restore time is from starting the process to the restored guest's answer to a console
line typed right after the start; a second line must be answered too. Snapshot files are
in the host page cache when restored. Sizes: allocated (`st_blocks`) and apparent size of
the snapshot's files (minivmm's memory file is sparse). "2 at once": two restores of the
same snapshot started together, time until both answered. {a.rounds} round(s).

QEMU: `{" ".join(shlex.quote(x) for x in qemu_base[1:11])} ...`.
{"On this PVM host guest kernel code is emulated (a few million instructions per second), so a cold boot takes tens of seconds; a restore skips all of it." if pvm else ""}
"""
    benchjson.write(a.json, "snapshot", "Snapshot and restore", " ".join(argv), notes, metrics)
    log(f"snapshot.py: wrote {a.json}")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        log(f"snapshot.py: {e}")
        cleanup()
        sys.exit(1)
