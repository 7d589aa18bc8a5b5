#!/usr/bin/env bash
# Builds the minivmm Debian server guest: a Debian 12 (bookworm) disk image laid
# out like the cloud images people download (debian.img: a raw, sparse disk with a
# GPT partition table, the root ext4 on partition 1) and a Linux 6.1 kernel that
# runs it on minivmm (vmlinux), from Debian packages only: no loop mounts, no
# second root, no VM. See README.md next to this script ("The Debian server
# guest").
#
# Usage: resources/guest/debian.sh          (as root: the image's files are root's)
# Output: the LAST line on stdout is the absolute path of the directory that
# holds vmlinux and debian.img (plus the kernel's config and System.map, and
# packages.txt: what is installed). Everything else goes to stderr or the log.
#
# Boot it (minivmm's PVM CPU template and ACPI are picked by default, and the root
# file system is found on the GPT: root=PARTUUID=...):
#   minivmm --kernel DIR/vmlinux --disk vm.img --cloud-init SEED --memory 1G --cpus 2
# with vm.img a copy of debian.img (cp --sparse=always): the VM writes to it. The
# image boots vminit (debian/vminit.c), a light PID 1 for hosts whose KVM emulates
# guest kernel code; init=/lib/systemd/systemd on the command line boots systemd.
#
# Caching, like build.sh and in the same cache root
# (${MINIVMM_GUEST_DIR:-$HOME/.cache/minivmm/guest}):
#   debian-<key>/           the outputs; <key> hashes every input: this script,
#                           kernel-server.config, the kernel patches, debian/
#                           (package list, overlay, unit lists) and the
#                           linux-source-6.1 version. Complete when .complete is there.
#   debian-kernel-<kkey>/   vmlinux, keyed by the kernel's inputs only, so that a
#                           change to the image alone does not relink the kernel.
#   debian-base-<bkey>.tar  mmdebstrap's output, keyed by the package list and
#                           the mmdebstrap options: a change to the overlay or the
#                           unit lists alone does not download anything.
#   src/linux-server-<version>-<patch hash>/  the patched kernel tree (incremental).
#   debian-<key>.log        the build log (make, mmdebstrap, mkfs).
# Builds are serialised with flock on <cache>/.lock-debian (build.sh's lock is
# left alone: the two scripts share no tree). Delete debian-base-*.tar to pick
# up newer Debian packages.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEB=$HERE/debian
CACHE_ROOT=${MINIVMM_GUEST_DIR:-$HOME/.cache/minivmm/guest}
LINUX_TARBALL=/usr/src/linux-source-6.1.tar.xz
SUITE=bookworm
MIRRORS=(
	"deb http://deb.debian.org/debian $SUITE main"
	"deb http://deb.debian.org/debian $SUITE-updates main"
	"deb http://deb.debian.org/debian-security $SUITE-security main"
)
# The whole disk; the root file system fills it but for the GPT's 1 MiB at the
# start and its backup header at the end.
DISK_MIB=2048
ROOT_LABEL=debian-root
# "Linux root (x86-64)" of the Discoverable Partitions Specification.
ROOT_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709

# Keep stdout for the final line only.
exec 3>&1 1>&2

say() { echo "guest/debian.sh: $*" >&2; }
die() {
	say "ERROR: $*"
	exit 1
}

[ "$(id -u)" = 0 ] ||
	die "run as root: the image's files must belong to root, and mmdebstrap runs in root mode"

# --- 1. tools and packages -------------------------------------------------------
need_pkgs=()
for pkg in linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev \
	xz-utils mmdebstrap fdisk e2fsprogs util-linux; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
	say "installing: ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
fi
for cmd in make gcc flex bison bc mmdebstrap sfdisk mkfs.ext4 e2fsck flock sha256sum patch python3; do
	command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found after installing its package"
done
[ -f "$LINUX_TARBALL" ] || die "$LINUX_TARBALL not found (package linux-source-6.1)"

