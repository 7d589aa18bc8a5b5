#!/usr/bin/env bash
# virtio-blk benchmark: minivmm against QEMU (microvm machine), same guest kernel,
# same images, measured inside the guest. Not a test: it prints a markdown table.
#
# Usage: resources/bench/blk.sh [ROUNDS]        (default 3)
# Env:   MINIVMM=path/to/minivmm   (default: target/release/minivmm)
#        GUEST=dir with vmlinux and rootfs.ext4 (default: resources/guest/build.sh | tail -1)
#        SEQ_MIB=32 RAND_SECS=5     (sizes of the runs)
#        BENCH_JSON=FILE            also write the results as JSON (the shared shape of
#                                   resources/bench/benchjson.py, read by run-all.py)
#
# Each round boots minivmm, then QEMU (alternating, so a change of host load hits both),
# each on fresh copies of the same two images: the root file system (rootfs.ext4 plus
# blkbench, a static user-space program from blkbench.c) and a 64 MiB raw data disk of
# host random bytes (/dev/vdb). In the guest, blkbench does, as one process with O_DIRECT
# and a user-space buffer (no guest kernel copy):
#   sequential read and write of SEQ_MIB MiB in 1 MiB requests (write ends with fdatasync),
#   4 KiB random reads at 4 KiB-aligned offsets for RAND_SECS seconds (queue depth 1).
# Times come from the guest's CLOCK_MONOTONIC. Both VMMs use the host page cache
# (minivmm opens images without O_DIRECT; QEMU gets cache=writeback, its default).
set -euo pipefail

ROUNDS=${1:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MINIVMM=${MINIVMM:-$ROOT/target/release/minivmm}
SEQ_MIB=${SEQ_MIB:-32}
RAND_SECS=${RAND_SECS:-5}
VM_TIMEOUT=${VM_TIMEOUT:-600}
[ -x "$MINIVMM" ] || { echo "blk.sh: $MINIVMM not found (cargo build --release -p minivmm)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "blk.sh: qemu-system-x86_64 not found (apt-get install qemu-system-x86)" >&2; exit 1; }
command -v debugfs >/dev/null || { echo "blk.sh: debugfs not found (e2fsprogs)" >&2; exit 1; }
GUEST=${GUEST:-$(bash "$ROOT/resources/guest/build.sh" | tail -1)}

WORK=$(mktemp -d /tmp/minivmm-blkbench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
gcc -O2 -static -Wall -o "$WORK/blkbench" "$HERE/blkbench.c"
cp "$GUEST/rootfs.ext4" "$WORK/root.tmpl"
debugfs -w -R "write $WORK/blkbench /bin/blkbench" "$WORK/root.tmpl" >/dev/null 2>&1
debugfs -w -R "sif /bin/blkbench mode 0100755" "$WORK/root.tmpl" >/dev/null 2>&1
head -c 64M /dev/urandom >"$WORK/data.tmpl"

RUN="blkbench /dev/vdb seqread $SEQ_MIB; blkbench /dev/vdb seqwrite $SEQ_MIB; blkbench /dev/vdb randread $RAND_SECS"
# minivmm adds console=ttyS0 reboot=k panic=1, the PVM clearcpuid= list (on a PVM host),
# its virtio_mmio.device= entries and root=/dev/vda rw.
MINIVMM_CMD=("$MINIVMM" --kernel "$GUEST/vmlinux" --disk "$WORK/root.img" --disk "$WORK/data.img"
	--cmdline "minivmm_run=\"$RUN\"")
# QEMU: the same command line, except reboot=t (microvm has no i8042; with -no-reboot the
# triple fault ends QEMU). acpi=off makes microvm put virtio_mmio.device= entries on the
# command line (this kernel has no ACPI). -cpu qemu64,-cx16 plus clearcpuid= keeps the
# guest off instructions the PVM emulator cannot run (see shared notes on the KVM host);
# +xsaveerptr (the host has it, minivmm passes it on) keeps Linux off its AMD FXSAVE-leak
# workaround (fnclex on every FPU restore, which the emulator cannot run).
# The list from boot.py (one copy for all benchmark scripts, checked against minivmm's
# template by tests/guest_scripts.rs).
CLEAR=$(cd "$HERE" && python3 -B -c 'from boot import PVM_CMDLINE; print(PVM_CMDLINE)')
QEMU_CMD=(qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu qemu64,-cx16,+xsaveerptr -m 256M -smp 1
	-nodefaults -no-user-config -nographic -serial stdio -no-reboot
	-kernel "$GUEST/vmlinux"
	-append "console=ttyS0 reboot=t panic=1 $CLEAR root=/dev/vda rw minivmm_run=\"$RUN\""
	-drive "id=root,file=$WORK/root.img,format=raw,if=none,cache=writeback,aio=threads"
	-device virtio-blk-device,drive=root
	-drive "id=data,file=$WORK/data.img,format=raw,if=none,cache=writeback,aio=threads"
	-device virtio-blk-device,drive=data)

declare -A R # R[vmm,metric] = space-separated values
run_one() { # vmm round
	local vmm=$1 out="$WORK/$1-$2.log"
	cp "$WORK/root.tmpl" "$WORK/root.img"
	cp "$WORK/data.tmpl" "$WORK/data.img"
	local -a cmd
	if [ "$vmm" = minivmm ]; then cmd=("${MINIVMM_CMD[@]}"); else cmd=("${QEMU_CMD[@]}"); fi
	local t0=$SECONDS
	if [ "$vmm" = minivmm ]; then
		timeout "$VM_TIMEOUT" "${cmd[@]}" </dev/null >"$out" 2>&1 || true
	else
		# The guest's reboot does not end QEMU on this host (it hung after "reboot: machine
		# restart" with reboot=t and -no-reboot), so stop it once the command has finished.
		"${cmd[@]}" </dev/null >"$out" 2>&1 &
		local pid=$!
		while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < VM_TIMEOUT)); do
			grep -qs 'minivmm-guest: command exited' "$out" && break
			grep -qs 'KVM internal error' "$out" && break # QEMU stops the VM and waits
			sleep 1
		done
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	local n
	n=$(grep -c '^blkbench ' "$out" || true)
	if [ "$n" != 3 ]; then
		echo "blk.sh: $vmm round $2: expected 3 blkbench lines, got $n; log:" >&2
		tail -30 "$out" >&2
		exit 1
	fi
	R[$vmm,seqread]+="$(sed -n 's/^blkbench seqread .*MiB\/s=\([0-9.]*\).*/\1/p' "$out") "
	R[$vmm,seqwrite]+="$(sed -n 's/^blkbench seqwrite .*MiB\/s=\([0-9.]*\).*/\1/p' "$out") "
	R[$vmm,randread]+="$(sed -n 's/^blkbench randread .*IOPS=\([0-9.]*\).*/\1/p' "$out") "
	echo "blk.sh: $vmm round $2 done in $((SECONDS - t0)) s: $(grep '^blkbench ' "$out" | tr '\n' ' ')" >&2
}

for ((i = 1; i <= ROUNDS; i++)); do
	run_one minivmm "$i"
	run_one qemu "$i"
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

echo "| metric | minivmm (median) | QEMU microvm (median) | minivmm/QEMU | minivmm runs | QEMU runs |"
echo "|---|---|---|---|---|---|"
for m in seqread seqwrite randread; do
	case $m in
	seqread) label="sequential read, 1 MiB, O_DIRECT (MiB/s)" ;;
	seqwrite) label="sequential write, 1 MiB, O_DIRECT + fdatasync (MiB/s)" ;;
	randread) label="random read, 4 KiB, QD1, O_DIRECT (IOPS)" ;;
	esac
	a=$(echo "${R[minivmm,$m]}" | median)
	b=$(echo "${R[qemu,$m]}" | median)
	ratio=$(awk -v a="$a" -v b="$b" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "n/a" }')
	echo "| $label | $a | $b | $ratio | ${R[minivmm,$m]% } | ${R[qemu,$m]% } |"
