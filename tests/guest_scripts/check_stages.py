"""Checks the Debian image's cloud-init-stages on the host (run by tests/guest_scripts.rs).

cloud-init-stages answers some of cloud-init's programs in its own process (on PVM hosts
each program costs the guest seconds). Each answer here is compared with the program's,
on this host: lsb_release, dpkg --print-architecture, ssh-keygen -l (keys made here of
every type), `ip -4 addr show` / `ip -6 addr show permanent scope global` (the names
cloud-init reads), `ip --json addr` (what cloud-init's table shows) and `ip route`; the wrapper that gives
cloud-init's modules those answers (AnsweringSubp) with a fake subp module.
Then the byte-code bundle: pybundle.py over this host's own Python, modules imported
through the bundle's finder work and come from it, and a module whose source is missing
is not served from the bundle, and the finder that answers "not here" from a
directory's listing. Then the work done once per process (gettext.find, the
JSON schema) against the originals, is_container() with and without signs of a container,
the log file handler that writes a buffer at a time, the step `nice` and `--after`. Exit status 0
when every check passes; each failure is printed.
"""
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STAGES = os.path.join(REPO, "resources/guest/debian/overlay/usr/local/lib/vminit/cloud-init-stages")
PYBUNDLE = os.path.join(REPO, "resources/guest/debian/pybundle.py")
failures = []


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what)


def section(start, end):
    src = open(STAGES).read()
    return src[src.index(start) : src.index(end)]


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


ns = {"os": os, "sys": sys, "ipaddress": ipaddress, "time": time, "__name__": "stages"}
exec(section("# --- What cloud-init would run", "STAGES = {"), ns)

# lsb_release --all, as cloud-init parses it.
fmap = {"Codename": "codename", "Description": "description", "Distributor ID": "id", "Release": "release"}
want = {}
for line in run("lsb_release", "--all").splitlines():
    k, _, v = line.partition(":")
    if k in fmap:
        want[fmap[k]] = v.strip()
got = ns["lsb_release"](None)()
check("lsb_release from /etc/os-release", got == want, f"{got} != {want}")
check("dpkg architecture", ns["dpkg_architecture"](None)() == run("dpkg", "--print-architecture").strip())

# ssh-keygen -l for every key type.
with tempfile.TemporaryDirectory() as d:
    for t, extra, comment in (("rsa", [], "root@vm"), ("ecdsa", [], "root@vm"), ("ed25519", [], ""),
                              ("dsa", [], "a b"), ("ecdsa", ["-b", "384"], "x")):
        key = os.path.join(d, f"k{len(os.listdir(d))}")
        subprocess.run(["ssh-keygen", "-q", "-t", t, *extra, "-N", "", "-C", comment, "-f", key], check=True)
        line = open(key + ".pub").read()
        check(f"ssh fingerprint {t} {extra}", ns["ssh_fingerprint"](line) == run("ssh-keygen", "-l", "-f", key + ".pub").strip(),
              f"{ns['ssh_fingerprint'](line)!r}")

# Interface names with addresses, as cloud-init's regex reads them from ip.
nmatch = re.compile(r"[0-9]+:\s+(\w+)[@:]")
for fam, cmd in ((4, ["ip", "-4", "addr", "show"]), (6, ["ip", "-6", "addr", "show", "permanent", "scope", "global"])):
    got = sorted(set(nmatch.findall(ns["ip_addr_names"](fam))))
    want = sorted(set(nmatch.findall(run(*cmd))))
    check(f"IPv{fam} interface names", got == want, f"{got} != {want}")

# ip --json addr: the fields cloud-init's table shows.
def fields(j):
    out = {}
    for dev in json.loads(j):
        up = "UP" in dev.get("flags", []) and "LOWER_UP" in dev.get("flags", [])
        addrs = [(a["family"], a.get("local"), a.get("prefixlen"), a.get("scope"))
                 for a in dev.get("addr_info", [])]
        v4 = [a for a in addrs if a[0] == "inet"]
        v6 = sorted(a for a in addrs if a[0] == "inet6")
        out[dev["ifname"]] = (dev["address"] if dev.get("link_type") == "ether" else "", up, v4, v6)
    return out

got, want = fields(ns["ip_json_addr"]()), fields(run("ip", "--json", "addr"))
for name in sorted(set(got) | set(want)):
    g, w = got.get(name), want.get(name)
    if w and g:  # ip lists a primary IPv4 address first, as SIOCGIFADDR gives it
        w = (w[0], w[1], w[2][:1], w[3])
    check(f"ip --json addr: {name}", g == w, f"{g} != {w}")

