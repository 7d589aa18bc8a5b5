#!/usr/bin/env bash
# virtio-net throughput: minivmm against QEMU microvm (user-space virtio-net in both:
# vhost=off for QEMU), same kernel, initramfs and command line, TCP through a Linux bridge
# inside a network namespace this script creates and removes (no traffic leaves it).
#
# Usage: resources/bench/net.sh [ROUNDS] [MIB]     (defaults: 2 rounds, 4 MiB per transfer)
#
# Each round boots, for each VMM in turn (the order alternates between rounds), two VMs
# on one bridge (host 10.99.0.1, VM A 10.99.0.2, VM B 10.99.0.3) and measures, one after
# the other: guest->host (A sends, the host receives), host->guest (the host sends, A
# receives) and VM->VM (A sends, B receives). The tool is resources/bench/netbench.c,
# compiled static and appended to the test guest's initramfs (cpio concatenation); it
# moves 64 KiB per system call and times from connect/accept to the end. Numbers are the
# receiver's (MB/s = 10^6 bytes/s). Prints one line per measurement and a markdown table
# of medians at the end. Needs root, gcc, cpio, iproute2, qemu-system-x86.
# Env: BENCH_JSON=FILE also writes the results as JSON (the shared shape of
# resources/bench/benchjson.py, read by resources/bench/run-all.py); MINIVMM, VM_TIMEOUT.
set -euo pipefail

ROUNDS=${1:-2}
MIB=${2:-4}
BYTES=$((MIB * 1024 * 1024))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The clearcpuid= list minivmm's PVM template adds (arch/src/cpuid.rs), from boot.py: one
# copy for all benchmark scripts, checked against the template by tests/guest_scripts.rs.
PVM_CMDLINE=$(cd "$ROOT/resources/bench" && python3 -B -c 'from boot import PVM_CMDLINE; print(PVM_CMDLINE)')
# QEMU's minimal CPU model without CX16 (the guest's SLUB would use cmpxchg16b, which the
# PVM emulator cannot run), with XSAVEERPTR (else Linux runs its AMD FXSAVE-leak
# workaround, fnclex, which the emulator cannot run either), as resources/bench/boot.py uses.
PVM_QEMU_CPU="qemu64,-cx16,+x2apic,+xsaveerptr"
VM_TIMEOUT=${VM_TIMEOUT:-900}

command -v qemu-system-x86_64 >/dev/null || apt-get install -y -q qemu-system-x86 >&2
GUEST=$(bash "$ROOT/resources/guest/build.sh" | tail -1)
cargo build -q --release -p minivmm --manifest-path "$ROOT/Cargo.toml"
MINIVMM=${MINIVMM:-$ROOT/target/release/minivmm}
PVM=0
[ -e /sys/module/kvm_pvm ] && PVM=1

W=$(mktemp -d /tmp/minivmm-netbench-XXXXXX)
NS=mvmbench-$$
cleanup() {
	ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/root/bin"
gcc -O2 -static -o "$W/root/bin/netbench" "$ROOT/resources/bench/netbench.c"
(cd "$W/root" && echo bin/netbench | cpio -o -H newc --quiet) >"$W/extra.cpio"
cat "$GUEST/initramfs.cpio" "$W/extra.cpio" >"$W/initramfs.cpio"
NB="$W/root/bin/netbench"

ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" "$MINIVMM" network create br0 --cidr 10.99.0.1/24

UP='ip link set eth0 up; ip addr add $IP/24 dev eth0'
CMD_A="IP=10.99.0.2; $UP; netbench send 10.99.0.1 5201 $BYTES; netbench recv 5202; netbench send 10.99.0.3 5203 $BYTES"
CMD_B="IP=10.99.0.3; $UP; netbench recv 5203"
base="console=ttyS0 reboot=k panic=1"
extra=""
[ $PVM = 1 ] && extra=$PVM_CMDLINE

# start_vm VMM NAME IP_LAST_BYTE CMD LOG: starts it in the background ($! is its pid)
start_vm() {
	local vmm=$1 name=$2 n=$3 cmd=$4 log=$5
	case $vmm in
	minivmm)
		ip netns exec "$NS" timeout "$VM_TIMEOUT" "$MINIVMM" --kernel "$GUEST/vmlinux" \
			--initrd "$W/initramfs.cpio" --memory 256M --name "$name" \
			--net "bridge=br0,mac=02:00:0a:63:00:0$n" \
			--cmdline "minivmm_run=\"$cmd\"" </dev/null >"$log" 2>&1 &
		;;
	qemu)
		ip -n "$NS" tuntap add "qtap$n" mode tap
		ip -n "$NS" link set "qtap$n" master br0 up
		ip netns exec "$NS" timeout "$VM_TIMEOUT" qemu-system-x86_64 \
			-M microvm,acpi=on,x-option-roms=off,rtc=off -accel kvm \
			-cpu "$([ $PVM = 1 ] && echo "$PVM_QEMU_CPU" || echo host)" -m 256M \
			-nodefaults -no-user-config -nographic -serial stdio -no-reboot \
			-kernel "$GUEST/vmlinux" -initrd "$W/initramfs.cpio" \
			-append "$base $extra minivmm_run=\"$cmd\"" \
			-netdev "tap,id=n0,ifname=qtap$n,script=no,downscript=no,vhost=off" \
			-device "virtio-net-device,netdev=n0,mac=02:00:0a:63:00:0$n" \
			</dev/null >"$log" 2>&1 &
		;;
	esac
}

