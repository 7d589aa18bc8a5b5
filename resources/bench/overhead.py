#!/usr/bin/env python3
"""Overhead benchmark: the VMM's own cost (start, exit, memory, starts per second),
minivmm against QEMU microvm, on a guest that does (almost) nothing. Not a test: it prints
a markdown table for docs/benchmarks.md and, with --json FILE, writes every raw sample.

The guest. The script writes it itself (no assembler): one ELF64 executable of 26 bytes of
code, one PT_LOAD at physical and virtual 0x100000 and a PT_NOTE with a Xen PVH entry note
(XEN_ELFNOTE_PHYS32_ENTRY = 0x100000). minivmm loads it as a vmlinux and enters it at
e_entry in 64-bit long mode (identity-mapped first 4 GiB); QEMU loads it with -kernel as a
PVH kernel and enters it at the note's address in 32-bit protected mode without paging.
Both run the same bytes, chosen to mean the same in both modes:

    66 BA F8 03     mov dx, 0x3f8
    B0 21           mov al, '!'
    EE              out dx, al         ; '!' on COM1 = "the guest runs"
    B8 00 00 00 C0  mov eax, 0xc0000000
    C6 00 7B        mov byte [eax], 123 ; minivmm's boot timer (an unassigned MMIO write
                                        ; in QEMU): one MMIO exit in both
    B0 00  E6 F4    out 0xf4, al       ; QEMU isa-debug-exit: QEMU exits with status 1
                                        ; ((0 << 1) | 1); minivmm ignores the port
    B0 FE  E6 64    out 0x64, al       ; i8042 reset: minivmm exits with status 0
    F4 EB FD        hlt; jmp $-1        ; never reached

Measured per run, from just before posix_spawn() of the VMM process (time.monotonic_ns):
  - first:  until the '!' byte arrives on the VMM's stdout pipe (its serial console):
            process start, VMM setup, guest entry, one port-I/O exit, the console write.
            For QEMU this includes its firmware: microvm boots qboot (bios-microvm.bin),
            which reads the kernel over fw_cfg and jumps to the PVH entry. That is what a
            QEMU microvm user pays for -kernel, so it is counted;
  - exit:   until the process has exited (a pidfd becomes readable; then wait4()): the
            above plus the VM's teardown (threads joined, guest RAM unmapped, fds closed);
  - rss:    ru_maxrss from wait4(): the process's peak resident memory, in MiB. The guest
            touches only a handful of guest-RAM pages (its 4 KiB of code, and the boot
            structures each VMM writes: page tables, zero page/start info, command line, MP
            table; for QEMU also qboot's data and the kernel copied over fw_cfg), well
            under 1 MiB, and neither VMM pre-faults guest RAM: so ru_maxrss is, to within
            that, the VMM's own memory beyond guest RAM. Measured with 256 MiB and 4 GiB
            guests to show what grows with the guest's size (page tables of the mapping,
            dirty/memslot bitmaps, ...).
  - cpu:    ru_utime + ru_stime from the same wait4(): CPU time the VMM process used (all
            its threads; on PVM this includes the guest's emulated instructions, and for
            QEMU qboot), what bounds the starts per second below;
Starts per second: back-to-back runs (spawn, wait for exit, next) for --duration seconds,
(1) in one loop pinned to CPU 0 (sched_setaffinity, as taskset -c 0) with the VMM's threads
on that core too, and (2) in --loops-per-core x nproc parallel unpinned loops: completed
starts / wall time. Each run's exit status is checked.

Why it is fair: same guest bytes, same RAM size, 1 vCPU, both without ACPI (minivmm
--no-acpi, microvm acpi=off), both with the serial console on a pipe, stdin /dev/null;
runs alternate minivmm, QEMU, minivmm, QEMU so that both see the same host conditions;
the script's own costs (posix_spawn, poll, wait4) are the same for both. minivmm runs
with its defaults otherwise (seccomp filters on, the virtio-rng device present, as a user
gets it); QEMU with the minimum microvm needs:
    qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off,pit=off,pic=off,
      isa-serial=on -accel kvm -cpu host -m 256M -smp 1 -nodefaults -no-user-config
      -nographic -serial stdio -kernel tiny.elf -device isa-debug-exit,iobase=0xf4,iosize=4
On PVM hosts (/sys/module/kvm_pvm) -cpu host makes QEMU abort (KVM refuses MSR 0x10a,
IA32_ARCH_CAPABILITIES), so the script uses -cpu host,-arch-capabilities there.
On a PVM host the guest's ring-0 code (here: 8 instructions, and qboot for QEMU) runs in
KVM's instruction emulator; everything else measured is host-side VMM work.

Usage: resources/bench/overhead.py [--runs N] [--quick] [--json FILE] [--duration S]
           [--minivmm PATH] [--qemu PATH] [--qemu-cpu MODEL] [--loops-per-core K]
Needs root (/dev/kvm), qemu-system-x86 and a release build of minivmm (built with cargo
unless --minivmm is given). Reproduce: `resources/bench/overhead.py --json /tmp/o.json`
on an otherwise idle host (minutes; --quick: under a minute).
"""
import argparse, json, os, platform, select, shutil, statistics, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = 0x100000
CODE = bytes.fromhex(
    "66BAF803" "B021" "EE"          # mov dx,0x3f8; mov al,'!'; out dx,al
    "B8000000C0" "C6007B"           # mov eax,0xc0000000; mov byte [eax],123
    "B000" "E6F4"                   # mov al,0; out 0xf4,al  (QEMU isa-debug-exit)
    "B0FE" "E664"                   # mov al,0xfe; out 0x64,al (i8042 reset)
    "F4EBFD")                       # hlt; jmp back
