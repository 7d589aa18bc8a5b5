#!/usr/bin/env python3
"""Debian server benchmark: minivmm against QEMU microvm on the same Debian kernel and
image (resources/guest/debian.sh), alternating, N rounds; the time from starting the VMM
to the first successful SSH command, and the guest's own boot timeline. Not a test: it
prints a markdown table for docs/benchmarks.md.

Every boot gets a fresh sparse copy of debian.img and a cloud-init NoCloud seed with the
same files for both VMMs (user-data: user `bench` with the script's ed25519 key and
passwordless sudo, the VM's ed25519 SSH host key, which ssh then checks; meta-data;
network-config version 2: a static address on the NIC matched by its MAC). minivmm gets
the seed directory (`--cloud-init`, which it turns into a FAT disk labelled CIDATA);
QEMU gets a FAT image labelled CIDATA made from the same directory (mkfs.vfat, mcopy), as
a second, read-only disk. Both VMs sit on a bridge (host side 10.78.0.1/24) in a network
namespace the script creates and removes (no traffic leaves it); everything runs in it.

Measured per boot, from the moment the VMM process is started (host wall clock):
  - ssh:        until `ssh bench@ADDR true` first succeeds (tried every 2 s);
  - cloud-init: until the console says the boot has finished (vminit's "boot finished",
                which follows cloud-init's final stage, or cloud-init's final message);
  - console:    when the kernel's "Run /sbin/init as init process" line appeared;
  - login:      then, on the booted VM, three `ssh ... true` in a row, each timed;
and from the serial console, on the guest's clock (its printk / uptime seconds): that
"Run ... as init process" line and vminit's progress lines ("[  T] vminit: ..."; the last
is "boot finished: STATE"). Then `sudo poweroff` over SSH, and the VMM's exit (code and
seconds) is awaited for up to 120 s before it is killed. A boot that has not got that far
after 1800 s is killed and recorded as a failure (with the console's tail on stderr).

Usage: resources/bench/debian-ssh.py [--rounds N] [--only minivmm|qemu] [--cpus N]
                                     [--out FILE] [--json FILE]
--cpus N gives each VM N vCPUs (default 1; both VMMs get the same). --out FILE also
writes the markdown to FILE; --json FILE the results in the shared shape of
resources/bench/benchjson.py. One line per boot goes to stderr as it goes.
Needs root (/dev/kvm, network namespaces), qemu-system-x86, dosfstools and mtools
(installed if missing), openssh-client, the Debian guest (built on first use: long) and
release builds of minivmm and calibrate (built here).
"""
import argparse, os, re, shlex, shutil, signal, statistics, subprocess, sys, tempfile, threading, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchjson  # noqa: E402
# The kernel command line minivmm's pvm CPU template adds, and the QEMU CPU model that
# boots the same kernels on PVM hosts (why: see boot.py).
from boot import PVM_CMDLINE, PVM_QEMU_CPU  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEM = "1G"
CPUS = 1  # the default of --cpus
NET = "10.78.0"  # the namespace's bridge network; the host side is .1
BRIDGE = "br0"
DEADLINE_S = 1800  # per boot, until cloud-init has finished
POLL_S = 2.0
# ssh's ConnectTimeout covers sshd's banner, which the guest sends only after sshd has
# forked and re-executed itself: seconds of emulated kernel work on a PVM host (20 s was
# too short in tests/debian.rs). Until sshd listens, tries end at once (refused, or no
# route before the address is up), so a long timeout costs no resolution.
CONNECT_S = 60
LOGINS = 3  # `ssh ... true` on the booted VM, timed one by one
EXIT_WAIT_S = 240  # after `sudo poweroff` (its login included), for the VMM to exit
BASE_CMDLINE = "console=ttyS0 reboot=k panic=1"  # minivmm's default
EXTRA_CMDLINE = "net.ifnames=0"  # eth0, as network-config matches by MAC anyway
INIT_RE = re.compile(r"^\[\s*(\d+\.\d+)\] (Run \S+ as init process)")
DONE_RE = re.compile(r"vminit: boot finished|Cloud-init v\. \S+ finished at ")
# Not anchored at the line's start: getty's login prompt has no newline, so the console
# line that follows it on the same row begins with "HOST login: ".
VMINIT_RE = re.compile(r"\[\s*(\d+\.\d+)\] vminit: (.*?)\s*$")
NAMES = {"minivmm": "minivmm", "qemu": "QEMU microvm"}


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def say(msg):
    print(msg, file=sys.stderr, flush=True)


