#!/usr/bin/env bash
# Runs all of minivmm's checks and tests, on a fresh machine too:
#   - builds the test guest on first use (resources/guest/build.sh installs what it needs),
#   - cargo fmt and clippy (warnings are errors),
#   - measures this host's guest-kernel speed once (tests/speed.rs) and scales every
#     end-to-end deadline by it,
#   - unit tests, KVM integration tests (tiny guests) and end-to-end tests (Linux guests),
#     with cargo-nextest where it is installed (cargo test otherwise),
#   - a few seconds of each fuzz target (fuzz/smoke.sh; full runs only),
#   - the benchmark charts in docs/bench/ rendered in a headless Chromium and checked
#     (resources/bench/check-charts.sh installs Debian's chromium; full runs only),
#   - prints a summary: boots, seconds per boot, the speed factor, the slowest tests.
# Needs root (KVM, tap devices, network namespaces).
#
# The Debian server image (resources/guest/debian.sh, built once and cached) runs in:
#   (default)      the ssh-pair lab (tests/labs.rs: two Debian VMs; ssh, git push, scp), so
#                  that CI runs it;
#   --servers      also tests/debian.rs (cloud-init, SSH, identities, shutdown: two more);
#   --all-labs     also the bigger labs, mysql-tls-backup and web-data-clients (three and
#                  four Debian VMs);
#   --no-servers   nothing on the Debian image (nor its build): on a 2-core PVM host about
#                  25 minutes instead of an hour.
# Other arguments go to `cargo nextest run` / `cargo test`, e.g. ./test.sh -p vmm, or
# ./test.sh --test disk (the Debian image is then built only if a selected test needs it).
# tests/README.md says how the deadlines work and how to run one test alone.
set -euo pipefail
cd "$(dirname "$0")"
export MINIVMM_TEST_SERVERS=${MINIVMM_TEST_SERVERS:-lab}
args=()
for a in "$@"; do
	case $a in
	--servers) export MINIVMM_TEST_SERVERS=1 ;;
	--no-servers) export MINIVMM_TEST_SERVERS=0 ;;
	--all-labs) export MINIVMM_TEST_ALL_LABS=1 ;;
	*) args+=("$a") ;;
	esac
done
set -- ${args[@]+"${args[@]}"}
t0=$(date +%s)