MARK = b"!"
EXPECT_RC = {"minivmm": 0, "qemu": 1}
RUN_TIMEOUT_S = 60
LAUNCHER_PATH = None   # set by main()


def make_guest(path):
    """An ELF64 ET_EXEC for x86-64: PT_LOAD of CODE at 0x100000 (file offset 0x1000) and a
    PT_NOTE holding the Xen PVH entry note (name "Xen", type 18, 4-byte entry)."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", ENTRY)
    phoff, phnum, code_off = 64, 2, 0x1000
    note_off = phoff + 56 * phnum
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)     # ELFCLASS64, LSB, version 1
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, ENTRY, phoff, 0, 0,
                               64, 56, phnum, 64, 0, 0)      # ET_EXEC, EM_X86_64
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, ENTRY, ENTRY, len(CODE), len(CODE), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    head = ehdr + load + pnote + note
    with open(path, "wb") as f:
        f.write(head + bytes(code_off - len(head)) + CODE)


# The launcher: a 1-page static ELF (generated here like the guest) that forks, execs its
# arguments in the child (fd 3 closed), waits with wait4() and writes the 4-byte wait status
# and the child's struct rusage to fd 3 (56 bytes: status, padding, rusage up to ru_maxrss).
# Why: a process started with posix_spawn() (vfork + exec) or fork() from Python inherits as
# its ru_maxrss the memory of the Python process it replaced at exec (about 14 MiB: the
# kernel records the old mm's high-water mark at exec), which would hide a VMM smaller than
# that. The launcher's own child starts from a one-page process, so its ru_maxrss is the VMM's.
LAUNCHER = bytes.fromhex(
    "4889E3"            # mov rbx, rsp            (argc, argv[], NULL, envp[])
    "B839000000" "0F05"  # fork()
    "85C0" "752F"       # test eax, eax; jnz parent
    "BF03000000" "B803000000" "0F05"    # child: close(3)
    "488B7B10" "488D7310"               # rdi = argv[1]; rsi = &argv[1]
    "488B0B" "488D54CB10"               # rdx = &argv[argc + 1] = envp
    "B83B000000" "0F05"                 # execve(rdi, rsi, rdx)
    "BF7F000000" "B83C000000" "0F05"    # exit(127) if execve failed
    "89C7" "4881EC00010000"             # parent: edi = pid; rsp -= 256
    "4889E6" "31D2" "4C8D542410"        # rsi = &status; edx = 0; r10 = &rusage (rsp+16)
    "B83D000000" "0F05"                 # wait4(pid, &status, 0, &rusage)
    "BF03000000" "4889E6" "BA38000000"  # write(3, rsp, 56)
    "B801000000" "0F05"
    "31FF" "B8E7000000" "0F05")         # exit_group(0)


def make_launcher(path):
    base, code_off = 0x400000, 64 + 56
    size = code_off + len(LAUNCHER)
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, base + code_off, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    with open(path, "wb") as f:
        f.write(ehdr + load + LAUNCHER)
    os.chmod(path, 0o755)


def kill_tree(pid):
    """SIGKILL the launcher's child (the VMM), then the launcher, and reap it."""
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    for k in kids:
        try:
            os.kill(int(k), 9)
        except ProcessLookupError:
            pass
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def run_once(launcher, argv):
    """Start argv through the launcher with stdin /dev/null and stdout/stderr on pipes;
    returns (first_ns or None, exit_ns, exit code, ru_maxrss KiB, user+system CPU ms,
    stdout, stderr)."""
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    r_res, w_res = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, w_out, 1),
               (os.POSIX_SPAWN_DUP2, w_err, 2), (os.POSIX_SPAWN_DUP2, w_res, 3)]
    t0 = time.monotonic_ns()
    pid = os.posix_spawn(launcher, [launcher] + argv, os.environ, file_actions=actions)
    for fd in (null, w_out, w_err, w_res):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    p = select.poll()
    for fd in (r_out, r_err, pidfd):
        p.register(fd, select.POLLIN)
    out, err = bytearray(), bytearray()
    first = None
    open_fds = {r_out, r_err}
    try:
        while True:
            ev = p.poll(RUN_TIMEOUT_S * 1000)
            now = time.monotonic_ns()
            if not ev:
                kill_tree(pid)
                raise RuntimeError(f"no exit within {RUN_TIMEOUT_S} s: {' '.join(argv)}\n"
                                   f"stdout {bytes(out)!r}\nstderr {bytes(err[-2000:])!r}")
            done = False
            for fd, _ in ev:
                if fd == pidfd:
                    done = True
                    continue
                data = os.read(fd, 65536)
                if not data:
                    p.unregister(fd)
                    open_fds.discard(fd)
                    continue
                if fd == r_out:
                    if first is None and MARK in data:
                        first = now - t0
                    out += data
                else:
                    err += data
            if done:
                os.wait4(pid, 0)
                exit_ns = time.monotonic_ns() - t0
                break
        res = os.read(r_res, 64)
        for fd in list(open_fds):          # whatever is left in the pipes
            os.set_blocking(fd, False)
            try:
                while True:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    (out if fd == r_out else err).extend(data)
                    if fd == r_out and first is None and MARK in data:
                        first = exit_ns    # arrived with the exit: at most that late
            except BlockingIOError:
                pass
    finally:
        for fd in (r_out, r_err, r_res, pidfd):
            os.close(fd)
    if len(res) != 56:
        raise RuntimeError(f"launcher reported {len(res)} bytes: {' '.join(argv)}")
    status, = struct.unpack_from("<i", res, 0)
    us, uus, ss, sus, maxrss = struct.unpack_from("<qqqqq", res, 16)
    cpu_ms = (us + ss) * 1e3 + (uus + sus) / 1e3
    return first, exit_ns, os.waitstatus_to_exitcode(status), maxrss, cpu_ms, bytes(out), bytes(err)