class BootFailed(Exception):
    pass


class Console(threading.Thread):
    """Follows a console file as the VMM writes it: every complete line, with the host time
    (seconds since t0) at which it was first seen (read every 50 ms)."""

    def __init__(self, path, t0):
        super().__init__(daemon=True)
        self.path, self.t0 = path, t0
        self.lines = []  # (host seconds, text)
        self.stop = threading.Event()

    def run(self):
        pos, part = 0, b""
        while True:
            stopping = self.stop.is_set()
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                chunk = b""
            if chunk:
                pos += len(chunk)
                now = time.monotonic() - self.t0
                part += chunk
                *done, part = part.split(b"\n")
                for line in done:
                    self.lines.append((now, line.decode(errors="replace").replace("\r", "")))
            if stopping:
                if part:
                    self.lines.append((time.monotonic() - self.t0,
                                       part.decode(errors="replace").replace("\r", "")))
                return
            self.stop.wait(0.05)

    def find(self, regex):
        """(host seconds, match) of the first line that matches, or None."""
        for t, line in list(self.lines):
            m = regex.search(line)
            if m:
                return t, m
        return None

    def tail(self, n=40):
        return "\n".join(line for _, line in self.lines[-n:])


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="mvbench-")
        self.ns = f"mvbench-{os.getpid()}"
        self.ns_made = False
        self.proc = None  # the running VMM, killed on any way out
        self.taps = []

    # --- set-up and clean-up -------------------------------------------------------------
    def netns(self):
        subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)
        sh("ip", "netns", "add", self.ns)
        self.ns_made = True
        for cmd in (["link", "set", "lo", "up"], ["link", "add", BRIDGE, "type", "bridge"],
                    ["addr", "add", f"{NET}.1/24", "dev", BRIDGE], ["link", "set", BRIDGE, "up"]):
            sh("ip", "netns", "exec", self.ns, "ip", *cmd)

    def in_ns(self, *cmd):
        return ["ip", "netns", "exec", self.ns, *cmd]

    def cleanup(self):
        self.kill_vmm()
        for tap in self.taps:
            subprocess.run(self.in_ns("ip", "link", "del", tap), stderr=subprocess.DEVNULL)
        if self.ns_made:
            subprocess.run(["ip", "netns", "del", self.ns])
            self.ns_made = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kill_vmm(self):
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    # --- one VM's files ----------------------------------------------------------------
    def keygen(self, path, comment):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path)
        return open(path + ".pub").read().strip()

    def seed(self, d, name, k, mac, addr, user_pub):
        """The seed directory (both VMMs' seed has these files) and the known_hosts file."""
        host_pub = self.keygen(f"{d}/host_ed25519", f"root@{name}")
        host_priv = open(f"{d}/host_ed25519").read()
        seed = f"{d}/seed"
        os.mkdir(seed)
        indent = "".join(f"      {l}\n" for l in host_priv.splitlines())
        with open(f"{seed}/user-data", "w") as f:
            f.write("#cloud-config\n"
                    "users:\n"
                    "  - name: bench\n"
                    "    shell: /bin/bash\n"
                    "    sudo: ALL=(ALL) NOPASSWD:ALL\n"
                    "    ssh_authorized_keys:\n"
                    f"      - {user_pub}\n"
                    "ssh_keys:\n"
                    f"  ed25519_private: |\n{indent}"
                    f"  ed25519_public: {host_pub}\n")
        # Written here (minivmm would generate the same from --name) so that QEMU's seed
        # has it too; a new instance-id every boot.
        with open(f"{seed}/meta-data", "w") as f:
            f.write(f"instance-id: iid-{name}-{os.getpid()}-{k}\nlocal-hostname: {name}\n")
        with open(f"{seed}/network-config", "w") as f:
            f.write("version: 2\n"
                    "ethernets:\n"
                    # cloud-init 22.4's networkd renderer also matches by the entry's
                    # name: name it as the kernel names the NIC (net.ifnames=0).
                    "  eth0:\n"
                    "    match:\n"
                    f'      macaddress: "{mac}"\n'
                    "    set-name: eth0\n"
                    f"    addresses: [{addr}/24]\n")
        with open(f"{d}/known_hosts", "w") as f:
            f.write(f"{addr} {host_pub}\n")
        return seed

    def fat_seed(self, seed, img):
        """A FAT image labelled CIDATA holding the seed directory's files (for QEMU)."""
        sh("mkfs.vfat", "-n", "CIDATA", "-C", img, "1024", stdout=subprocess.DEVNULL)
        files = [f"{seed}/{n}" for n in sorted(os.listdir(seed))]
        sh("mcopy", "-i", img, *files, "::", env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))

    # --- SSH ---------------------------------------------------------------------------
    def ssh(self, d, addr, command, timeout):
        cmd = self.in_ns("ssh", "-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes",
                         "-o", f"UserKnownHostsFile={d}/known_hosts",
                         "-o", "GlobalKnownHostsFile=/dev/null",
                         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                         "-o", f"ConnectTimeout={CONNECT_S}", "-o", "LogLevel=ERROR",
                         f"bench@{addr}", command)
        try:
            o = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=max(1, timeout))
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
        return o.returncode, (o.stderr.strip().splitlines() or [""])[-1]

    # --- one boot ----------------------------------------------------------------------
    def command(self, vmm, d, name, mac, seed, disk):
        if vmm == "minivmm":
            return [self.minivmm, "--kernel", self.kernel, "--disk", disk, "--cloud-init", seed,
                    "--name", name, "--memory", MEM, "--cpus", str(self.a.cpus),
                    "--net", f"bridge={BRIDGE},mac={mac}", "--cmdline", EXTRA_CMDLINE,
                    "--serial", "stdio"]
        img = f"{d}/seed.img"
        self.fat_seed(seed, img)
        tap = f"tapq{os.path.basename(d)[:2]}"
        for cmd in (["tuntap", "add", tap, "mode", "tap"], ["link", "set", tap, "master", BRIDGE],
                    ["link", "set", tap, "up"]):
            sh(*self.in_ns("ip", *cmd))
        self.taps.append(tap)
        append = " ".join([BASE_CMDLINE] + ([PVM_CMDLINE] if self.pvm else [])
                          + [self.root, "rw", EXTRA_CMDLINE])
        return ["qemu-system-x86_64", "-M", "microvm,acpi=on,x-option-roms=off,rtc=off",
                "-accel", "kvm", "-cpu", PVM_QEMU_CPU if self.pvm else "host",
                "-m", MEM, "-smp", str(self.a.cpus), "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-kernel", self.kernel, "-append", append,
                "-drive", f"id=d0,file={disk},format=raw,if=none",
                "-device", "virtio-blk-device,drive=d0",
                "-drive", f"id=s0,file={img},format=raw,if=none,readonly=on",
                "-device", "virtio-blk-device,drive=s0",
                "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=n0,mac={mac}",
                "-device", "virtio-rng-device"]

    def boot(self, vmm, rnd, k):
        name = {"minivmm": "bench-m", "qemu": "bench-q"}[vmm]
        d = f"{self.tmp}/{k:02d}-{vmm}"
        os.mkdir(d)
        mac = f"52:54:00:78:00:{0x10 + k:02x}"
        addr = f"{NET}.{10 + k}"
        disk = f"{d}/disk.img"
        sh("cp", "--sparse=always", self.image, disk)
        seed = self.seed(d, name, k, mac, addr, self.user_pub)
        cmd = self.command(vmm, d, name, mac, seed, disk)
        res = {"vmm": vmm, "round": rnd, "cmd": cmd, "error": None}
        console_path, log_path = f"{d}/console", f"{d}/stderr"
        with open(console_path, "wb") as con, open(log_path, "wb") as log:
            t0 = time.monotonic()
            self.proc = p = subprocess.Popen(self.in_ns(*cmd), stdin=subprocess.DEVNULL,
                                             stdout=con, stderr=log, start_new_session=True)
        console = Console(console_path, t0)
        console.start()
        deadline = t0 + DEADLINE_S

        def check():
            """Raises BootFailed when the VM cannot get further."""
            text = console.tail(200)
            log = open(log_path, errors="replace").read()
            for bad in ("KVM internal error", "Kernel panic"):
                if bad in text or bad in log:
                    line = next(l for l in (text + "\n" + log).splitlines() if bad in l)
                    raise BootFailed(line.strip())
            if p.poll() is not None:
                last = log.strip().splitlines()[-1:] or ["(nothing on stderr)"]
                raise BootFailed(f"{vmm} exited with code {p.returncode}: {last[0]}")
            if time.monotonic() > deadline:
                raise BootFailed(f"not done after {DEADLINE_S} s")

        def poll_ssh(command, what):
            while True:
                check()
                start = time.monotonic()
                rc, err = self.ssh(d, addr, command, min(300, deadline - start))
                if rc == 0:
                    return time.monotonic() - t0
                res["last_ssh"] = f"{what}: rc {rc}: {err}"
                time.sleep(max(0, start + POLL_S - time.monotonic()))

        measured = False
        try:
            try:
                res["ssh"] = poll_ssh("true", "ssh")
                # The boot's end from the console, not by polling over SSH (each login
                # is seconds of the guest's emulated kernel time on a PVM host, which
                # would slow the boot being measured): vminit's last line, which follows
                # cloud-init's final stage, or cloud-init's own final message.
                while True:
                    done = console.find(DONE_RE)
                    if done:
                        res["cloud_init"] = done[0]
                        break
                    check()
                    time.sleep(0.5)
                # Logins on the booted VM, one after the other: what one costs when
                # nothing else runs in the guest (the first one above competed with the
                # boot's last stages).
                res["logins"] = []
                for _ in range(LOGINS):
                    check()
                    t = time.monotonic()
                    rc, err = self.ssh(d, addr, "true", 300)
                    if rc != 0:
                        raise BootFailed(f"login on the booted VM: rc {rc}: {err}")
                    res["logins"].append(time.monotonic() - t)
                res["login"] = statistics.median(res["logins"])
                measured = True
            except BootFailed as e:
                res["error"] = str(e)
            if measured:
                # Poweroff: ssh may or may not see the connection close.
                t_off = time.monotonic()
                self.ssh(d, addr, "sudo poweroff", 180)
                try:
                    res["exit"] = p.wait(timeout=max(1, EXIT_WAIT_S - (time.monotonic() - t_off)))
                    res["poweroff_s"] = time.monotonic() - t_off
                except subprocess.TimeoutExpired:
                    res["exit"] = f"still running {EXIT_WAIT_S} s after poweroff: killed"
        finally:
            # Also on Ctrl-C: no poweroff then, the VMM is killed.
            if p.poll() is None:
                p.kill()
            p.wait()
            self.proc = None
            console.stop.set()
            console.join()
            if vmm == "qemu":
                tap = self.taps.pop()
                subprocess.run(self.in_ns("ip", "link", "del", tap), stderr=subprocess.DEVNULL)
            os.unlink(disk)

        init = console.find(INIT_RE)
        if init:
            res["init_host"] = init[0]
            res["init_guest"] = float(init[1].group(1))
            res["init_line"] = init[1].group(2)
        res["first_console"] = console.lines[0][0] if console.lines else None
        res["timeline"] = [(float(m.group(1)), t, m.group(2))
                           for t, l in console.lines for m in [VMINIT_RE.search(l)] if m]
        fin = [x for x in res["timeline"] if x[2].startswith("boot finished")]
        if fin:
            res["finished_guest"] = fin[-1][0]
            res["state"] = fin[-1][2].split(":", 1)[-1].strip()
        if res["error"]:
            log = open(log_path, errors="replace").read().strip()
            res["tail"] = console.tail(40) + ("\n--- stderr:\n" + log[-2000:] if log else "")
        return res

    # --- the run -----------------------------------------------------------------------
    def prepare(self, vmms):
        need = [pkg for pkg, tool in (("qemu-system-x86", "qemu-system-x86_64"),
                                      ("dosfstools", "mkfs.vfat"), ("mtools", "mcopy"))
                if "qemu" in vmms and not shutil.which(tool)]
        if not shutil.which("ssh-keygen"):
            need.append("openssh-client")
        if need:
            sh("apt-get", "install", "-y", "-q", *need)
        out = subprocess.run(["bash", f"{ROOT}/resources/guest/debian.sh"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        self.kernel, self.image = f"{out}/vmlinux", f"{out}/debian.img"
        sh("cargo", "build", "-q", "--release", "-p", "minivmm", cwd=ROOT)
        sh("cargo", "build", "-q", "--release", "-p", "minivmm-tests", "--bins", cwd=ROOT)
        self.minivmm = f"{ROOT}/target/release/minivmm"
        self.pvm = os.path.exists("/sys/module/kvm_pvm")
        # The root file system as minivmm finds it (partition 1's PARTUUID), for QEMU:
        # the same kernel command line, whatever order microvm gives the two disks.
        try:
            uuid = subprocess.run(["sfdisk", "--part-uuid", self.image, "1"], check=True,
                                  capture_output=True, text=True).stdout.strip()
            self.root = f"root=PARTUUID={uuid.lower()}" if uuid else "root=/dev/vda1"
        except (OSError, subprocess.CalledProcessError):
            self.root = "root=/dev/vda1"
        self.qemu_version = ""
        if shutil.which("qemu-system-x86_64"):
            self.qemu_version = subprocess.run(["qemu-system-x86_64", "--version"],
                                               capture_output=True, text=True).stdout.split("\n")[0]

    def calibrate(self):
        o = subprocess.run([f"{ROOT}/target/release/calibrate"], capture_output=True, text=True)
        parts = o.stdout.split()
        if o.returncode != 0 or len(parts) != 2:
            say(f"calibrate failed (rc {o.returncode}): {o.stderr.strip()[-300:]}")
            return None, None
        return float(parts[0]), float(parts[1])


def fmt(x):
    return "-" if x is None else f"{x:.1f}"


def median(results, key):
    xs = [r[key] for r in results if r.get(key) is not None and not r["error"]]
    return statistics.median(xs) if xs else None


def report(a, bench, vmms, results, ns_iter, factor, argv):
    pvm = bench.pvm
    out = []
    p = out.append
    ok = {v: [r for r in results if r["vmm"] == v and not r["error"]] for v in vmms}
    p(f"Debian 12 server image (`resources/guest/debian.sh`: its `vmlinux` and a fresh sparse "
      f"copy of `debian.img` per boot), vminit, cloud-init NoCloud seed (user with an SSH key, "
      f"SSH host key, static address), {MEM} RAM, {a.cpus} vCPU{'s' if a.cpus > 1 else ''}, {a.rounds} round(s) "
      f"{'alternating ' if len(vmms) > 1 else ''}({', '.join(NAMES[v] for v in vmms)}), "
      f"medians of the boots that succeeded "
      f"({'PVM host' if pvm else 'hardware virtualization'}; host speed factor "
      f"{'unknown' if factor is None else f'{factor:.2f}'}"
      f"{'' if ns_iter is None else f', {ns_iter:.1f} ns/iter'}).\n")
    rows = [("VMM start to first successful `ssh ... true` (s, host clock)", "ssh"),
            ("VMM start to boot finished, cloud-init included (console) (s, host clock)", "cloud_init"),
            ("kernel: `Run /sbin/init` (s, guest clock)", "init_guest"),
            ("VMM start to `Run /sbin/init` on the console (s, host clock)", "init_host"),
            ("VMM start to first console line (s, host clock)", "first_console"),
            ("vminit: `boot finished` (s, guest clock)", "finished_guest"),
            (f"one `ssh ... true` on the booted VM (s, median of {LOGINS} in a row)", "login"),
            ("`sudo poweroff` to VMM exit (s)", "poweroff_s")]
    both = len(vmms) == 2
    head = "| | " + " | ".join(NAMES[v] for v in vmms) + (" | minivmm / QEMU |" if both else " |")
    p(head)
    p("|" + " --- |" * (len(vmms) + 1 + both))
    for label, key in rows:
        med = [median(ok[v], key) for v in vmms]
        line = f"| {label} | " + " | ".join(fmt(m) for m in med) + " |"
        if both:
            line += (f" {med[0] / med[1]:.2f} |" if None not in med and med[1] else " - |")
        p(line)
    p("")
    p(f"Boots that succeeded: " + ", ".join(f"{NAMES[v]} {len(ok[v])}/{a.rounds}" for v in vmms)
      + ". VMM exit codes after `poweroff`: "
      + "; ".join(f"{NAMES[v]} " + ", ".join(str(r.get("exit", "-")) for r in results
                                             if r["vmm"] == v) for v in vmms) + ".")
    fails = [r for r in results if r["error"]]
    for r in fails:
        p(f"- round {r['round']} {NAMES[r['vmm']]} FAILED: {r['error']}"
          + (f" (last ssh: {r['last_ssh']})" if r.get("last_ssh") else ""))
    # The guest's timeline: median guest-clock seconds of each progress line, by its text.
    p("\nGuest timeline (median seconds on the guest's clock; vminit's progress lines):\n")
    keys = []
    for r in results:
        names = ([r["init_line"]] if r.get("init_line") else []) + [x[2] for x in r["timeline"]]
        for n in names:
            if n not in keys:
                keys.append(n)
    p("| step | " + " | ".join(NAMES[v] for v in vmms) + " |")
    p("|" + " --- |" * (len(vmms) + 1))
    for n in keys:
        cells = []
        for v in vmms:
            xs = []
            # The boots that succeeded; where none did, how far the others got.
            for r in ok[v] or [r for r in results if r["vmm"] == v]:
                if n == r.get("init_line"):
                    xs.append(r["init_guest"])
                xs += [g for g, _, t in r["timeline"] if t == n][:1]
            cells.append(fmt(statistics.median(xs)) if xs else "-")
        p(f"| {n.replace('|', '/')} | " + " | ".join(cells) + " |")
    p("")
    p(f"Reproduce: `{' '.join(shlex.quote(x) for x in argv)}` (as root).")
    if "qemu" in vmms:
        q = next((r["cmd"] for r in results if r["vmm"] == "qemu"), None)
        if q:
            p(f"QEMU ({bench.qemu_version}): `{' '.join(shlex.quote(x) for x in q)}`")
    m = next((r["cmd"] for r in results if r["vmm"] == "minivmm"), None)
    if m:
        p(f"minivmm: `{' '.join(shlex.quote(x) for x in m)}`")
    return "\n".join(out) + "\n"


def write_json(path, a, vmms, results, argv, text):
    names = [("VMM start to first SSH command", "ssh"), ("VMM start to cloud-init finished", "cloud_init"),
             ("kernel to init (guest clock)", "init_guest"), ("SSH login on the booted VM", "login")]
    ok = lambda v, k: [r[k] for r in results if r["vmm"] == v and not r["error"] and r.get(k) is not None]
    metrics = [benchjson.metric(n, "s", "lower", ok("minivmm", k), ok("qemu", k)) for n, k in names]
    # Another vCPU count is another benchmark (its own section of docs/benchmarks.md).
    bench, title = "debian-ssh", "Debian server: boot to SSH"
    if a.cpus != CPUS:
        bench, title = f"{bench}-{a.cpus}cpus", f"{title}, {a.cpus} vCPUs"
    benchjson.write(path, bench, title, " ".join(argv), text, metrics)


def interrupted(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--only", choices=("minivmm", "qemu"),
                    help="boot only this VMM (default both, minivmm then QEMU in each round)")
    ap.add_argument("--cpus", type=int, default=CPUS,
                    help=f"vCPUs of each VM (default {CPUS}; the issue's own boot had 2)")
    ap.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchjson.py)")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not 1 <= a.cpus <= 8:
        ap.error("--cpus must be 1 to 8")
    vmms = [a.only] if a.only else ["minivmm", "qemu"]
    argv = ["resources/bench/debian-ssh.py", "--rounds", str(a.rounds)] + (["--only", a.only] if a.only else []) + \
        (["--cpus", str(a.cpus)] if a.cpus != CPUS else [])

    bench = Bench(a)
    # SIGTERM and SIGHUP end the run like Ctrl-C: through the finally below.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)
    results = []
    try:
        bench.prepare(vmms)
        ns_iter, factor = bench.calibrate()
        say(f"host speed factor: {'unknown' if factor is None else f'{factor:.2f}'}"
            f" ({ns_iter} ns/iter; {'PVM' if bench.pvm else 'hardware'} KVM)")
        bench.netns()
        bench.key = f"{bench.tmp}/id_ed25519"
        bench.user_pub = bench.keygen(bench.key, "bench@host")
        k = 0
        for rnd in range(1, a.rounds + 1):
            for vmm in vmms:
                r = bench.boot(vmm, rnd, k)
                k += 1
                results.append(r)
                if r["error"]:
                    say(f"round {rnd} {vmm}: FAILED: {r['error']}"
                        + (f" (last ssh: {r['last_ssh']})" if r.get("last_ssh") else "")
                        + f"\n--- console tail:\n{r['tail']}\n---")
                else:
                    say(f"round {rnd} {vmm}: ssh {fmt(r['ssh'])} s, cloud-init {fmt(r['cloud_init'])} s, "
                        f"Run init at {fmt(r.get('init_guest'))} s guest / {fmt(r.get('init_host'))} s host, "
                        f"boot finished at {fmt(r.get('finished_guest'))} s guest ({r.get('state', '?')}), "
                        f"logins {', '.join(fmt(x) for x in r.get('logins', []))} s, "
                        f"exit {r.get('exit')} {fmt(r.get('poweroff_s'))} s after poweroff")
                for g, h, t in r["timeline"]:
                    say(f"    [{g:8.2f} guest / {h:8.2f} host] {t}")
    except KeyboardInterrupt:
        say("interrupted")
        raise SystemExit(130)
    finally:
        bench.cleanup()
    text = report(a, bench, vmms, results, ns_iter, factor, argv)
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    if a.json:
        write_json(a.json, a, vmms, results, argv, text)


if __name__ == "__main__":
    main()
