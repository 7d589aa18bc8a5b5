//! Helpers shared by the unit tests that read back tables minivmm wrote into guest memory
//! (MP table, ACPI tables).

use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;

/// One MiB of guest memory at address 0: enough for every table in the BIOS area.
pub(crate) fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// `len` bytes of guest memory at `addr`.
pub(crate) fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// Little-endian u16 at `off`.
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// Little-endian u32 at `off`.
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Little-endian u64 at `off`.
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The byte sum (mod 256) a table checksum makes 0.
pub(crate) fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}
