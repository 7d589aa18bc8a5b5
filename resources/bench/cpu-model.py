#!/usr/bin/env python3
"""Guest work under three CPU models: minivmm, QEMU microvm with its qemu64 model (what the
other benchmarks give QEMU on PVM hosts) and QEMU microvm with an AMD family 19h model
(EPYC-Milan, the family minivmm's pvm template passes on from this project's hosts).
Not a test: it prints a markdown table.

Why: on PVM hosts the Debian benchmark's guest runs 6-16% slower under minivmm than under
QEMU after the kernel's own boot (docs/bench/debian-ssh-2cpus.reading.md). The guest is
the same; the CPU model it is told about is not. This runs the same user-heavy work in the
busybox test guest (resources/guest/build.sh: vmlinux + initramfs, 256 MiB, 1 vCPU) under
each model, timed by the guest's own clock (/proc/uptime around each part):
  - execs: 40 runs of `/bin/busybox true` (fork, exec, exit: page faults, system calls);
  - write: 6 MB from /dev/zero to a file on the initramfs (page-cache pages allocated,
           zeroed and copied into);
  - loop:  3 000 rounds of shell arithmetic (user code only, but for timer interrupts;
           /proc/uptime counts in 10 ms steps, so this only shows a gross difference).
Each round boots the three one after the other; medians over the rounds.

Usage: resources/bench/cpu-model.py [--rounds N]   (as root; default 2 rounds, ~2 min each)
Needs /dev/kvm, qemu-system-x86, the test guest and a release build of minivmm.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import PVM_CMDLINE, PVM_QEMU_CPU  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The guest's command (the test initramfs runs minivmm_run= from the command line): three
# timed parts, then one line with the four /proc/uptime readings.
RUN = ('minivmm_run="read a b </proc/uptime; i=0; while [ $i -lt 40 ]; do /bin/busybox true; '
       'i=$((i+1)); done; read c d </proc/uptime; head -c 6000000 /dev/zero >/tmp/x; '
       'read e f </proc/uptime; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; '
       'read g h </proc/uptime; echo CPUMODEL $a $c $e $g; reboot -f"')
RESULT = re.compile(r"CPUMODEL ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)")
# EPYC-Milan without what the PVM emulator cannot run or minivmm's template hides, with the
# TSC-deadline timer minivmm's template keeps.
MILAN_CPU = "EPYC-Milan,-cx16,+x2apic,+tsc-deadline"
NAMES = {"minivmm": "minivmm (pvm template)", "qemu64": f"QEMU `{PVM_QEMU_CPU}`",
         "milan": f"QEMU `{MILAN_CPU}`"}


def commands(guest):
    kernel, initrd = f"{guest}/vmlinux", f"{guest}/initramfs.cpio"
    qemu = lambda cpu: ["qemu-system-x86_64", "-M", "microvm,acpi=on,x-option-roms=off,rtc=off",
                        "-accel", "kvm", "-cpu", cpu, "-m", "256M", "-smp", "1", "-nodefaults",
                        "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", kernel,
                        "-initrd", initrd, "-append",
                        f"console=ttyS0 reboot=k panic=1 {PVM_CMDLINE} {RUN}"]
    return {
        "minivmm": [f"{ROOT}/target/release/minivmm", "--kernel", kernel, "--initrd", initrd,
                    "--memory", "256M", "--cpus", "1", "--cmdline", RUN],
        "qemu64": qemu(PVM_QEMU_CPU),
        "milan": qemu(MILAN_CPU),
    }


def run(cmd):
    """The guest's three times (s). The VMM is killed once the result line is out: QEMU
    microvm has no i8042 to reboot through."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, errors="replace")
    # After 600 s the VMM is killed, which ends the read below even if the guest has
    # gone silent.
    limit = threading.Timer(600, p.kill)
    limit.start()
    m = None
    try:
        for line in p.stdout:
            m = RESULT.search(line)
            if m:
                break
    finally:
        limit.cancel()
        p.kill()
        p.wait()
    if not m:
        raise SystemExit(f"no result from: {' '.join(cmd)}")
    a, c, e, g = map(float, m.groups())
    return c - a, e - c, g - e


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    guest = subprocess.run(["bash", f"{ROOT}/resources/guest/build.sh"], check=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "minivmm"], cwd=ROOT, check=True)
    cmds = commands(guest)
    res = {k: [] for k in cmds}
    for r in range(a.rounds):
        for k, cmd in cmds.items():
            t = run(cmd)
            res[k].append(t)
            print(f"round {r + 1} {k}: execs {t[0]:.2f} s, write {t[1]:.2f} s, loop {t[2]:.3f} s",
                  file=sys.stderr)
    print(f"Busybox test guest, 256 MiB, 1 vCPU, {a.rounds} round(s), medians (guest clock, s).\n")
    print("| CPU model | 40 execs | 6 MB write | 3 000 shell rounds |")
    print("| --- | --- | --- | --- |")
    for k, rows in res.items():
        med = [statistics.median(x[i] for x in rows) for i in range(3)]
        print(f"| {NAMES[k]} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.3f} |")
    print(f"\nReproduce: `resources/bench/cpu-model.py --rounds {a.rounds}` (as root).")


if __name__ == "__main__":
    main()