# Routes: the IPv4 main table.
routes = ns["route_info"]()["ipv4"]
got = sorted((ipaddress.ip_network(f"{r['destination']}/{r['genmask']}").with_prefixlen, r["iface"]) for r in routes)
want = []
for line in run("ip", "-o", "-4", "route", "list").splitlines():
    w = line.split()
    dest = "0.0.0.0/0" if w[0] == "default" else str(ipaddress.ip_network(w[0]))
    want.append((dest, w[w.index("dev") + 1]))
check("IPv4 routes", got == sorted(want), f"{got} != {sorted(want)}")

# AnsweringSubp: an answer instead of the program; None, an error or a string command
# (shell) runs the program; the module's other names pass through.
class FakeSubp:
    import collections
    SubpResult = collections.namedtuple("SubpResult", "stdout stderr")
    ran = []
    OTHER = 7

    @classmethod
    def subp(cls, args, *rest, **kw):
        cls.ran.append(args)
        return cls.SubpResult("ran", "")


def odd(args):
    raise ValueError("odd")


wrapped = ns["AnsweringSubp"](FakeSubp, ns["answers"]({("ip", "route"): lambda: "answered"}))
check("AnsweringSubp: answered in process", wrapped.subp(["ip", "route"]) == ("answered", "") and not FakeSubp.ran)
check("AnsweringSubp: another command runs", wrapped.subp(["ip", "link"]).stdout == "ran" and FakeSubp.ran == [["ip", "link"]])
check("AnsweringSubp: a shell string runs", wrapped.subp("ip route").stdout == "ran")
check("AnsweringSubp: an answer that raises runs the program",
      ns["AnsweringSubp"](FakeSubp, odd).subp(["x"]).stdout == "ran")
check("AnsweringSubp: other names pass through", wrapped.OTHER == 7)
check("host keys: only the helper script is answered",
      ns["host_keys_answer"](("/usr/bin/ssh-keygen", "a", "b")) is None)

