#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a few seconds (default 8; the first
# argument overrides): a smoke test that the targets build and find nothing quickly.
# Long runs are done by hand, e.g.
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O net_worker -- -max_total_time=600
# Installs cargo-fuzz (from crates.io) on first use. RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-8}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz@0.13.2 >&2
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >&2
for t in $(cargo fuzz list); do
	out=$(mktemp /tmp/minivmm-fuzz-smoke.XXXXXX)
	if ! cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
		-print_final_stats=1 >"$out" 2>&1; then
		tail -n 40 "$out" >&2
		echo "fuzz smoke: $t FAILED (the input is in fuzz/artifacts/$t/)" >&2
		rm -f "$out"
		exit 1
	fi
	runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$out" | grep -oE '[0-9]+$' || echo '?')
	echo "fuzz smoke: $t: $runs runs in ${secs} s, nothing found" >&2
	rm -f "$out"
done