# --- 2. cache keys -------------------------------------------------------------------
linux_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
patches=("$HERE"/patches/*.patch)
[ -e "${patches[0]}" ] || die "no patches in $HERE/patches"
patch_key=$(cat "${patches[@]}" | sha256sum | cut -c1-16)

# The package list without comments and blank lines, comma-separated.
packages=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$DEB/packages" | grep . | paste -sd, -)
[ -n "$packages" ] || die "$DEB/packages lists no package"
# mmdebstrap's options: part of the base tarball's key.
MMDEBSTRAP_OPTS=(
	--variant=minbase
	--include="$packages"
	--aptopt='Acquire::Languages "none"'
	# Documentation, manuals and translations: 60 MB nobody reads on a lab VM.
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-include=/usr/share/locale/locale.alias'
)
base_key=$({
	echo "suite $SUITE"
	printf '%s\n' "${MIRRORS[@]}" "${MMDEBSTRAP_OPTS[@]}"
} | sha256sum | cut -c1-16)
kernel_key=$({
	echo "linux-source-6.1 $linux_ver"
	for f in "$HERE/kernel-server.config" "${patches[@]}"; do
		echo "== ${f#"$HERE"/}"
		cat "$f"
	done
} | sha256sum | cut -c1-16)
key=$({
	echo "kernel $kernel_key base $base_key disk $DISK_MIB"
	for f in "$HERE/debian.sh" $(cd "$HERE" && find debian -type f -o -type l | LC_ALL=C sort); do
		f=${f#"$HERE"/}
		echo "== $f"
		if [ -L "$HERE/$f" ]; then readlink "$HERE/$f"; else
			stat -c %a "$HERE/$f"
			cat "$HERE/$f"
		fi
	done
} | sha256sum | cut -c1-16)
OUT=$CACHE_ROOT/debian-$key
KOUT=$CACHE_ROOT/debian-kernel-$kernel_key
BASE=$CACHE_ROOT/debian-base-$base_key.tar
LOG=$CACHE_ROOT/debian-$key.log

complete() {
	[ -f "$1/.complete" ] && [ -s "$1/vmlinux" ] && [ -s "$1/debian.img" ]
}

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock-debian"
flock 9

if complete "$OUT"; then
	say "cached: $OUT"
	echo "$OUT" >&3
	exit 0
fi

start=$(date +%s)
: >"$LOG"
say "building the Debian server guest $key (log: $LOG)"
TMP=$(mktemp -d "$CACHE_ROOT/.tmp-debian-$key-XXXXXX")
trap 'exit 130' INT TERM HUP
trap 'rc=$?; rm -rf "$TMP"; if [ $rc != 0 ]; then say "FAILED (exit $rc); log: $LOG"; tail -n 30 "$LOG" >&2 || true; fi' EXIT

run() { # run a command with its output going to the log
	echo "+ $*" >>"$LOG"
	"$@" >>"$LOG" 2>&1
}

# --- 3. the Debian base: mmdebstrap into a tarball (cached) ----------------------------
if [ -s "$BASE" ]; then
	say "base cached: $BASE"
else
	say "mmdebstrap $SUITE (downloads ~200 MB; takes minutes)"
	rm -f "$BASE.tmp"
	run mmdebstrap --mode=root --format=tar "${MMDEBSTRAP_OPTS[@]}" \
		"$SUITE" "$BASE.tmp" "${MIRRORS[@]}"
	mv "$BASE.tmp" "$BASE"
fi

# --- 4. kernel: tinyconfig + kernel-server.config, verified, built -------------------
verify_config() {
	local cfg=$1 frag=$2 bad=0 line opt want got
	while IFS= read -r line || [ -n "$line" ]; do
		case $line in
		CONFIG_*=*)
			opt=${line%%=*}
			want=${line#*=}
			got=$(grep -m1 "^$opt=" "$cfg" | cut -d= -f2- || true)
			if [ "$got" != "$want" ]; then
				say "config: $opt wanted '$want', got '${got:-not set}'"
				bad=1
			fi
			;;
		"# CONFIG_"*" is not set")
			opt=${line#"# "}
			opt=${opt%" is not set"}
			if got=$(grep -m1 "^$opt=" "$cfg"); then
				say "config: $opt wanted not set, got '${got#*=}'"
				bad=1
			fi
			;;
		esac
	done <"$frag"
	return $bad
}

if [ -f "$KOUT/.complete" ] && [ -s "$KOUT/vmlinux" ]; then
	say "kernel cached: $KOUT"
else
	TREE=$CACHE_ROOT/src/linux-server-$linux_ver-$patch_key
	if [ ! -f "$TREE/.minivmm-tree-ok" ]; then
		say "extracting $LINUX_TARBALL"
		rm -rf "$TREE" "$TREE.tmp"
		mkdir -p "$TREE.tmp"
		run tar -C "$TREE.tmp" --strip-components=1 -xf "$LINUX_TARBALL"
		for p in "${patches[@]}"; do
			say "applying ${p#"$HERE"/}"
			run patch -d "$TREE.tmp" -p1 --forward --no-backup-if-mismatch -i "$p" ||
				die "patch ${p#"$HERE"/} does not apply"
		done
		touch "$TREE.tmp/.minivmm-tree-ok"
		mv "$TREE.tmp" "$TREE"
	fi
	KMAKE=(make -C "$TREE" ARCH=x86_64 -j"$(nproc)")
	say "configuring the kernel (tinyconfig + kernel-server.config)"
	run "${KMAKE[@]}" tinyconfig
	run env -C "$TREE" ./scripts/kconfig/merge_config.sh -m .config "$HERE/kernel-server.config"
	run "${KMAKE[@]}" olddefconfig
	verify_config "$TREE/.config" "$HERE/kernel-server.config" ||
		die "kernel-server.config was not applied as written (see above): fix the fragment"
	say "config verified: every kernel-server.config line is in .config"
	say "building vmlinux (make -j$(nproc); takes minutes)"
	run "${KMAKE[@]}" vmlinux
	rm -rf "$KOUT.tmp"
	mkdir -p "$KOUT.tmp"
	cp "$TREE/vmlinux" "$TREE/System.map" "$KOUT.tmp/"
	cp "$TREE/.config" "$KOUT.tmp/config"
	touch "$KOUT.tmp/.complete"
	rm -rf "$KOUT"
	mv "$KOUT.tmp" "$KOUT"
fi
cp "$KOUT/vmlinux" "$KOUT/System.map" "$KOUT/config" "$TMP/"

# --- 5. the root tree: base + overlay + unit set ----------------------------------------
ROOT=$TMP/root
mkdir -p "$ROOT"
say "unpacking the base"
run tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE"
dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Package} ${Version}\n' >"$TMP/packages.txt"

say "applying debian/overlay and the unit lists"
# Files as they are in the tree (root:root, their modes), symlinks as symlinks.
cp -a --no-preserve=ownership "$DEB/overlay/." "$ROOT/"
# sudoers drop-ins: read-only, as visudo makes them (git keeps 0644), and checked.
chmod 0440 "$ROOT"/etc/sudoers.d/vminit
run chroot "$ROOT" /usr/sbin/visudo -c -f /etc/sudoers.d/vminit

# vminit (debian/vminit.c): the light PID 1, static like the test guest's mvtool.
# It is the image's /sbin/init; systemd-sysv's /sbin/init (a link to systemd) is
# diverted to /sbin/init.systemd, so that package upgrades keep it there, and
# init=/lib/systemd/systemd on the kernel command line boots systemd instead.
run gcc -O2 -static -Wall -Wextra -Werror -o "$ROOT/usr/local/sbin/vminit" "$DEB/vminit.c"
run dpkg-divert --root="$ROOT" --local --rename --divert /sbin/init.systemd --add /sbin/init
ln -sfn /usr/local/sbin/vminit "$ROOT/sbin/init"
# MariaDB's server without its AVX-512 CRC-32C, which vminit bind-mounts over
# /usr/sbin/mariadbd when the kernel does not save the AVX-512 registers (PVM hosts;
# debian/no-avx512.py says why). Another build of mariadbd may not match: the image
# is still made, and the build log says so.
if ! run python3 "$DEB/no-avx512.py" "$ROOT/usr/sbin/mariadbd" \
	"$ROOT/usr/local/lib/vminit/mariadbd-no-avx512"; then
	say "WARNING: no mariadbd without AVX-512 in this image (debian/no-avx512.py; see $LOG)"
fi

# Units no default boot of a lab VM needs: each line "unit" masks it (a link to
# /dev/null in /etc, so a package upgrade does not bring it back).
while read -r unit _; do
	case $unit in "" | "#"*) continue ;; esac
	ln -sfn /dev/null "$ROOT/etc/systemd/system/$unit"
done <"$DEB/masked-units"
# Generators are masked the same way (systemd.generator(7)).
mkdir -p "$ROOT/etc/systemd/system-generators"
while read -r gen _; do
	case $gen in "" | "#"*) continue ;; esac
	[ -e "$ROOT/usr/lib/systemd/system-generators/$gen" ] ||
		die "debian/masked-generators: no generator $gen in the image"
	ln -sfn /dev/null "$ROOT/etc/systemd/system-generators/$gen"
done <"$DEB/masked-generators"
# Units to enable or disable with their [Install] sections.
while read -r verb unit _; do
	case $verb in "" | "#"*) continue ;; esac
	case $verb in
	# The image's own systemctl (offline in a chroot: it only edits links).
	enable | disable) run chroot "$ROOT" /usr/bin/systemctl "$verb" "$unit" ;;
	*) die "debian/units: unknown verb '$verb'" ;;
	esac
done <"$DEB/units"

# No getty on tty1 (there are no virtual terminals): the serial console's getty
# is enabled explicitly, since systemd-getty-generator (which would add it from
# console=ttyS0) is masked.
rm -f "$ROOT/etc/systemd/system/getty.target.wants/getty@tty1.service"
ln -sfn /usr/lib/systemd/system/serial-getty@.service \
	"$ROOT/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"

# First boot: an empty machine-id (systemd makes one per VM, like a cloud image),
# no SSH host keys (ssh-hostkeys.service or cloud-init make them per VM).
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -sfn /etc/machine-id "$ROOT/var/lib/dbus/machine-id"
rm -f "$ROOT"/etc/ssh/ssh_host_*
# Nothing left of the build: apt's lists and caches, logs.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
# /etc and /var are as new as /usr: ConditionNeedsUpdate= units (ldconfig,
# systemd-sysusers, hwdb and journal catalog updates, update-done) have nothing
# to do on the first boot, whose image was made by the same packages.
touch -r "$ROOT/usr" "$ROOT/etc/.updated" "$ROOT/var/.updated"
# The root file system by label (the kernel mounts it from root= on the command
# line; this entry only gives systemd its mount options). No fsck at boot: the
# kernel mounts / read-write, and a check would run at emulator speed on PVM hosts.
cat >"$ROOT/etc/fstab" <<EOF
# <file system>      <mount point> <type> <options>         <dump> <pass>
LABEL=$ROOT_LABEL    /             ext4   defaults,noatime  0      0
EOF
# vminit mounts a NoCloud seed disk here (see /etc/vminit/boot).
mkdir -p "$ROOT/var/lib/cloud/seed/nocloud"
# Logins on the serial console: login(1) gives up after LOGIN_TIMEOUT seconds, and
# its PAM stack alone can take a minute on a busy PVM host.
sed -i 's/^LOGIN_TIMEOUT.*/LOGIN_TIMEOUT\t\t600/' "$ROOT/etc/login.defs"
# No dynamic MOTD: for every SSH or console login, pam_motd's first line runs
# `sh -c "env -i ... run-parts /etc/update-motd.d > /run/motd.dynamic.new"` (three
# programs, and run-parts runs 10-uname, which runs uname): seconds of emulated
# kernel work per login on PVM hosts, for a line with the kernel's version. The
# static /etc/motd (the second pam_motd line, `noupdate`) is still shown.
for f in sshd login; do
	grep -q '^session.*pam_motd\.so.*motd=/run/motd\.dynamic' "$ROOT/etc/pam.d/$f" ||
		die "/etc/pam.d/$f has no dynamic pam_motd line to remove (a new libpam?)"
	sed -i '/^session.*pam_motd\.so.*motd=\/run\/motd\.dynamic/d' "$ROOT/etc/pam.d/$f"
	grep -q '^session.*pam_motd\.so.*noupdate' "$ROOT/etc/pam.d/$f" ||
		die "/etc/pam.d/$f lost its static pam_motd line"
done
rm -f "$ROOT/etc/update-motd.d/10-uname"
# The image's Python byte code in one file, from which cloud-init-stages imports
# cloud-init with one system call per module instead of ~9 (debian/pybundle.py).
run python3 "$DEB/pybundle.py" "$ROOT" "$ROOT/usr/local/lib/vminit/pycode.bundle"
# Without a seed there is no account to log in with: root may log in on the
# serial console without a password (as Debian's "nocloud" images), never over
# SSH (sshd refuses empty passwords and root's password logins).
sed -i "s/^root:[^:]*:/root::/" "$ROOT/etc/shadow"

# --- 6. the disk: GPT, root ext4 on partition 1 -----------------------------------------
say "making debian.img (${DISK_MIB} MiB, sparse)"
IMG=$TMP/debian.img
truncate -s "${DISK_MIB}M" "$IMG"
# Partition 1 from 1 MiB to the last MiB boundary before the backup GPT.
echo "label: gpt
first-lba: 2048
start=2048, size=$(((DISK_MIB - 2) * 2048)), type=$ROOT_TYPE, name=root" |
	run sfdisk --no-reread --no-tell-kernel "$IMG"
ROOT_MIB=$((DISK_MIB - 2))
# mkfs.ext4 writes into the partition of the same file (offset=), so nothing is
# copied. No metadata checksums (the guest computes them in software: slow on PVM
# hosts), inode tables and journal initialised now rather than by the guest.
run mkfs.ext4 -q -F -t ext4 -b 4096 -I 256 -L "$ROOT_LABEL" \
	-O ^metadata_csum -E lazy_itable_init=0,lazy_journal_init=0,nodiscard,offset=1048576 \
	-d "$ROOT" "$IMG" "$((ROOT_MIB * 256))"
run e2fsck -fn "$IMG?offset=1048576" || die "e2fsck found errors in the new root file system"
run sfdisk --verify "$IMG" || die "the partition table did not survive mkfs.ext4"
[ "$(stat -c %s "$IMG")" = $((DISK_MIB * 1048576)) ] || die "debian.img has the wrong size"

# --- 7. publish atomically -------------------------------------------------------------
rm -rf "$ROOT"
touch "$TMP/.complete"
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
end=$(date +%s)
say "cold build took $((end - start)) s; outputs in $OUT"
ls -ls "$OUT" >&2
echo "$OUT" >&3
