#!/usr/bin/env bash
# Renders every benchmark chart (docs/bench/*.svg, or the SVG files given) in a real
# headless Chromium and checks the screenshots: not blank, and each VMM's legend colour
# present in the bars. Installs Debian's `chromium` (and a sans-serif font) if missing.
#
# Usage: resources/bench/check-charts.sh [--install-only] [FILE.svg...]
# Env:   SHOTS=dir for the PNG screenshots (default /tmp/minivmm-charts; kept)
# Exit:  0 all charts pass, 1 a chart fails (the reason is printed), 2 setup failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHOTS=${SHOTS:-/tmp/minivmm-charts}

say() { echo "check-charts.sh: $*" >&2; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
	say "installing: ${need[*]}"
	SUDO=
	[ "$(id -u)" = 0 ] || SUDO=sudo
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q >&2
	$SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
		{ say "could not install ${need[*]}"; exit 2; }
fi
if [ "${1:-}" = --install-only ]; then exit 0; fi

files=("$@")
if ((${#files[@]} == 0)); then
	shopt -s nullglob
	files=("$ROOT"/docs/bench/*.svg)
fi
((${#files[@]})) || { say "no SVG files to check (run resources/bench/run-all.py first)"; exit 2; }
mkdir -p "$SHOTS"

fail=0
for svg in "${files[@]}"; do
	svg=$(realpath "$svg")
	name=$(basename "$svg" .svg)
	png="$SHOTS/$name.png"
	# The window is the chart's own size (its width/height attributes), so anything drawn
	# outside the SVG's box would be clipped here as it would be on the page.
	read -r w h < <(python3 "$HERE/check_charts.py" size "$svg")
	rm -f "$png"
	# --no-sandbox: we run as root. A fresh profile directory each time keeps Chromium
	# from attaching to another instance.
	prof=$(mktemp -d /tmp/minivmm-chromium.XXXXXX)
	timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
		--user-data-dir="$prof" --force-device-scale-factor=1 \
		--window-size="$w,$h" --screenshot="$png" "file://$svg" >"$prof.log" 2>&1 || true
	rm -rf "$prof"
	if [ ! -s "$png" ]; then
		say "$name: Chromium wrote no screenshot; its output:"
		tail -20 "$prof.log" >&2
		rm -f "$prof.log"
		fail=1
		continue
	fi
	rm -f "$prof.log"
	python3 "$HERE/check_charts.py" check "$svg" "$png" || fail=1
done
[ $fail = 0 ] && say "all ${#files[@]} chart(s) pass; screenshots in $SHOTS"
exit $fail