def checked_run(name, argv):
    first, exit_ns, rc, rss, cpu, out, err = run_once(LAUNCHER_PATH, argv)
    if rc != EXPECT_RC[name] or first is None:
        raise SystemExit(f"{name} misbehaved (exit code {rc}, expected {EXPECT_RC[name]}; "
                         f"marker {'seen' if first else 'missing'}): {' '.join(argv)}\n"
                         f"stdout: {out[-500:]!r}\nstderr: {err[-2000:].decode(errors='replace')}")
    return first, exit_ns, rss, cpu


def loop_worker(name, argv, duration_s, cpu, wfd):
    """Child process: back-to-back runs until the deadline; writes the count and the time
    span (first start to last exit) to wfd."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        t0 = time.monotonic_ns()
        deadline = t0 + int(duration_s * 1e9)
        n = 0
        while time.monotonic_ns() < deadline:
            checked_run(name, argv)
            n += 1
        os.write(wfd, json.dumps({"n": n, "t0": t0, "t1": time.monotonic_ns()}).encode())
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        os.write(wfd, json.dumps({"error": str(e)[:3000]}).encode())
        os._exit(1)


def starts_per_second(name, argv, duration_s, loops, pin_cpu0):
    kids = []
    for i in range(loops):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            loop_worker(name, argv, duration_s, 0 if pin_cpu0 else None, w)
        os.close(w)
        kids.append((pid, r))
    results = []
    for pid, r in kids:
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        res = json.loads(data or b'{"error": "worker died"}')
        if "error" in res:
            raise SystemExit(f"{name} start loop failed: {res['error']}")
        results.append(res)
    span = (max(x["t1"] for x in results) - min(x["t0"] for x in results)) / 1e9
    return sum(x["n"] for x in results) / span


def host_info(minivmm, qemu, qemu_cpu):
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except Exception:  # noqa: BLE001
            return None
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = None
    try:
        mem_kib = int(open("/proc/meminfo").readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "kernel": platform.release(), "cpu": cpu, "nproc": os.cpu_count(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mem_gib": round(mem_kib / 2**20, 1) if mem_kib else None,
        "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware",
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "minivmm": minivmm, "minivmm_version": first_line([minivmm, "--version"]),
        "minivmm_commit": first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        "qemu": qemu, "qemu_version": first_line([qemu, "--version"]), "qemu_cpu": qemu_cpu,
    }


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="runs per VMM and guest size (default 30)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per starts-per-second loop")
    ap.add_argument("--rate-rounds", type=int, default=3, help="starts-per-second samples per VMM and mode")
    ap.add_argument("--loops-per-core", type=int, default=1, help="parallel loops per core for the all-cores rate")
    ap.add_argument("--quick", action="store_true", help="10 runs, 2 s loops, 1 rate round")
    ap.add_argument("--json", metavar="FILE", help="write raw samples and medians as JSON")
    ap.add_argument("--minivmm", help="minivmm binary (default: cargo build --release, target/release/minivmm)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--qemu-cpu", help="QEMU -cpu (default host; host,-arch-capabilities on PVM)")
    ap.add_argument("--keep-guest", metavar="PATH", help="also write the guest ELF here")
    a = ap.parse_args()
    if a.quick:
        a.runs, a.duration, a.rate_rounds = min(a.runs, 10), min(a.duration, 2.0), 1

    qemu = shutil.which(a.qemu)
    if not qemu:
        raise SystemExit(f"{a.qemu} not found (apt-get install qemu-system-x86)")
    if a.minivmm:
        minivmm = os.path.abspath(a.minivmm)
    else:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "minivmm"], cwd=ROOT, check=True)
        minivmm = f"{ROOT}/target/release/minivmm"
    pvm = os.path.exists("/sys/module/kvm_pvm")
    qemu_cpu = a.qemu_cpu or ("host,-arch-capabilities" if pvm else "host")
    tmp = tempfile.mkdtemp(prefix="minivmm-overhead-")
    guest = f"{tmp}/tiny.elf"
    make_guest(guest)
    global LAUNCHER_PATH
    LAUNCHER_PATH = f"{tmp}/launch"
    make_launcher(LAUNCHER_PATH)
    if a.keep_guest:
        make_guest(a.keep_guest)

    def cmds(mem):
        return {
            "minivmm": [minivmm, "--kernel", guest, "--memory", mem, "--cpus", "1", "--no-acpi"],
            "qemu": [qemu, "-M", "microvm,acpi=off,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on",
                     "-accel", "kvm", "-cpu", qemu_cpu, "-m", mem, "-smp", "1", "-nodefaults",
                     "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", guest,
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        }
    sizes = {"256 MiB": "256M", "4 GiB": "4G"}
    host = host_info(minivmm, qemu, qemu_cpu)
    print(f"# host: {host['cpu']}, {host['nproc']} cores, KVM {host['kvm']}, "
          f"minivmm {host['minivmm_commit']}, {host['qemu_version']}", file=sys.stderr)
    for name, argv in cmds("256M").items():
        print(f"# {name}: {' '.join(argv)}", file=sys.stderr)

    # Check once that each behaves as intended (marker, exit code), and warm the caches.
    for mem in sizes.values():
        for name, argv in cmds(mem).items():
            checked_run(name, argv)

    vmms = ("minivmm", "qemu")
    metrics = []   # (name, unit, {vmm: samples})
    for label, mem in sizes.items():
        c = cmds(mem)
        first = {v: [] for v in vmms}
        exit_ = {v: [] for v in vmms}
        rss = {v: [] for v in vmms}
        cpu = {v: [] for v in vmms}
        for i in range(a.runs):
            for v in vmms:
                f, e, r, u = checked_run(v, c[v])
                first[v].append(round(f / 1e6, 3))
                exit_[v].append(round(e / 1e6, 3))
                rss[v].append(round(r / 1024, 2))
                cpu[v].append(round(u, 3))
            print(f"# {label} run {i + 1}/{a.runs}: " + ", ".join(
                f"{v} first {first[v][-1]:.1f} ms exit {exit_[v][-1]:.1f} ms rss {rss[v][-1]:.1f} MiB"
                for v in vmms), file=sys.stderr)
        metrics += [(f"start to first guest instruction, {label}", "ms", first),
                    (f"start to exit, {label}", "ms", exit_),
                    (f"peak RSS (ru_maxrss), {label} guest", "MiB", rss),
                    (f"CPU time, user + system, {label}", "ms", cpu)]

    c = cmds("256M")
    ncpu = os.cpu_count()
    loops = ncpu * a.loops_per_core
    rates = {(mode, v): [] for mode in ("one", "all") for v in vmms}
    for i in range(a.rate_rounds):
        for mode in ("one", "all"):
            for v in vmms:
                r = starts_per_second(v, c[v], a.duration, 1 if mode == "one" else loops, mode == "one")
                rates[(mode, v)].append(round(r, 2))
                print(f"# rate round {i + 1}/{a.rate_rounds} {v} {mode}: {r:.1f} starts/s", file=sys.stderr)
    metrics += [("starts per second, one core (CPU 0)", "1/s", {v: rates[("one", v)] for v in vmms}),
                (f"starts per second, all {ncpu} cores ({loops} loops)", "1/s",
                 {v: rates[("all", v)] for v in vmms})]

    print(f"\nTiny PVH/ELF guest (8 instructions), 1 vCPU, no ACPI, {a.runs} runs per VMM and size "
          f"alternating, {a.rate_rounds} x {a.duration:g} s per rate; median (min–max); "
          f"{'PVM host' if pvm else 'hardware virtualization'}, {ncpu} cores.\n")
    print("| metric | minivmm | QEMU microvm | minivmm / QEMU |")
    print("| --- | --- | --- | --- |")
    out = []
    for name, unit, s in metrics:
        m, q = summary(s["minivmm"]), summary(s["qemu"])
        fmt = "{:.1f}" if unit != "1/s" else "{:.0f}"
        cell = lambda x: f"{fmt.format(x['median'])} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"  # noqa: E731
        print(f"| {name} ({unit}) | {cell(m)} | {cell(q)} | {m['median'] / q['median']:.2f} |")
        out.append({"name": name, "unit": unit, "better": "higher" if unit == "1/s" else "lower",
                    "minivmm": m, "qemu": q, "ratio_minivmm_over_qemu": m["median"] / q["median"]})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"bench": "overhead", "title": "VMM overhead",
                       "command": "resources/bench/overhead.py " + " ".join(sys.argv[1:]),
                       "notes": "Tiny 8-instruction PVH/ELF guest run by both VMMs; see the "
                                "docstring of resources/bench/overhead.py for the method.",
                       "host": host,
                       "config": {"runs": a.runs, "duration_s": a.duration, "rate_rounds": a.rate_rounds,
                                  "loops_per_core": a.loops_per_core,
                                  "commands": cmds("256M"), "guest_code_hex": CODE.hex()},
                       "metrics": out}, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