mbps() { sed -n 's/.*netbench recv bytes=\([0-9]*\) .*mbps=\([0-9.]*\).*/\1 \2/p' "$1" | tail -1; }

: >"$W/results"
run_round() { # VMM ROUND
	local vmm=$1 r=$2 pa pb g2h h2g v2v
	start_vm "$vmm" "bench-b" 3 "$CMD_B" "$W/$vmm-$r-b.log"
	pb=$!
	start_vm "$vmm" "bench-a" 2 "$CMD_A" "$W/$vmm-$r-a.log"
	pa=$!
	g2h=$(ip netns exec "$NS" timeout "$VM_TIMEOUT" "$NB" recv 5201 |
		sed -n 's/.*bytes=\([0-9]*\) .*mbps=\([0-9.]*\).*/\1 \2/p')
	ip netns exec "$NS" timeout 300 "$NB" send 10.99.0.2 5202 "$BYTES" >/dev/null
	# The guests' work is done once both print init's "command exited" line. minivmm then
	# ends by itself (the i8042 reset); QEMU microvm has no i8042, so reboot=k does not end
	# it (it would with -no-reboot and a reset it implements): stop what still runs.
	local t=0
	until grep -q "minivmm-guest: command exited" "$W/$vmm-$r-a.log" &&
		grep -q "minivmm-guest: command exited" "$W/$vmm-$r-b.log"; do
		t=$((t + 1))
		[ $t -gt "$VM_TIMEOUT" ] && break
		sleep 1
	done
	sleep 5
	kill "$pa" "$pb" 2>/dev/null || true
	wait "$pa" "$pb" || true
	h2g=$(mbps "$W/$vmm-$r-a.log")
	v2v=$(mbps "$W/$vmm-$r-b.log")
	[ "$vmm" = qemu ] && ip -n "$NS" link del qtap2 && ip -n "$NS" link del qtap3
	for kv in "g2h $g2h" "h2g $h2g" "v2v $v2v"; do
		set -- $kv
		if [ "${2:-}" != "$BYTES" ]; then
			echo "round $r $vmm $1: FAILED (logs: $W/$vmm-$r-*.log)" >&2
			tail -5 "$W/$vmm-$r-a.log" "$W/$vmm-$r-b.log" >&2
			trap - EXIT # keep the logs
			exit 1
		fi
		echo "$vmm $1 $3" >>"$W/results"
		echo "round $r: $vmm $1 $3 MB/s"
	done
}

for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then order="minivmm qemu"; else order="qemu minivmm"; fi
	for vmm in $order; do run_round "$vmm" "$r"; done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "TCP, $MIB MiB per transfer, $ROUNDS rounds, medians in MB/s (receiver's clock); PVM host: $PVM"
echo
echo "| direction | minivmm | QEMU microvm | minivmm / QEMU |"
echo "|---|---|---|---|"
for d in g2h:"guest -> host" h2g:"host -> guest" v2v:"VM -> VM"; do
	k=${d%%:*}
	m=$(awk -v k="$k" '$1=="minivmm" && $2==k {print $3}' "$W/results" | median)
	q=$(awk -v k="$k" '$1=="qemu" && $2==k {print $3}' "$W/results" | median)
	echo "| ${d#*:} | $m | $q | $(awk -v m="$m" -v q="$q" 'BEGIN {printf "%.2f", m/q}') |"
done

if [ -n "${BENCH_JSON:-}" ]; then
	python3 "$ROOT/resources/bench/benchjson.py" --out "$BENCH_JSON" --bench net --title virtio-net \
		--command "resources/bench/net.sh $ROUNDS $MIB" --results "$W/results" --notes-file - \
		--metric g2h MB/s higher "guest → host, TCP" \
		--metric h2g MB/s higher "host → guest, TCP" \
		--metric v2v MB/s higher "VM → VM, TCP" <<NOTES
Everything runs inside a network namespace the script creates and removes: a bridge made
by \`minivmm network create br0 --cidr 10.99.0.1/24\` (the host end), and per round and VMM
two VMs on it, A (10.99.0.2) and B (10.99.0.3); $ROUNDS round(s), the order of the VMMs
alternating between rounds. Measured one after the other in each round: guest -> host (A
sends, a host process in the namespace receives), host -> guest (the host sends, A
receives), VM -> VM (A sends, B receives), TCP, $MIB MiB each. The tool is
\`resources/bench/netbench.c\`, compiled with \`gcc -static\` and appended to the guest's
\`initramfs.cpio\`; it moves 64 KiB per system call and times from connect/accept to EOF
with \`CLOCK_MONOTONIC\`. The numbers are the receiver's (MB/s = 10^6 bytes/s).

minivmm: \`--net bridge=br0,mac=...\`, \`--memory 256M\`, default (ACPI) machine. QEMU:
\`-M microvm,acpi=on,x-option-roms=off,rtc=off -accel kvm -m 256M\` with
\`-netdev tap,...,vhost=off -device virtio-net-device\` (a tap the script puts on the same
bridge) and the same kernel command line. Both VMMs run virtio-net in user space. The
guest's \`reboot -f\` does not end QEMU microvm here, so the script stops it once the
guest's command is done (not part of any measurement).

The guest's TCP/IP stack, its system calls and the virtio-net driver are the same code
for both VMMs$([ $PVM = 1 ] && echo " and on a PVM host run in KVM's instruction emulator, which dominates the time" || true); VM -> VM pays that on both ends. Not measured: latency, UDP,
several flows or queues, MTU > 1500.
NOTES
	echo "net.sh: wrote $BENCH_JSON" >&2
fi
