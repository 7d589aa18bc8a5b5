#!/usr/bin/env bash
# Boots the test guest to an interactive busybox shell on this terminal, building the
# guest (kernel + root filesystem) and minivmm on first use.
#   Ctrl-A x quits; `reboot -f` or `poweroff -f` in the guest ends the VM too.
# The guest's disk is a copy of the built image, kept between runs in
# ~/.cache/minivmm/rootfs-user.ext4 (delete it to start afresh). Extra arguments go to
# minivmm, e.g. ./run-guest.sh --memory 512M --stats
set -euo pipefail
cd "$(dirname "$0")"

guest=$(bash resources/guest/build.sh | tail -n 1)
cargo build --release -p minivmm >&2
disk=${MINIVMM_DISK:-$HOME/.cache/minivmm/rootfs-user.ext4}
if [ ! -e "$disk" ]; then
  mkdir -p "$(dirname "$disk")"
  cp --sparse=always "$guest/rootfs.ext4" "$disk.tmp" && mv "$disk.tmp" "$disk"
fi
exec target/release/minivmm --kernel "$guest/vmlinux" --disk "$disk" "$@"
