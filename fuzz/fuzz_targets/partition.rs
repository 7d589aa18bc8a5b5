//! Fuzz the partition table reader (`boot/src/partition.rs`) that chooses a guest's
//! `root=` from the first bytes of its disk image: hostile tables must give an answer or
//! an error, never a panic, and a partition it returns must lie on the disk.
//!
//! The input is the disk's first bytes and its size; a `Gpt` input gets a protective MBR
//! and a primary header with correct CRCs over fuzzed fields, so that the fuzzer reaches
//! the entry array instead of stopping at the checksums.

#![no_main]

use boot::partition::{
    bytes_needed, crc32, probe, Layout, GPT_LINUX_FILESYSTEM, GPT_LINUX_ROOT_X86_64, HEAD_LEN,
    MAX_NEEDED, SECTOR_SIZE,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Shape {
    /// The bytes as they are.
    Raw,
    /// A protective MBR and a GPT header whose CRCs are made right.
    Gpt {
        entries: u8,
        array_lba: u8,
        first: u16,
        last: u32,
        /// An entry given a Linux type (index, and the root type rather than the
        /// filesystem one), so that the search for one is reached.
        linux: Option<(u8, bool)>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    shape: Shape,
    /// The disk's size in sectors.
    sectors: u32,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let size = u64::from(input.sectors) * SECTOR_SIZE;
    let mut disk = input.bytes;
    if let Shape::Gpt {
        entries,
        array_lba,
        first,
        last,
        linux,
    } = input.shape
    {
        let array_lba = u64::from(array_lba.max(2));
        let count = u32::from(entries);
        let array_end = (array_lba * SECTOR_SIZE + u64::from(count) * 128) as usize;
        if disk.len() < array_end {
            disk.resize(array_end, 0);
        }
        if let Some((index, root)) = linux.filter(|(i, _)| u32::from(*i) < count) {
            let at = array_lba as usize * 512 + usize::from(index) * 128;
            disk[at..at + 16].copy_from_slice(if root {
                &GPT_LINUX_ROOT_X86_64
            } else {
                &GPT_LINUX_FILESYSTEM
            });
        }
        disk[446 + 4] = 0xee;
        disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[510] = 0x55;
        disk[511] = 0xaa;
        let start = (array_lba * SECTOR_SIZE) as usize;
        let array_crc = crc32(&disk[start..array_end]);
        let h = &mut disk[512..604];
        h[..8].copy_from_slice(b"EFI PART");
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[16..20].fill(0);
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[40..48].copy_from_slice(&u64::from(first).to_le_bytes());
        h[48..56].copy_from_slice(&u64::from(last).to_le_bytes());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&count.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    let needed = bytes_needed(&disk[..disk.len().min(HEAD_LEN)]);
    assert!((HEAD_LEN as u64..=MAX_NEEDED).contains(&needed));
    if let Ok(Layout::Partitioned { linux: Some(p), .. }) = probe(&disk, size) {
        assert!(p.number >= 1 && p.sectors >= 1);
        let sectors = size / SECTOR_SIZE;
        assert!(
            p.start < sectors && p.sectors <= sectors - p.start,
            "{p:?} on {sectors}"
        );
        let uuid = &p.part_uuid;
        assert!(uuid
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f' | b'-')));
        assert!(p.root("vda").starts_with("PARTUUID=") || p.root("vda").starts_with("/dev/vda"));
    }
});