# The byte-code bundle, over this host's Python (the interpreter running this script).
with tempfile.TemporaryDirectory() as d:
    bundle = os.path.join(d, "pycode.bundle")
    stale = os.path.join(d, "mvtest_stale.py")
    with open(stale, "w") as f:
        f.write("X = 42\n")
    subprocess.run([sys.executable, PYBUNDLE, "/", bundle], check=True, capture_output=True)
    probe = (
        "import os, sys\n"
        f"src = open({STAGES!r}).read()\n"
        "start = src.index('# --- Imports from one file'); end = src.index('use_bundle()\\n\\ntry:')\n"
        f"exec(src[start:end].replace('/usr/local/lib/vminit/pycode.bundle', {bundle!r}))\n"
        "use_bundle()\n"
        "import json, email.mime.text, http.client, argparse, logging.handlers\n"
        "assert json.loads(json.dumps({'a': [1]})) == {'a': [1]}\n"
        "print(type(json.__spec__.loader).__name__, type(email.mime.text.__spec__.loader).__name__,"
        " json.__file__, sys.meta_path[0].__class__.__name__)\n"
        "b = [f for f in sys.meta_path if type(f).__name__ == 'Bundle'][0]\n"
        "print('mapped' if isinstance(b.map, memoryview) else 'pread')\n"
        "b.index['mvtest_no_source'] = b.index['json.scanner'][:3] + ('/nonexistent/mvtest_no_source.py',)\n"
        "try:\n    import mvtest_no_source\n    print('served')\nexcept ImportError:\n    print('refused')\n"
        # A source newer than its byte code in the bundle: the source is what runs.
        f"b.index['mvtest_stale'] = b.index['json.scanner'][:3] + ({stale!r},)\n"
        "import mvtest_stale\n"
        "print('stale-source-used' if getattr(mvtest_stale, 'X', None) == 42 else 'stale-bundle-used')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    words = out.stdout.split()
    check("bundle: modules imported through it", out.returncode == 0 and words[:2] == ["Loader", "Loader"]
          and words[2].endswith("json/__init__.py"), out.stdout + out.stderr)
    check("bundle: byte code read from the mapped file", "mapped" in words, out.stdout + out.stderr)
    check("bundle: a module without its source is not served", words[-2:-1] == ["refused"], out.stdout + out.stderr)
    check("bundle: a changed source wins over the bundle", words[-1:] == ["stale-source-used"], out.stdout + out.stderr)

# "Not in this directory" from the listing (ListingFinder), in a child Python: a missing
# module costs no stat() once the listings are held, a module there is found, one created
# later is found after importlib.invalidate_caches() (which run() calls before each stage).
with tempfile.TemporaryDirectory() as d:
    probe = (
        "import importlib, os, posix, sys\n"
        f"src = open({STAGES!r}).read()\n"
        "exec(src[src.index('# --- \"Not in this directory\"'):src.index('use_listing_finder()\\n\\n')])\n"
        "if sys.argv[1] == 'on':\n    use_listing_finder()\n"
        f"sys.path.insert(0, {d!r})\n"
        f"open({d!r} + '/mvtest_here.py', 'w').write('X = 1\\n')\n"
        "import mvtest_here\n"
        "def absent(name):\n"
        "    try:\n        __import__(name)\n        return False\n    except ImportError:\n        return True\n"
        "absent('mvtest_warm')\n"
        "stats = []\nstat = posix.stat\n"
        "posix.stat = lambda *a, **k: stats.append(a[0]) or stat(*a, **k)\n"
        "gone = absent('mvtest_absent')\n"
        "posix.stat = stat\n"
        f"open({d!r} + '/mvtest_later.py', 'w').write('X = 2\\n')\n"
        "before = absent('mvtest_later')\n"
        "importlib.invalidate_caches()\n"
        "after = not absent('mvtest_later')\n"
        "print(mvtest_here.X, gone, len(stats), before, after, type(sys.path_importer_cache[sys.path[0]]).__name__)\n"
    )
    on = subprocess.run([sys.executable, "-c", probe, "on"], capture_output=True, text=True)
    off = subprocess.run([sys.executable, "-c", probe, "off"], capture_output=True, text=True)
    w, wo = on.stdout.split(), off.stdout.split()
    check("listing finder: a module there is found, a missing one is not",
          on.returncode == 0 and w[:2] == ["1", "True"] and w[5:] == ["ListingFinder"], on.stdout + on.stderr)
    check("listing finder: a missing module costs no stat() (Python's own finder: one per directory)",
          len(w) == 6 and w[2] == "0" and len(wo) == 6 and int(wo[2]) >= 1, on.stdout + on.stderr + off.stdout + off.stderr)
    check("listing finder: a module created later is found after invalidate_caches()",
          len(w) == 6 and w[3:5] == ["True", "True"], on.stdout + on.stderr)

# gettext.find() answered once per question: the same answers, the real find() once each.
fns = {"os": os}
exec(section("def find_once", "import gettext  # noqa"), fns)
import gettext  # noqa: E402

calls = []


def counting_find(*a):
    calls.append(a)
    return gettext.find(*a)


with tempfile.TemporaryDirectory() as d:
    os.makedirs(f"{d}/de/LC_MESSAGES")
    open(f"{d}/de/LC_MESSAGES/mvtest.mo", "wb").close()
    cached = fns["find_once"](counting_find)
    questions = [("argparse", None, None, False), ("mvtest", d, ["de"], False), ("mvtest", d, ["fr"], False),
                 ("mvtest", d, ["fr", "de"], True), ("argparse", None, None, False), ("mvtest", d, ["de"], False)]
    got = [cached(*q) for q in questions]
    want = [gettext.find(*q) for q in questions]
    check("gettext.find once: the same answers", got == want, f"{got} != {want}")
    check("gettext.find once: each question asked once", len(calls) == 4, f"{len(calls)} calls")

# util.is_container() without systemd-detect-virt: False with no sign of a container,
# cloud-init's own check with any.
with tempfile.TemporaryDirectory() as d:
    ns["CONTAINER_FILES"] = (f"{d}/container", f"{d}/dockerenv")
    ns["PID1_ENVIRON"] = f"{d}/environ"
    open(f"{d}/environ", "wb").write(b"HOME=/\0TERM=linux\0")
    check_c = ns["is_container"](lambda: "cloud-init's")
    check("is_container: no sign, not a container", check_c() is False, repr(check_c()))
    open(f"{d}/environ", "wb").write(b"HOME=/\0container=podman\0")
    check("is_container: container= in PID 1's environment", check_c() == "cloud-init's", repr(check_c()))
    open(f"{d}/environ", "wb").write(b"HOME=/\0")
    open(f"{d}/dockerenv", "w").close()
    check("is_container: a container's file", check_c() == "cloud-init's", repr(check_c()))
    os.unlink(f"{d}/environ")
    os.unlink(f"{d}/dockerenv")
    check("is_container: an unreadable environment", check_c() == "cloud-init's", repr(check_c()))

# get_schema() parsed once, a copy for each caller.
reads = []
schema = ns["schema_once"](lambda: reads.append(1) or {"a": {"b": [1, 2]}})
s1 = schema()
s1["a"]["b"].append(3)
s2 = schema()
check("schema once: one read, each caller its own copy", reads == [1] and s2 == {"a": {"b": [1, 2]}}, f"{reads} {s2}")

# cloud-init's log file written a buffer at a time, warnings at once, all by flush_logs().
import logging  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    path = f"{d}/cloud-init.log"
    root = logging.getLogger()
    before = list(root.handlers)
    handler = None

    def setup_logging():
        global handler
        handler = logging.FileHandler(path, "a", "UTF-8")
        root.addHandler(handler)

    root.setLevel(logging.DEBUG)
    ns["deferred_log_flush"](setup_logging)()
    log = logging.getLogger("mvtest")
    log.debug("one")
    buffered = open(path).read()
    log.warning("two")
    at_warning = open(path).read()
    log.info("three")
    before_flush = open(path).read()
    ns["flush_logs"]()
    after_flush = open(path).read()
    root.removeHandler(handler)
    handler.close()
    ns["DEFERRED_LOGS"].clear()
    check("log: DEBUG and INFO lines wait in the buffer", buffered == "" and before_flush == "one\ntwo\n",
          f"{buffered!r} {before_flush!r}")
    check("log: a WARNING is written at once", at_warning == "one\ntwo\n", repr(at_warning))
    check("log: flush_logs() writes the rest", after_flush == "one\ntwo\nthree\n", repr(after_flush))
    check("log: other handlers untouched", root.handlers == before, f"{root.handlers}")

# The step `nice`: the steps after it (a program here) run at a niceness NICE_AFTER
# higher, the ones before it at the caller's. In a child Python, which it renices.
base = os.getpriority(os.PRIO_PROCESS, 0)
script = (
    "import os, sys, subprocess\n"
    f"src = open({STAGES!r}).read()\n"
    "ns = {'os': os, 'sys': sys, 'subprocess': subprocess, 'cloud_init': None}\n"
    "exec(src[src.index('# The niceness of what follows'):src.index('def main():')], ns)\n"
    "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
    "rc = ns['run']('nice')\n"
    "child = subprocess.run(['sh', '-c', 'cut -d\" \" -f19 /proc/self/stat'], capture_output=True, text=True)\n"
    "print(before, rc, os.getpriority(os.PRIO_PROCESS, 0), child.stdout.strip(), ns['NICE_AFTER'])\n"
)
out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
w = out.stdout.split()
check("step nice: later steps run at a higher niceness, a program started after it too",
      out.returncode == 0 and len(w) == 5 and int(w[0]) == base and w[1] == "0"
      and int(w[2]) == min(19, base + int(w[4])) and int(w[3]) == int(w[2]), out.stdout + out.stderr)

# --after FILE: the stages wait for the boot script's word. An empty file (being written)
# and a missing one are waited on; `go` runs the stages; anything else ends the process.
import threading  # noqa: E402

wf = {"os": os, "time": time}
exec(section("def wait_for_go(path):", "def main():"), wf)
with tempfile.TemporaryDirectory() as d:
    go = os.path.join(d, "go")
    open(go, "w").close()  # empty: not decided yet
    t = threading.Timer(0.3, lambda: open(go, "w").write("go\n"))
    start = time.monotonic()
    t.start()
    got = wf["wait_for_go"](go)
    waited = time.monotonic() - start
    t.join()
    check("--after: waits while the file is empty, then `go` runs the stages", got is True and waited >= 0.25,
          f"{got} after {waited:.2f} s")
    os.unlink(go)
    t = threading.Timer(0.2, lambda: open(go, "w").write("no\n"))
    t.start()
    got = wf["wait_for_go"](go)
    t.join()
    check("--after: a missing file is waited for; a word other than `go` ends the process", got is False, f"{got}")

if failures:
    print(f"{len(failures)} check(s) failed: {', '.join(failures)}")
    sys.exit(1)
print("all checks passed")
