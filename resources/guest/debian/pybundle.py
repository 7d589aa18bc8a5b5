#!/usr/bin/env python3
"""Bundle the image's Python byte code into one file, for cloud-init-stages.

Usage: pybundle.py ROOT OUT

ROOT is the image's root tree, OUT the bundle to write (inside ROOT:
/usr/local/lib/vminit/pycode.bundle). The bundle holds every byte-code file
(`__pycache__/NAME.cpython-3XY.pyc`, as Debian's py3compile made them when the
packages were installed) of the standard library and of /usr/lib/python3/dist-packages,
with an index: module name -> (offset, length, is it a package, source path).

Why: importing cloud-init imports ~580 modules, and Python's path finder spends ~9
system calls on each (stat of each directory on sys.path it tries, stat of the source,
open, fstat, ioctl, two reads, close). On a PVM host every system call is emulated guest
kernel work, ~10 ms each on a slow day: about a minute and a half of every boot. With the
bundle, cloud-init-stages's finder spends one per module: a stat of the source (to check
that the byte code is still that of the source, as Python itself does); it reads the byte
code from the bundle mapped into its memory (mmap), which the guest kernel does not copy.

Format: b"VMPYC1\\0\\0", the 4-byte magic number of the byte code, the index's length
(4 bytes, little-endian), the index (marshal), then the byte-code files one after the
other, each whole (with its 16-byte header, checked against the source at import).
"""
import marshal
import os
import struct
import sys

MAGIC = b"VMPYC1\0\0"
# Not bundled: test suites and tools cloud-init never imports.
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
             "pydoc_data", "__phello__"}


def python_dirs(root):
    """The image's sys.path directories that hold byte code, in sys.path order."""
    lib = os.path.join(root, "usr/lib")
    versions = sorted(d for d in os.listdir(lib)
                      if d.startswith("python3.") and os.path.isdir(os.path.join(lib, d)))
    if len(versions) != 1:
        sys.exit(f"pybundle: expected one python3.X in {lib}, found {versions}")
    tag = "cpython-" + versions[0][len("python"):].replace(".", "")
    return [f"/usr/lib/{versions[0]}", "/usr/lib/python3/dist-packages"], tag


def modules(root, top, tag):
    """(module name, is package, source path in the image, byte-code path on the host)
    for every source file under top whose byte code exists."""
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, top.lstrip("/"))):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d != "__pycache__"
                             and "-" not in d and "." not in d)
        rel = os.path.relpath(dirpath, os.path.join(root, top.lstrip("/")))
        parts = [] if rel == "." else rel.split(os.sep)
        if parts and not os.path.exists(os.path.join(dirpath, "__init__.py")):
            dirnames[:] = []  # a namespace package: left to Python's own finder
            continue
        names = set(filenames)
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            stem = f[:-3]
            # An extension module of the same name wins in Python's finder: skip.
            if any(n.startswith(stem + ".") and n.endswith(".so") for n in names):
                continue
            pyc = os.path.join(dirpath, "__pycache__", f"{stem}.{tag}.pyc")
            if not os.path.isfile(pyc):
                continue
            is_pkg = stem == "__init__"
            if is_pkg and not parts:
                continue
            name = ".".join(parts if is_pkg else parts + [stem])
            src = os.path.join(top, rel, f) if parts else os.path.join(top, f)
            yield name, is_pkg, os.path.normpath(src), pyc


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    root, out = sys.argv[1], sys.argv[2]
    dirs, tag = python_dirs(root)
    index, blobs, offset, magic = {}, [], 0, None
    for top in dirs:
        for name, is_pkg, src, pyc in modules(root, top, tag):
            if name in index:  # an earlier sys.path directory wins, as in Python
                continue
            with open(pyc, "rb") as f:
                data = f.read()
            if magic is None:
                magic = data[:4]
            if data[:4] != magic:
                sys.exit(f"pybundle: {pyc}: byte code of another Python")
            index[name] = (offset, len(data), is_pkg, src)
            blobs.append(data)
            offset += len(data)
    if not index:
        sys.exit(f"pybundle: no byte code found under {root}")
    head = marshal.dumps(index)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + magic + struct.pack("<I", len(head)) + head)
        for b in blobs:
            f.write(b)
    os.rename(tmp, out)
    print(f"pybundle: {len(index)} modules, {offset >> 20} MiB of byte code -> {out}")


if __name__ == "__main__":
    main()
