#!/usr/bin/env python3
"""Runs every benchmark in resources/bench/ (minivmm against QEMU, side by side) and writes
docs/benchmarks.md with a table and an SVG chart per benchmark (docs/bench/<bench>.svg).

Usage:
  resources/bench/run-all.py [--only boot,blk,net,overhead,snapshot,debian-ssh,debian-ssh-2cpus]
                             [--rounds N]
                             [--quick]
                             [--docs DIR] [--no-build] [--stop-on-failure]
  resources/bench/run-all.py --from-json DIR [--docs DIR]

Steps: `cargo build --release -p minivmm`, `resources/guest/build.sh` (cached), then each
chosen benchmark with `--json FILE` (Python scripts) or BENCH_JSON=FILE (shell scripts).
Each result is saved as docs/bench/<bench>.json; the page is then written from every
docs/bench/*.json, so a run with --only updates its own sections and keeps the others.
A benchmark whose script does not exist (yet) is skipped with a message. --from-json DIR
rewrites the page and charts from saved JSON without running anything. A hand-written
docs/bench/<bench>.reading.md, if there, ends that benchmark's section (a reading of the
numbers that the next run keeps; update it when the numbers change).

--rounds N   rounds for boot, blk and net (and any script whose --help offers --rounds);
             default: each script's own (boot 5, blk 3, net 2).
--quick      a smoke run: 1 round, smaller transfers (blk 8 MiB/2 s, net 1 MiB), and
             --quick for scripts that offer it (overhead, snapshot). Its numbers are noisy;
             its page goes to /tmp/minivmm-bench-quick/ unless --docs says otherwise.

Run as root on the machine to measure (needs /dev/kvm, qemu-system-x86, network
namespaces for net). Check the charts in a real browser: resources/bench/check-charts.sh.
Stdlib only.
"""
import argparse, glob, json, math, os, shlex, shutil, subprocess, sys, time
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import benchjson  # noqa: E402

# name -> (section title, script, how it takes its JSON path: "arg" (--json F) or "env").
BENCHES = {
    "boot": ("Boot", "boot.py", "arg"),
    "blk": ("virtio-blk", "blk.sh", "env"),
    "net": ("virtio-net", "net.sh", "env"),
    "overhead": ("VMM overhead", "overhead.py", "arg"),
    "snapshot": ("Snapshot and restore", "snapshot.py", "arg"),
    # Not in a plain run's default set (see DEFAULT): a Debian boot to SSH is tens of
    # minutes per round on a PVM host. `--only debian-ssh` runs it (`debian-ssh-2cpus`
    # the same with 2 vCPUs per VM).
    "debian-ssh": ("Debian server: boot to SSH", "debian-ssh.py", "arg"),
    # The same with 2 vCPUs per VM, as the Debian issue's own measurement was made.
    "debian-ssh-2cpus": ("Debian server: boot to SSH, 2 vCPUs", "debian-ssh.py", "arg"),
}
# What a run without --only runs.
DEFAULT = ["boot", "blk", "net", "overhead", "snapshot"]
VMM_LABEL = {"minivmm": "minivmm", "qemu": "QEMU"}
VMM_COLOUR = {"minivmm": "#2f6db5", "qemu": "#e07b1f"}
EXTRA_COLOURS = ["#3a9a4a", "#8e5cb5", "#c0392b", "#7f7f7f"]
FONT = "sans-serif"


# ------------------------------------------------------------------------------------
# Running the benchmarks


def log(msg):
    print(f"run-all: {msg}", file=sys.stderr, flush=True)