done
echo
echo "rounds: $ROUNDS (alternating, minivmm first); SEQ_MIB=$SEQ_MIB RAND_SECS=$RAND_SECS"
echo "guest command: $RUN"
printf 'minivmm:'; printf ' %q' "${MINIVMM_CMD[@]}"; echo
printf 'qemu:'; printf ' %q' "${QEMU_CMD[@]}"; echo

if [ -n "${BENCH_JSON:-}" ]; then
	: >"$WORK/results"
	for m in seqread seqwrite randread; do
		for vmm in minivmm qemu; do
			for v in ${R[$vmm,$m]}; do echo "$vmm $m $v" >>"$WORK/results"; done
		done
	done
	repro="resources/bench/blk.sh $ROUNDS"
	[ "$SEQ_MIB" = 32 ] || repro="SEQ_MIB=$SEQ_MIB $repro"
	[ "$RAND_SECS" = 5 ] || repro="RAND_SECS=$RAND_SECS $repro"
	python3 "$HERE/benchjson.py" --out "$BENCH_JSON" --bench blk --title virtio-blk \
		--command "$repro" --results "$WORK/results" --notes-file - \
		--metric seqread MiB/s higher "sequential read, 1 MiB, O_DIRECT" \
		--metric seqwrite MiB/s higher "sequential write, 1 MiB, O_DIRECT + fdatasync" \
		--metric randread IOPS higher "random read, 4 KiB, QD1, O_DIRECT" <<NOTES
Each round boots minivmm, then QEMU, each on fresh copies of the same two images: the
guest's \`rootfs.ext4\` with \`blkbench\` added (\`resources/bench/blkbench.c\`, a static
user-space program written into the image with \`debugfs\`) and a 64 MiB raw data disk of
host random bytes (\`/dev/vdb\`); $ROUNDS round(s). In the guest, \`blkbench\` is one process
that moves data with \`O_DIRECT\` to/from its own buffer, so the guest kernel copies no
data (a kernel copy runs at emulator speed on PVM and would be what gets measured); it
times itself with \`CLOCK_MONOTONIC\`. Metrics: sequential read and write of $SEQ_MIB MiB in
1 MiB requests (the write ends with \`fdatasync\`), and 4 KiB random reads at queue depth 1
for $RAND_SECS s. Both VMMs go through the host page cache (QEMU \`cache=writeback\`).

QEMU: \`-M microvm,acpi=off -cpu qemu64,-cx16,+xsaveerptr\` (with ACPI on, microvm describes its
virtio-mmio devices only in ACPI tables, which this kernel lacks; with it off QEMU appends
\`virtio_mmio.device=\` entries to the command line), the same \`clearcpuid=\` list minivmm adds on
PVM, \`reboot=t -no-reboot\`, drives \`cache=writeback,aio=threads\`. The guest's reboot does
not end QEMU here, so the script stops QEMU once the guest command is done.

What is measured is mostly the guest kernel's block and virtio path (system call, bio,
virtqueue, interrupt), the same code for both VMMs; on a PVM host it runs in the
instruction emulator and dwarfs the host side (a \`pread\`/\`pwrite\` on a page-cached file).
Not measured: queue depth > 1, multiple queues, \`cache=none\` on the host.
NOTES
	echo "blk.sh: wrote $BENCH_JSON" >&2
fi
