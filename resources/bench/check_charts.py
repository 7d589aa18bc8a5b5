#!/usr/bin/env python3
"""Helper of check-charts.sh (stdlib only).

  check_charts.py size FILE.svg          prints "WIDTH HEIGHT" of the chart
  check_charts.py check FILE.svg FILE.png
      checks that the SVG is well-formed standalone SVG (root <svg> in the SVG namespace,
      width/height), and that Chromium's screenshot of it is not blank and shows each
      VMM's colour (the fill of the legend swatches, id="legend-VMM") in more pixels than
      the legend alone has: the bars were drawn. Exit 1 with a reason if not.
"""
import struct, sys, zlib
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"


def svg_info(path):
    root = ET.parse(path).getroot()
    if root.tag != NS + "svg":
        raise SystemExit(f"{path}: root element is {root.tag}, not svg in the SVG namespace")
    w, h = root.get("width"), root.get("height")
    if not (w and h and w.isdigit() and h.isdigit()):
        raise SystemExit(f"{path}: needs integer width and height attributes")
    colours = {}
    for el in root.iter(NS + "rect"):
        i = el.get("id", "")
        if i.startswith("legend-"):
            colours[i[len("legend-"):]] = el.get("fill")
    return int(w), int(h), colours


def read_png(path):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit RGB or RGBA PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise SystemExit(f"{path}: PNG depth {depth} colour type {ctype} interlace {interlace} not handled")
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def hex_rgb(s):
    s = s.lstrip("#")
    return tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))


def check(svg, png):
    sw, sh, colours = svg_info(svg)
    w, h, rows = read_png(png)
    name = svg.rsplit("/", 1)[-1]
    problems = []
    if (w, h) != (sw, sh):
        problems.append(f"screenshot is {w}x{h}, the chart {sw}x{sh}")
    if len(colours) < 2:
        problems.append(f"legend has {len(colours)} VMM colour(s), want minivmm and qemu")
    total = w * h
    nonwhite = sum(1 for r in rows for p in r if min(p) < 235)
    if nonwhite < total * 0.01:
        problems.append(f"looks blank: {nonwhite} of {total} pixels not white")
    counts = {}
    for vmm, c in colours.items():
        rgb = hex_rgb(c)
        counts[vmm] = sum(1 for r in rows for p in r
                          if abs(p[0] - rgb[0]) + abs(p[1] - rgb[1]) + abs(p[2] - rgb[2]) < 24)
        # The legend swatch is 14x14 = 196 pixels; a bar adds at least a few hundred.
        if counts[vmm] < 400:
            problems.append(f"{vmm}'s colour {c} in only {counts[vmm]} pixels (bars missing?)")
    # Text or bars touching the right or bottom edge would be clipped on the page.
    edge = [p for p in rows[-1]] + [r[-1] for r in rows]
    if any(min(p) < 200 for p in edge):
        problems.append("something is drawn on the right or bottom edge (clipped?)")
    summary = ", ".join(f"{v} {n} px" for v, n in counts.items())
    if problems:
        print(f"{name}: FAIL: " + "; ".join(problems))
        return 1
    print(f"{name}: ok ({w}x{h}, {nonwhite * 100 // total}% drawn; {summary})")
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "size":
        w, h, _ = svg_info(sys.argv[2])
        print(w, h)
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        return check(sys.argv[2], sys.argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
