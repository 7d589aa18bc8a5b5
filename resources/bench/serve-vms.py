#!/usr/bin/env python3
"""How much `minivmm serve` itself costs with many Linux VMs.

Starts `minivmm serve` on a free loopback port with a scratch state directory, creates
N VMs of the `busybox-disk` image (the test guest, 128 MiB each) through the REST API,
and samples the manager's resident memory (`GET /api/v1/manager`) and each VM's
(`GET /api/v1/vms`) every two seconds until every guest has printed its /init marker or
the time is up. Then SIGTERM, and a check that the manager exited 0 and left no state
directory and no VM process.

While it runs it holds every CPU slot of the tests (tests/README.md: flocked files under
$TMPDIR/minivmm-test-cpus), so that test runs on the same machine wait instead of
missing their deadlines.

Usage: resources/bench/serve-vms.py [--vms 8] [--seconds 600] [--minivmm target/release/minivmm]
Prints one line per sample and a summary; exits 1 if the manager did not stop cleanly.
"""

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

MARKER = "minivmm-guest: init ready"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def take_cpu_slots():
    d = os.path.join(tempfile.gettempdir(), "minivmm-test-cpus")
    os.makedirs(d, exist_ok=True)
    held = []
    queue = open(os.path.join(d, "queue.lock"), "a")
    fcntl.flock(queue, fcntl.LOCK_EX)
    for i in range(os.cpu_count() or 1):
        f = open(os.path.join(d, f"cpu{i}.lock"), "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        held.append(f)
    fcntl.flock(queue, fcntl.LOCK_UN)
    return held


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--minivmm", default=os.path.join(ROOT, "target/release/minivmm"))
    args = ap.parse_args()

    slots = take_cpu_slots()
    state = tempfile.mkdtemp(prefix="minivmm-serve-bench-")
    os.rmdir(state)  # the manager makes it, and removes it at the end
    serve = subprocess.Popen(
        [args.minivmm, "serve", "--listen", "127.0.0.1:0", "--state-dir", state],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = serve.stdout.readline().strip()
    url, token = line.split("http://", 1)[1].split("/#token=")
    base = f"http://{url}/api/v1"

    def call(method, path, body=None):
        req = urllib.request.Request(
            base + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
            return json.loads(data) if data and r.headers.get_content_type() == "application/json" else data

    pids = []
    start = time.monotonic()
    for i in range(args.vms):
        vm = call("POST", "/vms", {"name": f"vm{i + 1}", "image": "busybox-disk", "memory_mib": 128})
        pids.append(vm["pid"])
    print(f"{args.vms} VMs created in {time.monotonic() - start:.2f} s")
    peak = 0
    ready = set()
    while time.monotonic() - start < args.seconds:
        m = call("GET", "/manager")
        peak = max(peak, m["rss_bytes"])
        vms = call("GET", "/vms")
        for v in vms:
            if v["name"] not in ready:
                log = call("GET", f"/vms/{v['name']}/console.log").decode(errors="replace")
                if MARKER in log:
                    ready.add(v["name"])
        vm_rss = sum(v["stats"]["rss_bytes"] for v in vms)
        cpu = sum(v["stats"]["cpu_percent"] for v in vms)
        print(f"{time.monotonic() - start:6.1f} s: manager {m['rss_bytes'] / 2**20:5.1f} MiB, "
              f"VMs {vm_rss / 2**20:7.1f} MiB and {cpu:5.1f} % CPU, {len(ready)}/{args.vms} at /init",
              flush=True)
        if len(ready) == args.vms:
            break
        time.sleep(2)
    print(f"manager peak VmRSS {peak / 2**20:.1f} MiB with {args.vms} VMs; "
          f"{len(ready)} reached /init in {time.monotonic() - start:.0f} s")
    serve.send_signal(signal.SIGTERM)
    code = serve.wait(timeout=120)
    del slots
    left = [p for p in pids if os.path.exists(f"/proc/{p}")]
    ok = code == 0 and not os.path.exists(state) and not left
    print(f"SIGTERM: exit code {code}, state directory {'left' if os.path.exists(state) else 'gone'}, "
          f"{len(left)} VM processes left")
    if os.path.exists(state):
        shutil.rmtree(state, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
