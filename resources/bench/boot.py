#!/usr/bin/env python3
"""Boot benchmark: minivmm against QEMU microvm, same kernel, initramfs and command line,
alternating, N rounds. Not a test: it prints a markdown table for docs/benchmarks.md.

Measured per boot, from the moment the VMM process is started:
  - init:  wall time until the guest's /init prints "minivmm-guest: init ready" on the
           serial console (both VMMs, same clock, same marker);
  - done:  wall time until the guest's command has run (a `sleep` long enough to sample
           memory) and printed its end marker;
  - rss:   the VMM's resident memory beyond guest RAM, 3 s after init while the guest
           idles (`sleep`): VmRSS minus the Rss of the guest-RAM mapping (the anonymous
           mapping of --memory bytes, or up to 2 MiB more when the kernel has merged it
           with a neighbour, found in /proc/PID/smaps).

Usage: resources/bench/boot.py [--rounds N] [--kernel vmlinux|bzImage] [--cpus N] [--acpi]
                               [--json FILE]
--json FILE also writes the results in the shared shape of resources/bench/benchjson.py
(read by resources/bench/run-all.py).
Needs root (/dev/kvm), qemu-system-x86 (installed if missing), the test guest
(resources/guest/build.sh) and a release build of minivmm.
"""
import argparse, os, re, shlex, shutil, statistics, subprocess, sys, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchjson  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEM_MIB = 256
MARKER = b"minivmm-guest: init ready"
DONE = b"bench-done-42"
# What minivmm's pvm CPU template adds on PVM hosts; QEMU gets the same command line so
# that both boot the same kernel the same way. QEMU's CPU model is its minimal qemu64
# without CX16 (the emulator cannot run `lock cmpxchg16b`, which SLUB uses when CX16 is
# there) plus x2APIC: close to minivmm's pvm template (SSE3, x2APIC, TSC-deadline).
# qemu64 says AuthenticAMD; without XSAVEERPTR (CPUID 0x80000008 EBX bit 2, which the
# host's CPU has and minivmm passes on) Linux applies its AMD FXSAVE-leak workaround,
# `fnclex` on every FPU restore, which the PVM emulator cannot run (KVM internal error,
# QEMU stops): +xsaveerptr, as the host has it (dropped with a warning where it has not).
PVM_CMDLINE = "clearcpuid=smap,smep,pcid,popcnt,xsave,avx,fsgsbase,invpcid,rdrand,erms,fsrm,rep_good"
PVM_QEMU_CPU = "qemu64,-cx16,+x2apic,+xsaveerptr"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def guest_rss_kib(pid):
    """VmRSS and the Rss of the guest RAM mapping, in KiB."""
    total = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
    guest = 0
    size = rss = None
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            size = rss = None
        elif line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
            # The guest-RAM mapping: --memory bytes, or a little more where the kernel
            # has merged it with an adjacent anonymous mapping of the VMM (seen: +132 KiB),
            # whose few pages then count as guest RAM.
            if size is not None and MEM_MIB * 1024 <= size <= MEM_MIB * 1024 + 2048:
                guest = max(guest, rss)
    return total, guest