def script_help(path):
    """A Python script's --help text ("" for others: the shell scripts would just run)."""
    if not path.endswith(".py"):
        return ""
    try:
        return subprocess.run(["python3", path, "--help"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def bench_command(name, a, json_path):
    """(argv, extra env) that runs benchmark name writing its JSON to json_path."""
    title, script, how = BENCHES[name]
    path = os.path.join(HERE, script)
    env = {}
    rounds = 1 if a.quick and a.rounds is None else a.rounds
    if name == "boot":
        argv = ["python3", path] + (["--rounds", str(rounds)] if rounds else [])
    elif name == "blk":
        argv = ["bash", path] + ([str(rounds)] if rounds else [])
        if a.quick:
            env.update(SEQ_MIB="8", RAND_SECS="2")
    elif name == "net":
        argv = ["bash", path, str(rounds or 2)] + (["1"] if a.quick else [])
    else:  # scripts written by others: pass what their --help says they take
        argv = ["python3", path] if script.endswith(".py") else ["bash", path]
        helptext = script_help(path)
        if rounds and "--rounds" in helptext:
            argv += ["--rounds", str(rounds)]
        if a.quick and "--quick" in helptext:
            argv.append("--quick")
        if name.endswith("-2cpus"):
            argv += ["--cpus", "2"]
    if how == "arg":
        argv += ["--json", json_path]
    else:
        env["BENCH_JSON"] = json_path
    return argv, env


def run_logged(argv, env, logfile):
    """Runs argv, its stdout and stderr to the terminal and to logfile. Returns rc."""
    with open(logfile, "wb") as f:
        p = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in p.stdout:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            f.write(line)
        return p.wait()


def build(a):
    if a.no_build:
        guest = os.environ.get("GUEST") or subprocess.run(
            ["bash", f"{ROOT}/resources/guest/build.sh"], check=True, stdout=subprocess.PIPE,
            text=True).stdout.strip().splitlines()[-1]
        return guest
    log("cargo build --release -p minivmm")
    subprocess.run(["cargo", "build", "--release", "-p", "minivmm"], cwd=ROOT, check=True)
    log("resources/guest/build.sh (cached after the first build)")
    out = subprocess.run(["bash", f"{ROOT}/resources/guest/build.sh"], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def run_benchmarks(a, names, bench_dir):
    t_all = time.monotonic()
    guest = build(a)
    log(f"guest: {guest}")
    env_base = {"GUEST": guest, "MINIVMM": f"{ROOT}/target/release/minivmm"}
    logdir = f"/tmp/minivmm-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(logdir, exist_ok=True)
    run_all_cmd = "resources/bench/run-all.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    failed, done = [], []
    for name in names:
        script = os.path.join(HERE, BENCHES[name][1])
        if not os.path.exists(script):
            log(f"{name}: {os.path.relpath(script, ROOT)} does not exist (yet): skipped")
            continue
        tmp = os.path.join(logdir, f"{name}.json")
        argv, env = bench_command(name, a, tmp)
        log(f"{name}: {' '.join(f'{k}={v}' for k, v in env.items())} "
            f"{' '.join(shlex.quote(x) for x in argv)}  (log: {logdir}/{name}.log)")
        t0 = time.monotonic()
        load_start = round(os.getloadavg()[0], 2)
        rc = run_logged(argv, {**env_base, **env}, f"{logdir}/{name}.log")
        elapsed = time.monotonic() - t0
        try:
            doc = load_doc(tmp) if rc == 0 else None
        except (OSError, ValueError) as e:
            log(f"{name}: bad JSON: {e}")
            doc = None
        if doc is None:
            log(f"{name}: FAILED (exit {rc}) after {elapsed:.0f} s; docs/bench/{name}.json left as it was")
            failed.append(name)
            if a.stop_on_failure:
                break
            continue
        doc["elapsed_s"] = round(elapsed, 1)
        doc["host"]["loadavg_start"] = load_start
        doc["run_all_command"] = run_all_cmd
        with open(os.path.join(bench_dir, f"{name}.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        done.append(name)
        log(f"{name}: done in {elapsed / 60:.1f} min")
        write_page(a.docs, bench_dir)  # after each benchmark: a long run shows progress
    log(f"all done in {(time.monotonic() - t_all) / 60:.1f} min: ran {', '.join(done) or 'nothing'}"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------
# Reading the JSON


def load_doc(path):
    """Reads one benchmark's JSON and checks the shared shape (ValueError if wrong)."""
    with open(path) as f:
        doc = json.load(f)
    for k in ("bench", "metrics"):
        if k not in doc:
            raise ValueError(f"{path}: no {k!r}")
    doc.setdefault("title", BENCHES.get(doc["bench"], (doc["bench"],))[0])
    doc.setdefault("host", {})
    doc.setdefault("notes", "")
    doc.setdefault("command", "")
    for m in doc["metrics"]:
        for k in ("name", "unit"):
            if k not in m:
                raise ValueError(f"{path}: a metric without {k!r}")
        if m.get("better") not in ("lower", "higher"):
            # Not given: rates are better higher, times and sizes lower.
            u = m["unit"]
            m["better"] = "higher" if ("/s" in u or u in ("IOPS", "Hz")) else "lower"
        for v in vmms_of(m):
            s = m[v]
            s.setdefault("min", s["median"])
            s.setdefault("max", s["median"])
            s.setdefault("samples", [])
    return doc


def vmms_of(m):
    """The VMMs a metric has numbers for: minivmm and qemu first, then any other."""
    keys = [k for k, v in m.items() if isinstance(v, dict) and isinstance(v.get("median"), (int, float))]
    return sorted(keys, key=lambda k: (["minivmm", "qemu"] + [k]).index(k))


def load_all(bench_dir):
    docs = []
    for path in sorted(glob.glob(os.path.join(bench_dir, "*.json"))):
        try:
            docs.append(load_doc(path))
        except (OSError, ValueError) as e:
            log(f"skipping {path}: {e}")
    order = list(BENCHES)
    docs.sort(key=lambda d: (order.index(d["bench"]) if d["bench"] in order else len(order), d["bench"]))
    return docs


# ------------------------------------------------------------------------------------
# Numbers


def decimals_for(values):
    """Decimals that give the largest of values three significant digits (0 from 100 up):
    every number of one metric is written with the same decimals."""
    values = [v for v in values if v is not None]
    top = max((abs(v) for v in values), default=0)
    if top == 0:
        return 0
    rule = min(6, max(0, 2 - int(math.floor(math.log10(top)))))
    # ... but no more decimals than the numbers have (0.14 stays 0.14, IOPS stay whole).
    given = max(next((d for d in range(7) if abs(round(v, d) - v) <= 1e-9 * max(1, abs(v))), 6)
                for v in values)
    return min(rule, given)


def fmt(x, decimals=None):
    """A number with about three significant digits (or the given decimals)."""
    if x is None:
        return "n/a"
    if decimals is None:
        decimals = decimals_for([x])
    s = f"{x:,.{decimals}f}"
    return s.replace(",", "\u2009")  # thin space between thousands


def metric_decimals(m):
    return decimals_for([m[v][k] for v in vmms_of(m) for k in ("median", "min", "max")])


def ratio(m):
    if "minivmm" in vmms_of(m) and "qemu" in vmms_of(m) and m["qemu"]["median"]:
        return m["minivmm"]["median"] / m["qemu"]["median"]
    return None


def verdict(m):
    """Who is ahead on this metric, in words that do not overstate noisy data."""
    r = ratio(m)
    if r is None or m["better"] is None:
        return ""
    a, b = m["minivmm"], m["qemu"]
    if len(a["samples"]) > 1 and len(b["samples"]) > 1 and a["min"] <= b["max"] and b["min"] <= a["max"]:
        return "ranges overlap"
    few = " (1 sample)" if min(len(a["samples"]), len(b["samples"])) < 2 else ""
    if abs(r - 1) < 0.03:
        return "same" + few
    better_is_minivmm = (r < 1) == (m["better"] == "lower")
    if better_is_minivmm:
        f = 1 / r if m["better"] == "lower" else r
        who = "minivmm"
    else:
        f = r if m["better"] == "lower" else 1 / r
        who = "QEMU"
    return (f"{who}, {f:.2g}\u00d7" if f >= 1.5 else f"{who}, by {abs(f - 1) * 100:.0f}%") + few


def axis(x):
    """(top, ticks) of an axis from 0 that holds x > 0: the smallest 1, 2, 2.5 or 5 x 10^k
    step that covers x in at most 6 intervals, so the bars use most of the width."""
    e = 10 ** math.floor(math.log10(x))
    for step in (0.2 * e, 0.25 * e, 0.5 * e, e, 2 * e, 2.5 * e, 5 * e):
        n = math.ceil(x / step - 1e-9)
        if n <= 6:
            return n * step, [i * step for i in range(n + 1)]
    return 10 * e, [i * 2 * e for i in range(6)]


def tick_label(v, top):
    """Axis numbers: as few decimals as the step needs; k and M from 10 000 up."""
    div, suffix = (1e6, "M") if top >= 1e6 else (1e3, "k") if top >= 1e4 else (1, "")
    v, step = v / div, top / div / 6
    digits = max(0, -int(math.floor(math.log10(step))) + 1) if step < 1 else 0
    s = f"{v:.{min(digits, 6)}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s + (suffix if v else "")


# ------------------------------------------------------------------------------------
# SVG


# Advance widths of DejaVu Sans (the widest usual sans-serif; Arial and Helvetica are
# narrower), in em. Used to keep labels inside the chart whatever font the viewer has.
_W = {c: 0.636 for c in "0123456789"}
_W.update({".": 0.318, ",": 0.318, " ": 0.318, "\u2009": 0.2, "(": 0.39, ")": 0.39, "/": 0.337,
           "-": 0.361, "\u2013": 0.5, "\u00d7": 0.838, ":": 0.337, "%": 0.95, "i": 0.278,
           "l": 0.278, "j": 0.278, "t": 0.392, "f": 0.352, "r": 0.411, "m": 0.974, "w": 0.818,
           ">": 0.838, "<": 0.838, "=": 0.838, "+": 0.838, "_": 0.5, "'": 0.275, "I": 0.295,
           "M": 0.863, "W": 0.989})


def text_width(s, size):
    w = 0.0
    for c in s:
        if c in _W:
            w += _W[c]
        elif c.isupper():
            w += 0.72
        else:
            w += 0.62
    return w * size


def unit_title(unit):
    return {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "\u00b5s": "microseconds",
            "MiB": "MiB", "MB/s": "MB/s (10\u2076 bytes/s)", "MiB/s": "MiB/s", "IOPS": "I/O operations per second",
            "/s": "per second", "1/s": "per second"}.get(unit, unit)


def with_unit(value, unit):
    if unit in ("", None):
        return value
    if unit == "1/s":
        return f"{value}/s"
    if unit.startswith("/") or unit == "%":
        return f"{value}{unit}"
    return f"{value} {unit}"


def panels_of(metrics):
    """Groups metrics into panels: one unit per panel (units differ, scales differ), and a
    metric whose largest value is under a tenth of another's in the same unit gets its own
    panel (a shared axis would flatten it)."""
    panels = []
    for m in metrics:
        vs = vmms_of(m)
        if not vs:
            continue
        top = max(max(m[v]["max"], m[v]["median"]) for v in vs)
        for p in panels:
            if p["unit"] == m["unit"] and p["better"] == m["better"] and \
                    top <= 10 * p["lo"] and top * 10 >= p["hi"]:
                p["metrics"].append(m)
                p["lo"], p["hi"] = min(p["lo"], top), max(p["hi"], top)
                break
        else:
            panels.append({"unit": m["unit"], "better": m["better"], "metrics": [m], "lo": top, "hi": top})
    return panels


class Svg:
    def __init__(self):
        self.parts = []

    def text(self, x, y, s, size=12, anchor="start", weight=None, fill="#222", extra=""):
        w = f' font-weight="{weight}"' if weight else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"'
                          f'{w} fill="{fill}"{extra}>{escape(s)}</text>')

    def rect(self, x, y, w, h, fill, extra=""):
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" '
                          f'fill="{fill}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke, width=1, extra=""):
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width}"{extra}/>')


def colour(v, i):
    return VMM_COLOUR.get(v) or EXTRA_COLOURS[i % len(EXTRA_COLOURS)]


def fit(s, size, width):
    """s, shortened with an ellipsis to fit width."""
    if text_width(s, size) <= width:
        return s
    while s and text_width(s + "\u2026", size) > width:
        s = s[:-1]
    return s.rstrip(" ,") + "\u2026"


def chart_svg(doc, width=760):
    """One chart for a benchmark: per metric one bar per VMM at the median, a whisker from
    min to max, value labels; a panel per unit. Returns (svg text, width, height)."""
    metrics = doc["metrics"]
    allv = []
    for m in metrics:
        for v in vmms_of(m):
            if v not in allv:
                allv.append(v)
    col = {v: colour(v, i) for i, v in enumerate(allv)}
    pad, label_w = 14, 78
    bar_h, row_h = 16, 22
    size, small = 12, 11

    def value_label(m, v):
        s, d = m[v], metric_decimals(m)
        lab = with_unit(fmt(s["median"], d), m["unit"])
        n = len(s["samples"])
        if n > 1 and s["max"] > s["min"]:
            lab += f"  ({fmt(s['min'], d)}\u2013{fmt(s['max'], d)})"
        return lab

    labels = [value_label(m, v) for m in metrics for v in vmms_of(m)]
    right = max([text_width(s, size) for s in labels] + [60]) + 10
    x0 = pad + label_w
    x1 = width - pad - right
    if x1 - x0 < 250:  # very long labels: make room for the bars
        x1 = x0 + 250
        width = int(x1 + right + pad)
    svg = Svg()
    y = 24
    title = f"{doc['title']}: minivmm vs QEMU"
    svg.text(pad, y, title, size=16, weight="bold")
    # Legend on the title's line when there is room, else below it.
    legend = []
    for v in allv:
        legend.append((v, VMM_LABEL.get(v, v)))
    leg_w = sum(14 + 6 + text_width(lab, size) + 18 for _, lab in legend) + 170
    lx = width - pad - leg_w
    if lx < pad + text_width(title, 16) + 20:
        y += 22
        lx = pad
    for v, lab in legend:
        svg.rect(lx, y - 11, 14, 14, col[v], f' id="legend-{escape(v)}"')
        svg.text(lx + 20, y, lab, size=size)
        lx += 14 + 6 + text_width(lab, size) + 18
    ranged = any(len(m[v]["samples"]) > 1 and m[v]["max"] > m[v]["min"] for m in metrics for v in vmms_of(m))
    if ranged:
        svg.line(lx, y - 4, lx + 14, y - 4, "#222", 1.5)
        svg.line(lx, y - 9, lx, y + 1, "#222", 1.5)
        svg.line(lx + 14, y - 9, lx + 14, y + 1, "#222", 1.5)
        svg.text(lx + 20, y, "min\u2013max, bar at median", size=small, fill="#555")
    else:
        svg.text(lx, y, "one sample each", size=small, fill="#555")
    y += 14

    for p in panels_of(metrics):
        y += 16
        better = {"lower": "lower is better", "higher": "higher is better"}.get(p["better"], "")
        head = unit_title(p["unit"]) + (f"  \u00b7  {better}" if better else "")
        svg.text(pad, y + 6, head, size=size, weight="bold", fill="#444")
        y += 14
        top, tick_values = axis(max(max(m[v]["max"], m[v]["median"]) for m in p["metrics"] for v in vmms_of(m)) or 1)
        scale = (x1 - x0) / top
        body, grid = Svg(), Svg()
        for m in p["metrics"]:
            y += 18
            r = ratio(m)
            rtxt = f"minivmm / QEMU = {r:.2f}" if r is not None else ""
            rw = text_width(rtxt, small) + 12 if rtxt else 0
            body.text(pad, y, fit(m["name"], size + 1, width - 2 * pad - rw), size=size + 1, fill="#111")
            if rtxt:
                body.text(width - pad, y, rtxt, size=small, anchor="end", fill="#555")
            y += 6
            block_top = y
            for v in vmms_of(m):
                s = m[v]
                cy = y + row_h / 2
                body.text(x0 - 8, cy + 4, VMM_LABEL.get(v, v), size=size, anchor="end")
                body.rect(x0, cy - bar_h / 2, s["median"] * scale, bar_h, col[v],
                          f' class="bar-{escape(v)}"')
                end = x0 + s["median"] * scale
                if len(s["samples"]) > 1 and s["max"] > s["min"]:
                    a, b = x0 + s["min"] * scale, x0 + s["max"] * scale
                    body.line(a, cy, b, cy, "#222", 1.5)
                    body.line(a, cy - 6, a, cy + 6, "#222", 1.5)
                    body.line(b, cy - 6, b, cy + 6, "#222", 1.5)
                    end = max(end, b)
                body.text(end + 6, cy + 4, value_label(m, v), size=size)
                y += row_h
            # Grid lines behind this metric's bars only (not through its name).
            for t in tick_values:
                x = x0 + t * scale
                grid.line(x, block_top - 2, x, y + 4, "#e3e3e3" if t else "#999", 1)
        y += 4
        # The axis under the panel.
        for t in tick_values:
            x = x0 + t * scale
            grid.line(x, y - 2, x, y + 3, "#999", 1)
            grid.text(x, y + 15, tick_label(t, top), size=small, anchor="middle", fill="#555")
        grid.line(x0, y, x1, y, "#999", 1)
        svg.parts += grid.parts + body.parts
        y += 18
    height = int(y + pad - 4)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{FONT}" role="img">\n'
            f'<title>{escape(title)}</title>\n'
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>\n')
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + head + "\n".join(svg.parts) + "\n</svg>\n", width, height


# ------------------------------------------------------------------------------------
# Markdown


def kvm_words(kvm):
    return {"pvm": "PVM (software KVM: no VT-x/AMD-V; guest kernel code runs in KVM's instruction emulator)",
            "vmx": "Intel VT-x", "svm": "AMD-V", "hardware": "hardware virtualization"}.get(kvm, kvm or "unknown")


def host_line(doc):
    h = doc["host"]
    kvm = h.get("kvm")
    bits = [{"pvm": "PVM host", "vmx": "VT-x host", "svm": "AMD-V host",
             "hardware": "hardware KVM host"}.get(kvm, f"KVM {kvm or '?'}")]
    if h.get("cpus"):
        bits.append(f"{h['cpus']} CPUs")
    if h.get("mem_gib"):
        bits.append(f"{h['mem_gib']:g} GiB")

    def num(x):
        if isinstance(x, list) and x:  # /proc/loadavg fields, as some scripts keep them
            x = x[0]
        try:
            return float(x)
        except (TypeError, ValueError):
            return None
    start = num(h.get("loadavg_start", h.get("loadavg_at_start")))
    end = num(h.get("loadavg"))
    loads = [f"{v:g} at the {w}" for v, w in ((start, "start"), (end, "end")) if v is not None]
    if loads:
        bits.append("load average " + ", ".join(loads))
    q = h.get("qemu") or h.get("qemu_version")
    if q:
        bits.append(q.replace("QEMU emulator version", "QEMU"))
    if h.get("minivmm_commit"):
        bits.append(f"minivmm at {h['minivmm_commit']}")
    if h.get("date"):
        bits.append("finished " + h["date"].replace("T", " ").replace("Z", " UTC"))
    if doc.get("elapsed_s"):
        bits.append(f"took {doc['elapsed_s'] / 60:.1f} min")
    return "; ".join(bits)


def md_cell(s):
    return s.replace("|", "\\|")


def range_cell(m, v):
    s = m.get(v)
    if not isinstance(s, dict) or v not in vmms_of(m):
        return "n/a"
    d = metric_decimals(m)
    if len(s["samples"]) > 1 and s["max"] > s["min"]:
        return f"**{fmt(s['median'], d)}** ({fmt(s['min'], d)}\u2013{fmt(s['max'], d)})"
    return f"**{fmt(s['median'], d)}**"


def metric_label(m):
    return f"{m['name']} ({m['unit']})" if m["unit"] else m["name"]


def section(doc, bench_dir):
    out = [f"## {doc['title']}", ""]
    if doc["notes"]:
        out += [doc["notes"].strip(), ""]
    if doc["command"]:
        out += [f"Command: `{doc['command']}`" + (f" (run by `{doc['run_all_command']}`)"
                                                  if doc.get("run_all_command") else "") + ".", ""]
    out += [f"Measured on: {host_line(doc)}.", ""]
    out += [f"![{doc['title']}: minivmm against QEMU, median and min\u2013max per metric](bench/{doc['bench']}.svg)", ""]
    rounds = sorted({len(m[v]["samples"]) for m in doc["metrics"] for v in vmms_of(m)})
    out += ["| metric | better | minivmm: median (min\u2013max) | QEMU: median (min\u2013max) | minivmm / QEMU | ahead |",
            "| --- | --- | --- | --- | --- | --- |"]
    for m in doc["metrics"]:
        r = ratio(m)
        out.append(f"| {md_cell(metric_label(m))} | {m['better'] or ''} | {range_cell(m, 'minivmm')} | "
                   f"{range_cell(m, 'qemu')} | {'n/a' if r is None else f'{r:.2f}'} | {verdict(m)} |")
    out.append("")
    if rounds and max(rounds) > 1:
        out += [f"Samples per VMM and metric: {', '.join(map(str, rounds))}. \"ahead\" names the "
                "better VMM only when the two ranges do not overlap.", ""]
        out += ["<details><summary>All samples</summary>", "",
                "| metric | VMM | samples |", "| --- | --- | --- |"]
        for m in doc["metrics"]:
            for v in vmms_of(m):
                out.append(f"| {md_cell(metric_label(m))} | {VMM_LABEL.get(v, v)} | "
                           f"{' '.join(fmt(x, metric_decimals(m)) for x in m[v]['samples'])} |")
        out += ["", "</details>", ""]
    # A hand-written reading of the results, kept across regenerations.
    reading = os.path.join(bench_dir, f"{doc['bench']}.reading.md")
    if os.path.exists(reading):
        out += [open(reading).read().strip(), ""]
    return out


def page(docs, bench_dir):
    kvms = sorted({d["host"].get("kvm", "?") for d in docs})
    cpus = sorted({d["host"].get("cpus") for d in docs if d["host"].get("cpus")})
    dates = sorted(d["host"]["date"][:10] for d in docs if d["host"].get("date"))
    cmds = []
    for d in docs:
        c = d.get("run_all_command")
        if c and c not in cmds:
            cmds.append(c)
    total = sum(d.get("elapsed_s") or 0 for d in docs)
    out = ["# Benchmarks", "",
           "<!-- Written by resources/bench/run-all.py from docs/bench/*.json: edit the scripts, "
           "not this page. -->", "",
           "minivmm against QEMU (`qemu-system-x86_64 -M microvm -accel kvm`) on the same guest: the "
           "test kernel, initramfs and images built by `resources/guest/build.sh`. Each benchmark "
           "runs both VMMs in one invocation, alternating, so that both see the same host "
           "conditions; bars are medians, whiskers the range over the rounds, and the tables give "
           "the ratio minivmm / QEMU. The scripts live in `resources/bench/`.", ""]
    where = ("**Where these numbers come from.** " +
             (f"{'Dates' if len(set(dates)) > 1 else 'Date'}: {', '.join(sorted(set(dates)))}. " if dates else "") +
             f"Host: {' / '.join(kvm_words(k) for k in kvms)}, "
             f"{' / '.join(map(str, cpus)) or '?'} CPU(s). ")
    if "pvm" in kvms:
        where += ("On a PVM host guest user code runs natively but guest kernel code runs in KVM's "
                  "instruction emulator at a few million instructions per second, so boot and I/O "
                  "times are dominated by emulated guest kernel code, identical for both VMMs: the "
                  "ratios say more than the absolute numbers, and on a VT-x/AMD-V host everything is "
                  "one to three orders of magnitude faster. Other work on the machine during a run "
                  "shows up as noise (each section gives the host's load average at the start and end of its run).")
    out += [where, ""]
    if cmds:
        out += ["Command" + ("s" if len(cmds) > 1 else "") + " (as root, from the repository root): " +
                ", ".join(f"`{c}`" for c in cmds) +
                (f"; the benchmarks below took {total / 60:.0f} min in all." if total else "."), ""]
    out += ["Rerun everything with `resources/bench/run-all.py` (`--only boot,blk` for some, `--quick` "
            "for a smoke run of about 10 minutes, written to /tmp); rewrite this page from the saved results "
            "(`docs/bench/*.json`) with `resources/bench/run-all.py --from-json docs/bench`; check the "
            "charts in headless Chromium with `resources/bench/check-charts.sh`.", ""]
    # At a glance: every metric's ratio in one table.
    out += ["## At a glance", "",
            "| benchmark | metric | better | minivmm | QEMU | minivmm / QEMU | ahead |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for d in docs:
        for m in d["metrics"]:
            r = ratio(m)
            dec = metric_decimals(m) if vmms_of(m) else 0
            mv = fmt(m["minivmm"]["median"], dec) if "minivmm" in vmms_of(m) else "n/a"
            qv = fmt(m["qemu"]["median"], dec) if "qemu" in vmms_of(m) else "n/a"
            out.append(f"| [{d['title']}](#{anchor(d['title'])}) | {md_cell(metric_label(m))} | "
                       f"{m['better'] or ''} | {mv} | {qv} | {'n/a' if r is None else f'{r:.2f}'} | {verdict(m)} |")
    out.append("")
    missing = [BENCHES[b][0] for b in BENCHES if b not in {d["bench"] for d in docs}]
    if missing:
        out += [f"Not in this page (no results yet): {', '.join(missing)}.", ""]
    for d in docs:
        out += section(d, bench_dir)
    return "\n".join(out).rstrip() + "\n"


def anchor(title):
    """GitHub's heading anchor."""
    a = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return a.replace(" ", "-")


def write_page(docs_dir, bench_dir):
    docs = load_all(bench_dir)
    if not docs:
        log(f"no results in {bench_dir}: nothing to write")
        return
    for d in docs:
        svg, _, _ = chart_svg(d)
        with open(os.path.join(bench_dir, f"{d['bench']}.svg"), "w") as f:
            f.write(svg)
    path = os.path.join(docs_dir, "benchmarks.md")
    with open(path, "w") as f:
        f.write(page(docs, bench_dir))
    log(f"wrote {os.path.relpath(path, ROOT)} and {len(docs)} chart(s) in "
        f"{os.path.relpath(bench_dir, ROOT)}/ ({', '.join(d['bench'] for d in docs)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated: {','.join(BENCHES)} (default: {','.join(DEFAULT)})")
    ap.add_argument("--rounds", type=int, help="rounds per benchmark (default: each script's own)")
    ap.add_argument("--quick", action="store_true", help="1 round, small transfers: a smoke run")
    ap.add_argument("--from-json", metavar="DIR", help="only rewrite the page and charts from DIR/*.json")
    ap.add_argument("--docs", help="where benchmarks.md and bench/ go (default: docs/ of this tree; "
                    "with --quick /tmp/minivmm-bench-quick, so a smoke run leaves the real results alone)")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build (the guest build still runs, cached)")
    ap.add_argument("--dry-run", action="store_true", help="print the benchmark commands, run nothing")
    ap.add_argument("--stop-on-failure", action="store_true",
                    help="stop at the first benchmark that fails (default: go on with the others)")
    a = ap.parse_args()
    if a.docs is None:
        a.docs = "/tmp/minivmm-bench-quick" if a.quick and not a.from_json else os.path.join(ROOT, "docs")
    a.docs = os.path.abspath(a.docs)
    bench_dir = os.path.join(a.docs, "bench")
    os.makedirs(bench_dir, exist_ok=True)
    if a.from_json:
        src = os.path.abspath(a.from_json)
        if src != bench_dir:  # keep the page regenerable from its own bench/ folder
            for path in glob.glob(os.path.join(src, "*.json")) + glob.glob(os.path.join(src, "*.reading.md")):
                shutil.copy(path, bench_dir)
        write_page(a.docs, bench_dir)
        return 0
    names = list(DEFAULT)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        bad = [n for n in names if n not in BENCHES]
        if bad:
            ap.error(f"unknown benchmark(s) {', '.join(bad)}; known: {', '.join(BENCHES)}")
    if a.dry_run:
        for n in names:
            if not os.path.exists(os.path.join(HERE, BENCHES[n][1])):
                print(f"{n}: {BENCHES[n][1]} missing: would be skipped")
                continue
            argv, env = bench_command(n, a, f"/tmp/.../{n}.json")
            print(f"{n}: " + " ".join([f"{k}={v}" for k, v in env.items()] + [shlex.quote(x) for x in argv]))
        return 0
    if os.geteuid() != 0:
        log("warning: not root; /dev/kvm and net.sh's namespaces need root")
    return run_benchmarks(a, names, bench_dir)


if __name__ == "__main__":
    sys.exit(main())
