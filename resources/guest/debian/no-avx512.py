#!/usr/bin/env python3
"""A copy of MariaDB's server that never picks its AVX-512 CRC-32C code.

Usage: no-avx512.py SRC DST   (debian.sh: /usr/sbin/mariadbd to
                               /usr/local/lib/vminit/mariadbd-no-avx512)

Why: on a PVM host the guest kernel cannot execute XSAVE, so it switches the FPU
state between tasks with FXSAVE (x87 and SSE registers only), while guest user code
runs natively with the host's XCR0 (vminit.c, vector_state_guard()). vminit tells
glibc and OpenSSL not to use AVX; mariadbd does its own check
(mysys/crc32/crc32c_x86.cc: os_have_avx512() reads XCR0 with xgetbv, then CPUID leaf
7), finds AVX-512 and VPCLMULQDQ, logs "InnoDB: Using AVX512 instructions", and
computes every CRC-32C (InnoDB pages and redo log, binlog events) in ZMM registers.
Two of its threads doing that on one vCPU overwrite each other's registers at a
context switch: wrong checksums. (Suspected at first for the MariaDB labs' crashed
servers and a replica's relay log failure, 2026-12-03; a server without AVX-512
crashed the same way later that day, so this was at most one of the causes.)

What: os_have_avx512() compiles to

    31 c9        xor  ecx, ecx
    0f 01 d0     xgetbv
    48 c1 e2 20  shl  rdx, 32
    48 09 d0     or   rax, rdx
    48 f7 d0     not  rax
    a8 e6        test al, 0xe6
    0f 94 c0     sete al
    c3           ret

The copy has the xgetbv replaced by `31 c0 99` (xor eax, eax; cdq): XCR0 reads as 0,
the function says no, and MariaDB uses its SSE4.2 CRC-32C (crc32 instructions and
PCLMULQDQ on XMM registers, which FXSAVE does save). Nothing else changes. The
pattern must occur exactly once; otherwise nothing is written and the exit status
is 3 (another build of mariadbd: this script must be looked at again). vminit
bind-mounts the copy over /usr/sbin/mariadbd only when the kernel does not save the
AVX state; on a VT-x/AMD-V host the packaged server runs as it is.
"""

import os
import sys

OS_HAVE_AVX512 = bytes.fromhex("31c9 0f01d0 48c1e220 4809d0 48f7d0 a8e6 0f94c0 c3")
XGETBV_AT = 2  # offset of the xgetbv in the pattern
XCR0_IS_ZERO = bytes.fromhex("31c0 99")  # xor eax, eax; cdq


def patched(binary):
    """(the binary with os_have_avx512()'s xgetbv replaced, the offset replaced), or None
    without exactly one match."""
    first = binary.find(OS_HAVE_AVX512)
    if first < 0 or binary.find(OS_HAVE_AVX512, first + 1) >= 0:
        return None
    at = first + XGETBV_AT
    return binary[:at] + XCR0_IS_ZERO + binary[at + len(XCR0_IS_ZERO):], at


def main():
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    src, dst = sys.argv[1:]
    with open(src, "rb") as f:
        binary = f.read()
    result = patched(binary)
    if result is None:
        print(f"no-avx512.py: os_have_avx512() not found exactly once in {src}; "
              "nothing written", file=sys.stderr)
        return 3
    out, at = result
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.chmod(tmp, os.stat(src).st_mode & 0o7777)
    os.replace(tmp, dst)
    print(f"no-avx512.py: {dst}: the xgetbv at file offset {at:#x} replaced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