def boot(cmd, idle_s):
    """Start cmd, wait for the init marker, sample memory while the guest idles, wait for
    the command's end marker, then end the VMM: minivmm exits by itself on the guest's
    reboot; QEMU microvm has no i8042 to reboot through and does not exit on this host, so
    it is stopped with SIGTERM (not timed)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = b""
    t_init = None
    os.set_blocking(p.stdout.fileno(), False)
    rss = None
    t_done = None
    while True:
        chunk = p.stdout.read()
        if chunk:
            out += chunk
        if t_init is None and MARKER in out:
            t_init = time.monotonic() - t0
        if t_init is not None and rss is None and time.monotonic() - t0 > t_init + idle_s:
            total, guest = guest_rss_kib(p.pid)
            rss = (total - guest) / 1024
        if DONE in out and t_done is None:
            t_done = time.monotonic() - t0
            if cmd[0].endswith("qemu-system-x86_64"):
                p.terminate()
        if p.poll() is not None:
            out += p.stdout.read() or b""
            break
        if b"KVM internal error" in out:  # QEMU stops the VM and waits: do not wait 600 s
            time.sleep(0.5)
            out += p.stdout.read() or b""
            p.kill()
            raise SystemExit(f"boot failed (KVM internal error): {' '.join(cmd)}\n{out[-3000:].decode(errors='replace')}")
        if time.monotonic() - t0 > 600:
            p.kill()
            raise SystemExit(f"boot did not finish in 600 s: {' '.join(cmd)}\n{out[-2000:]!r}")
        time.sleep(0.01)
    is_qemu = cmd[0].endswith("qemu-system-x86_64")
    if t_init is None or t_done is None or (not is_qemu and p.returncode != 0):
        raise SystemExit(f"boot failed (rc {p.returncode}): {' '.join(cmd)}\n{out[-3000:].decode(errors='replace')}")
    return t_init, t_done, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kernel", default="vmlinux")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--acpi", action="store_true",
                    help="boot both with ACPI (minivmm's default; QEMU microvm acpi=on)")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds after init before sampling memory")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchjson.py)")
    a = ap.parse_args()

    if not shutil.which("qemu-system-x86_64"):
        sh("apt-get", "install", "-y", "-q", "qemu-system-x86")
    guest = subprocess.run(["bash", f"{ROOT}/resources/guest/build.sh"], check=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    sh("cargo", "build", "-q", "--release", "-p", "minivmm", cwd=ROOT)
    minivmm = f"{ROOT}/target/release/minivmm"
    kernel, initrd = f"{guest}/{a.kernel}", f"{guest}/initramfs.cpio"
    pvm = os.path.exists("/sys/module/kvm_pvm")
    run = f'minivmm_run="sleep {a.idle + 2:.0f}; echo bench-done-$((40+2)); reboot -f"'
    base = "console=ttyS0 reboot=k panic=1"
    vmms = {
        "minivmm": [minivmm, "--kernel", kernel, "--initrd", initrd, "--memory", f"{MEM_MIB}M",
                    "--cpus", str(a.cpus)] + ([] if a.acpi else ["--no-acpi"]) + ["--cmdline", run],
        "qemu": ["qemu-system-x86_64", "-M",
                 f"microvm,acpi={'on' if a.acpi else 'off'},x-option-roms=off,rtc=off",
                 "-accel", "kvm", "-cpu", PVM_QEMU_CPU if pvm else "host", "-m", f"{MEM_MIB}M",
                 "-smp", str(a.cpus), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                 "-kernel", kernel, "-initrd", initrd,
                 "-append", " ".join([base] + ([PVM_CMDLINE] if pvm else []) + [run])],
    }
    results = {k: [] for k in vmms}
    for r in range(a.rounds):
        for name, cmd in vmms.items():
            res = boot(cmd, a.idle)
            results[name].append(res)
            print(f"round {r + 1} {name}: init {res[0]:.2f} s, done {res[1]:.2f} s, "
                  f"rss beyond guest RAM {res[2]:.1f} MiB", file=sys.stderr)

    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
    m, q = med["minivmm"], med["qemu"]
    print(f"Kernel `{a.kernel}` + initramfs, {MEM_MIB} MiB, {a.cpus} vCPU(s), "
          f"ACPI {'on' if a.acpi else 'off'}, {a.rounds} rounds alternating, "
          f"medians ({'PVM host' if pvm else 'hardware virtualization'}).\n")
    print("| | minivmm | QEMU microvm | minivmm / QEMU |")
    print("| --- | --- | --- | --- |")
    print(f"| process start to /init (s) | {m[0]:.2f} | {q[0]:.2f} | {m[0] / q[0]:.2f} |")
    print(f"| process start to end of the guest's command (s) | {m[1]:.2f} | {q[1]:.2f} | {m[1] / q[1]:.2f} |")
    print(f"| resident memory beyond guest RAM (MiB) | {m[2]:.1f} | {q[2]:.1f} | {m[2] / q[2]:.2f} |")
    if a.json:
        write_json(a, pvm, vmms, results)


def write_json(a, pvm, vmms, results):
    # The command that reproduces this run: these options, without --json.
    argv = ["resources/bench/boot.py", "--rounds", str(a.rounds)]
    if a.kernel != "vmlinux":
        argv += ["--kernel", a.kernel]
    if a.cpus != 1:
        argv += ["--cpus", str(a.cpus)]
    if a.acpi:
        argv.append("--acpi")
    if a.idle != 3.0:
        argv += ["--idle", str(a.idle)]
    names = [("process start to /init", "s"), ("process start to end of the guest's command", "s"),
             ("resident memory beyond guest RAM", "MiB")]
    metrics = [benchjson.metric(n, u, "lower", [x[i] for x in results["minivmm"]],
                                [x[i] for x in results["qemu"]])
               for i, (n, u) in enumerate(names)]
    acpi = "on" if a.acpi else "off"
    notes = f"""
Each round starts minivmm, then QEMU microvm, on the same `{a.kernel}`, `initramfs.cpio`
and kernel command line (`console=ttyS0 reboot=k panic=1`{", the `clearcpuid=` list minivmm's PVM template adds" if pvm else ""},
and a `minivmm_run` that sleeps {a.idle + 2:.0f} s and prints an end marker), {MEM_MIB} MiB,
{a.cpus} vCPU(s), ACPI {acpi}, {a.rounds} round(s). Times are wall-clock from starting the VMM
process to the guest's `/init` marker (the line printed right after the boot-timer write)
and to the end marker, read from the serial console by the script. Memory is sampled
{a.idle:g} s after `/init` while the guest sleeps: the VMM's VmRSS minus the Rss of its
guest-RAM mapping (`/proc/PID/smaps`).

QEMU: `{" ".join(shlex.quote(x) for x in vmms["qemu"][1:11])} ...`
(`-nodefaults -no-user-config -nographic -serial stdio`{"; qemu64 without CX16 because the PVM emulator cannot run `lock cmpxchg16b`, minivmm's pvm template hides the same and more; with XSAVEERPTR, which the host has and minivmm passes on, so that Linux does not run its AMD FXSAVE-leak workaround (`fnclex`, which the PVM emulator cannot run either)" if pvm else ""}).
minivmm: {"default (ACPI) machine" if a.acpi else "`--no-acpi` to match"}. QEMU microvm has no
i8042, so the guest's reboot does not end it: the script stops QEMU at the end marker (not
timed).

Time to `/init` is mostly Linux booting, the same code for both VMMs{"; on a PVM host it runs in KVM's instruction emulator, so the times are long and a VMM's own start-up cost is hidden in them" if pvm else ""}.
The memory line is the VMM's own cost: its code, heap, thread stacks and device state.
"""
    benchjson.write(a.json, "boot", "Boot", " ".join(argv), notes, metrics)
    print(f"boot.py: wrote {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
