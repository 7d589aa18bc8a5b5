#!/usr/bin/env bash
# Builds the minivmm test guest: a minimal Linux 6.1 kernel (vmlinux and
# bzImage), a busybox initramfs (initramfs.cpio) and a busybox ext4 root
# file system (rootfs.ext4). See README.md next to this script.
#
# Usage: resources/guest/build.sh
# Output: the LAST line on stdout is the absolute path of the directory that
# holds vmlinux, bzImage, initramfs.cpio and rootfs.ext4 (plus config and
# System.map). Everything else goes to stderr or to the build log.
#
# Outputs are cached in ${MINIVMM_GUEST_DIR:-$HOME/.cache/minivmm/guest}/<key>/
# where <key> hashes every input (kernel.config, patches, init, this script,
# the linux-source-6.1 and busybox-static package versions). A complete cache
# directory is reused as is. The patched kernel tree is kept in the cache too,
# so a change to kernel.config alone rebuilds incrementally.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${MINIVMM_GUEST_DIR:-$HOME/.cache/minivmm/guest}
LINUX_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX=/bin/busybox
ROOTFS_MIB=32

# Keep stdout for the final line only.
exec 3>&1 1>&2

say() { echo "guest/build.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# --- 1. tools and packages -------------------------------------------------------
need_pkgs=()
for pkg in linux-source-6.1 busybox-static build-essential flex bison bc \
	libelf-dev libssl-dev cpio e2fsprogs xz-utils kmod lz4; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
for cmd in make gcc flex bison bc xz lz4 mkfs.ext4 flock sha256sum patch; do
	command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$cmd-missing")
done
if ((${#need_pkgs[@]})); then
	# A command missing although its package looks installed: reinstall the lot.
	pkgs=()
	for p in "${need_pkgs[@]}"; do
		case $p in
		*-missing) ;;
		*) pkgs+=("$p") ;;
		esac
	done
	((${#pkgs[@]})) || pkgs=(build-essential flex bison bc xz-utils lz4 e2fsprogs util-linux patch)
	say "installing: ${pkgs[*]}"
	SUDO=
	[ "$(id -u)" = 0 ] || SUDO=sudo
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q >&2
	$SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
fi
[ -f "$LINUX_TARBALL" ] || die "$LINUX_TARBALL not found (package linux-source-6.1)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (package busybox-static)"

# --- 2. cache key ------------------------------------------------------------------
linux_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
busybox_ver=$(dpkg-query -W -f='${Version}' busybox-static)
patches=("$HERE"/patches/*.patch)
[ -e "${patches[0]}" ] || die "no patches in $HERE/patches"
# The hash of the patches alone names the kernel source tree; the full key
# names the outputs.
patch_key=$(cat "${patches[@]}" | sha256sum | cut -c1-16)
key=$({
	echo "linux-source-6.1 $linux_ver"
	echo "busybox-static $busybox_ver"
	for f in "$HERE/build.sh" "$HERE/kernel.config" "$HERE/kernel-acpi-only.config" \
		"$HERE/init" "$HERE/mvtool.c" "${patches[@]}"; do
		echo "== ${f#"$HERE"/}"
		cat "$f"
	done
} | sha256sum | cut -c1-16)
OUT=$CACHE_ROOT/$key
LOG=$CACHE_ROOT/build-$key.log
OUTPUTS=(vmlinux bzImage vmlinux-acpi-only initramfs.cpio rootfs.ext4)

complete() {
	[ -f "$1/.complete" ] || return 1
	local f
	for f in "${OUTPUTS[@]}"; do [ -s "$1/$f" ] || return 1; done
}

mkdir -p "$CACHE_ROOT"
# One build at a time per cache (they would share the kernel tree).
exec 9>"$CACHE_ROOT/.lock"
flock 9

if complete "$OUT"; then
	say "cached: $OUT"
	echo "$OUT" >&3
	exit 0
fi

start=$(date +%s)
: >"$LOG"
say "building guest $key (log: $LOG)"
TMP=$(mktemp -d "$CACHE_ROOT/.tmp-$key-XXXXXX")
trap 'exit 130' INT TERM HUP
trap 'rc=$?; rm -rf "$TMP"; if [ $rc != 0 ]; then say "FAILED (exit $rc); log: $LOG"; tail -n 30 "$LOG" >&2 || true; fi' EXIT

run() { # run a command with its output going to the log
	echo "+ $*" >>"$LOG"
	"$@" >>"$LOG" 2>&1
}

# --- 3. kernel source tree (extracted + patched once per patch set) ------------------
TREE=$CACHE_ROOT/src/linux-$linux_ver-$patch_key
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

# --- 4. kernel config: tinyconfig + fragment, then verify every line ------------------
KMAKE=(make -C "$TREE" ARCH=x86_64 -j"$(nproc)")
say "configuring (tinyconfig + kernel.config)"
run "${KMAKE[@]}" tinyconfig
run env -C "$TREE" ./scripts/kconfig/merge_config.sh -m .config "$HERE/kernel.config"
run "${KMAKE[@]}" olddefconfig

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
verify_config "$TREE/.config" "$HERE/kernel.config" ||
	die "kernel.config was not applied as written (see above): fix the fragment"
say "config verified: every kernel.config line is in .config"

# --- 5. kernel build ---------------------------------------------------------------
say "building vmlinux and bzImage (make -j$(nproc); takes minutes)"
run "${KMAKE[@]}" vmlinux bzImage
cp "$TREE/vmlinux" "$TMP/vmlinux"
cp "$TREE/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$TREE/.config" "$TMP/config"
cp "$TREE/System.map" "$TMP/System.map"

# --- 5b. the ACPI-only variant: the same tree with one option less -------------------
# Only virtio_mmio.c and the link are redone. The next build starts again from
# tinyconfig, so the tree's .config being the variant's does not matter.
say "building vmlinux-acpi-only (kernel.config + kernel-acpi-only.config)"
run env -C "$TREE" ./scripts/kconfig/merge_config.sh -m .config "$HERE/kernel-acpi-only.config"
run "${KMAKE[@]}" olddefconfig
verify_config "$TREE/.config" "$HERE/kernel-acpi-only.config" ||
	die "kernel-acpi-only.config was not applied as written (see above)"
run "${KMAKE[@]}" vmlinux
cp "$TREE/vmlinux" "$TMP/vmlinux-acpi-only"

# --- 6. user space: busybox tree for the initramfs and the ext4 root ---------------
ROOT=$TMP/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,mnt}
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
install -m 0755 "$HERE/init" "$ROOT/init"
# One symlink per applet, at the path busybox itself lists (bin/sh, sbin/...).
"$BUSYBOX" --list-full | while IFS= read -r applet; do
	case $applet in
	bin/busybox | sbin/init | "") continue ;;
	esac
	mkdir -p "$ROOT/$(dirname "$applet")"
	# Relative link to /bin/busybox.
	up=$(dirname "$applet" | sed 's#[^/]*#..#g')
	ln -sf "$up/bin/busybox" "$ROOT/$applet"
done
ln -sf ../init "$ROOT/sbin/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
echo "minivmm-guest" >"$ROOT/etc/hostname"
# A FIFO nobody writes to: `read -t SECS x <> /etc/wait.fifo` sleeps SECS seconds in
# a shell builtin, without starting a process (see settle() in init).
mkfifo -m 0666 "$ROOT/etc/wait.fifo"
# /init mounts these with one `mount -a` (devtmpfs is already there with a disk root).
cat >"$ROOT/etc/fstab" <<'FSTAB'
proc     /proc proc     defaults 0 0
sysfs    /sys  sysfs    defaults 0 0
devtmpfs /dev  devtmpfs defaults 0 0
tmpfs    /tmp  tmpfs    defaults 0 0
FSTAB
# The ACPI power button: busybox acpid maps the button's KEY_POWER event to
# "PWRF" and runs /etc/acpi/PWRF/00000080 (its built-in action table).
mkdir -p "$ROOT/etc/acpi/PWRF"
cat >"$ROOT/etc/acpi/PWRF/00000080" <<'ACTION'
#!/bin/sh
echo "minivmm-guest: power button pressed: powering off" >/dev/console
sync
mount -o remount,ro / 2>/dev/null
poweroff -f
ACTION
chmod 0755 "$ROOT/etc/acpi/PWRF/00000080"

# initramfs.cpio: uncompressed newc, made with the kernel's own gen_init_cpio
# (needs no root to create /dev/console).
say "building initramfs.cpio"
LIST=$TMP/initramfs.list
{
	(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort) | while IFS= read -r p; do
		p=${p#./}
		if [ -L "$ROOT/$p" ]; then
			echo "slink /$p $(readlink "$ROOT/$p") 0777 0 0"
		elif [ -p "$ROOT/$p" ]; then
			echo "pipe /$p $(stat -c %a "$ROOT/$p") 0 0"
		elif [ -d "$ROOT/$p" ]; then
			echo "dir /$p $(stat -c %a "$ROOT/$p") 0 0"
		else
			echo "file /$p $ROOT/$p $(stat -c %a "$ROOT/$p") 0 0"
		fi
	done
	echo "nod /dev/console 0600 0 0 c 5 1"
} >"$LIST"
"$TREE/usr/gen_init_cpio" -t 0 "$LIST" >"$TMP/initramfs.cpio.tmp" 2>>"$LOG"
mv "$TMP/initramfs.cpio.tmp" "$TMP/initramfs.cpio"

# mvtool (mvtool.c): the tests' data tool, static. Only in rootfs.ext4: every file
# in the initramfs costs unpacking time under emulation, and the tests that use
# it boot from the disk.
say "building mvtool"
run gcc -O2 -static -pthread -Wall -Wextra -Werror -o "$ROOT/bin/mvtool" "$HERE/mvtool.c"

# rootfs.ext4: same tree, built without mounting (mkfs.ext4 -d). /dev is
# filled by devtmpfs (CONFIG_DEVTMPFS_MOUNT). No metadata checksums: the guest
# kernel computes them in software, which is slow under emulation on PVM hosts.
# Inode tables and the journal are initialised now, not lazily in the guest.
say "building rootfs.ext4 (${ROOTFS_MIB} MiB)"
run mkfs.ext4 -q -F -t ext4 -b 4096 -I 256 -L minivmm-root \
	-O ^metadata_csum -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
	-d "$ROOT" "$TMP/rootfs.ext4" "${ROOTFS_MIB}M"
run e2fsck -fn "$TMP/rootfs.ext4"

# --- 7. publish atomically -------------------------------------------------------------
rm -rf "$ROOT" "$LIST"
touch "$TMP/.complete"
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
end=$(date +%s)
say "cold build took $((end - start)) s; outputs in $OUT"
ls -l "$OUT" >&2
echo "$OUT" >&3
