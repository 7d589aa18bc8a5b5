#!/usr/bin/env python3
"""The one JSON shape every benchmark in resources/bench/ writes (run-all.py reads it to
build docs/benchmarks.md and its charts):

  {"bench": "boot", "title": "Boot", "command": "resources/bench/boot.py --rounds 5",
   "host": {"kvm": "pvm", "cpus": 2, "date": "2025-01-31T12:00:00Z", ...},
   "notes": "markdown paragraph(s) describing the method",
   "metrics": [{"name": "process start to /init", "unit": "s", "better": "lower",
                "minivmm": {"median": 1.0, "min": 0.9, "max": 1.1, "samples": [...]},
                "qemu": {...}}]}

Python scripts import it (`write(...)`); shell scripts call it as a command:

  benchjson.py --out FILE --bench blk --title T --command CMD --notes-file F \\
      --results FILE --metric KEY UNIT BETTER NAME [--metric ...] [--extra K=V ...]

where --results is a file of lines "VMM KEY VALUE" (one per sample, VMM minivmm or qemu).
Stdlib only.
"""
import argparse, datetime, json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VMMS = ("minivmm", "qemu")


def kvm_kind():
    """pvm (software KVM), vmx or svm (hardware), or unknown."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return "pvm"
    try:
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    except OSError:
        flags = []
    for f in ("vmx", "svm"):
        if f in flags:
            return f
    return "unknown"


def _out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def host_info():
    """What run-all.py shows about where the numbers come from. kvm, cpus and date are the
    shared shape; the rest is extra context (absent keys are fine for readers)."""
    info = {
        "kvm": kvm_kind(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg": round(os.getloadavg()[0], 2),
    }
    try:
        kib = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        info["mem_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    q = _out(["qemu-system-x86_64", "--version"]).splitlines()
    if q:
        info["qemu"] = q[0]
    commit = _out(["git", "rev-parse", "--short", "HEAD"])
    if commit:
        dirty = _out(["git", "status", "--porcelain", "--untracked-files=no"])
        info["minivmm_commit"] = commit + ("+dirty" if dirty else "")
    return info


def summary(samples):
    """{"median", "min", "max", "samples"} of a list of numbers (None if empty)."""
    samples = [float(x) for x in samples]
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def metric(name, unit, better, minivmm_samples, qemu_samples):
    assert better in ("lower", "higher"), better
    return {"name": name, "unit": unit, "better": better,
            "minivmm": summary(minivmm_samples), "qemu": summary(qemu_samples)}


def write(path, bench, title, command, notes, metrics, **extra):
    """Writes the shared shape to path (atomically). extra keys go in at the top level."""
    doc = {"bench": bench, "title": title, "command": command, "host": host_info(),
           "notes": notes.strip(), "metrics": metrics}
    doc.update(extra)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--notes-file", help="markdown file with the method notes ('-': stdin)")
    ap.add_argument("--results", required=True, help='lines "VMM KEY VALUE"')
    ap.add_argument("--metric", nargs=4, action="append", required=True,
                    metavar=("KEY", "UNIT", "BETTER", "NAME"))
    ap.add_argument("--extra", action="append", default=[], metavar="K=V",
                    help="extra top-level string field")
    a = ap.parse_args()
    samples = {}
    for line in open(a.results):
        parts = line.split()
        if len(parts) != 3:
            continue
        vmm, key, value = parts
        samples.setdefault((vmm, key), []).append(value)
    notes = ""
    if a.notes_file:
        notes = sys.stdin.read() if a.notes_file == "-" else open(a.notes_file).read()
    metrics = [metric(name, unit, better, samples.get(("minivmm", key), []),
                      samples.get(("qemu", key), []))
               for key, unit, better, name in a.metric]
    extra = dict(kv.split("=", 1) for kv in a.extra)
    write(a.out, a.bench, a.title, a.command, notes, metrics, **extra)


if __name__ == "__main__":
    main()