export MINIVMM_TEST_GUEST
MINIVMM_TEST_GUEST=$(bash resources/guest/build.sh | tail -n 1)
t_guest=$(($(date +%s) - t0))
echo "test guest: $MINIVMM_TEST_GUEST (${t_guest} s)" >&2
# The Debian server image, before any test runs (built once: ~7 minutes on a 2-core PVM
# host, seconds from the cache), unless no test will boot it or tests were selected (then
# the first test that needs it builds it: tests/lib.rs, debian_dir).
t_debian=0
if [ "$MINIVMM_TEST_SERVERS" != 0 ] && [ $# -eq 0 ] && [ -z "${MINIVMM_DEBIAN_DIR:-}" ]; then
	t=$(date +%s)
	export MINIVMM_DEBIAN_DIR
	MINIVMM_DEBIAN_DIR=$(bash resources/guest/debian.sh | tail -n 1)
	t_debian=$(($(date +%s) - t))
	echo "Debian server image: $MINIVMM_DEBIAN_DIR (${t_debian} s)" >&2
fi
# Debian's chromium and Playwright (PyPI) for tests/browser.rs, the web console's tests
# (installed once; seconds after that).
bash resources/web/setup-browser.sh >/dev/null ||
	echo "resources/web/setup-browser.sh failed: tests/browser.rs will fail" >&2

# Host tools that tests check minivmm's work with: sfdisk makes partitioned disks,
# fsck.vfat, blkid and mtools read the cloud-init seed (those checks say SKIPPED without).
need=()
command -v sfdisk >/dev/null 2>&1 || need+=(fdisk)
command -v fsck.vfat >/dev/null 2>&1 || need+=(dosfstools)
command -v mtype >/dev/null 2>&1 || need+=(mtools)
if ((${#need[@]})); then
	echo "installing ${need[*]}" >&2
	SUDO=
	[ "$(id -u)" = 0 ] || SUDO=sudo
	{ $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
		--no-install-recommends "${need[@]}"; } >&2 ||
		echo "could not install ${need[*]}: the checks that use them are skipped" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --release -p minivmm -p minivmm-tests --bins

# The speed of guest kernel code on this host, once for the whole run.
read -r ns_per_iter factor < <(target/release/calibrate)
export MINIVMM_TEST_SPEED=$ns_per_iter
echo "guest kernel speed: ${ns_per_iter} ns per calibration loop iteration" \
	"(reference 450): deadlines x${factor}" >&2

summary=$(mktemp /tmp/minivmm-test-summary.XXXXXX)
log=$(mktemp /tmp/minivmm-test-log.XXXXXX)
trap 'rm -f "$summary" "$log"' EXIT
export MINIVMM_TEST_SUMMARY=$summary

# VMs share the cores through tests/lib.rs's CpuSlots (never more vCPUs running than
# cores); two more test threads keep the tests that boot nothing going meanwhile.
threads=$(($(nproc) + 2))
rc=0
t_tests=$(date +%s)
if cargo nextest --version >/dev/null 2>&1; then
	cargo nextest run --release --workspace --no-fail-fast --test-threads "$threads" \
		--status-level pass --final-status-level slow "$@" 2>&1 | tee "$log" || rc=$?
else
	cargo test --release --workspace --no-fail-fast "$@" -- --test-threads="$threads" \
		2>&1 | tee "$log" || rc=$?
fi
t_fuzz=$(date +%s)
# Every fuzz target builds and runs a few seconds (only in a full run: extra arguments
# select tests).
if [ $# -eq 0 ]; then
	bash fuzz/smoke.sh || rc=1
	bash resources/bench/check-charts.sh || rc=1
fi
t_end=$(date +%s)

{
	echo
	echo "=== summary ==="
	echo "speed factor x${factor} (${ns_per_iter} ns per calibration iteration, reference 450)"
	n=$(awk '$1 == "boot"' "$summary" | wc -l)
	if [ "$n" -gt 0 ]; then
		mid=$(((n + 1) / 2))
		wall=$(awk '$1 == "boot" { print $4 }' "$summary" | sort -n | sed -n "${mid}p")
		cpu=$(awk '$1 == "boot" { print $5 }' "$summary" | sort -n | sed -n "${mid}p")
		long=$(awk '$1 == "boot" { print $4 }' "$summary" | sort -n | tail -n 1)
		echo "$n Linux boots: median ${wall} s wall (${cpu} s CPU), longest ${long} s wall"
	else
		echo "no Linux boots recorded"
	fi
	awk '$1 == "lab" { print "lab " $2 " (" $3 " VMs): up in " $4 " s" }' "$summary"
	# nextest: "        PASS [  35.123s] (12/240) minivmm-tests::disk some_test"
	# (nextest's time counts from the test's start, so it includes waiting for a core.)
	grep -E '^ +(PASS|FAIL|TIMEOUT|SIGKILL|SIGSEGV|SIGABRT|ABORT) \[' "$log" |
		sed -E 's/^ +([A-Z]+) \[ *([0-9.]+)s\] (\([^)]*\) )?/\2 \1 /' |
		sort -rn | awk '!seen[$0]++' | head -n 8 | sed 's/^/slowest: /' || true
	echo "guest build ${t_guest} s, Debian image ${t_debian} s, tests $((t_fuzz - t_tests)) s," \
		"fuzz smoke $((t_end - t_fuzz)) s, whole run $((t_end - t0)) s"
} >&2
exit "$rc"
