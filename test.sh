#!/usr/bin/env bash
# Runs all of minivmm's checks and tests, on a fresh machine too:
#   - builds the test guest on first use (resources/guest/build.sh installs what it needs),
#   - cargo fmt and clippy (warnings are errors),
#   - unit tests, KVM integration tests (tiny guests) and end-to-end tests (Linux guests).
# Needs root (KVM, tap devices, network namespaces). Extra arguments go to `cargo test`,
# e.g. ./test.sh -p vmm, or ./test.sh --test boot_linux.
set -euo pipefail
cd "$(dirname "$0")"

export MINIVMM_TEST_GUEST
MINIVMM_TEST_GUEST=$(bash resources/guest/build.sh | tail -n 1)
echo "test guest: $MINIVMM_TEST_GUEST" >&2

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --release -p minivmm
# Linux guests are CPU-bound under emulation: one test thread per core.
cargo test --release --workspace --no-fail-fast "$@" -- --test-threads="$(nproc)"
