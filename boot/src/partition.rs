//! Which partition of a disk image Linux would mount as root: a GPT or MBR partition
//! table read from the image's first bytes, the way Linux 6.1 reads it
//! (`block/partitions/efi.c`, `msdos.c`), so that minivmm can put the right `root=` on the
//! command line of a guest that boots from a partitioned image.
//!
//! Pure code over bytes (no file, no KVM): the VMM reads [`HEAD_LEN`] bytes of its first
//! disk, asks [`bytes_needed`] whether a GPT's partition array lies beyond them, reads
//! that much, and calls [`probe`].
//!
//! What counts, as Linux counts it (512-byte sectors, which is what minivmm's virtio-blk
//! reports as its logical block size):
//!
//! - **GPT**: a protective (or hybrid) MBR, i.e. the `55 aa` signature and an entry of
//!   type `0xee` starting at LBA 1, then a primary header at LBA 1 with the `EFI PART`
//!   signature, a header size between 92 and 512 bytes, a correct header CRC32, `my_lba`
//!   1, usable LBAs inside the disk, 128-byte entries and a partition array whose CRC32
//!   is correct. Linux then numbers the partitions by their index in the array (entry
//!   `i` is partition `i + 1`, empty entries leave gaps) and names each by its unique
//!   partition GUID: `PARTUUID`. A *corrupt* GPT (protective MBR present, header or array
//!   wrong) is an error here: Linux sees no partition at all on such a disk (the MBR
//!   parser steps aside when it finds the `0xee` entry, and the backup GPT is only read
//!   with `gpt` on the command line), and the caller should say so.
//! - **MBR**: the `55 aa` signature, every entry's boot indicator 0 or `0x80` (else the
//!   sector is a FAT boot sector or garbage, not a table), no `0xee` entry. The four
//!   primary entries are partitions 1-4; an entry of size 0 is none. The PARTUUID is the
//!   32-bit disk signature at offset 440 and the partition number: `1234abcd-01`.
//!   Logical partitions inside an extended one are not followed: only primaries are
//!   looked at for the root.
//! - Anything else is a whole-disk image: no partition table, the file system (ext4, ...)
//!   starts at byte 0, and Linux's root is the disk itself.
//!
//! The root is the first partition (lowest number) whose type is Linux's: the GPT types
//! "Linux filesystem data" (`0FC63DAF-8483-4772-8E79-3D69D8477DE4`) and "Linux root
//! (x86-64)" (`4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709`), MBR type `0x83`.
//!
//! Linux 6.1 resolves `root=PARTUUID=...` itself, without an initramfs, whenever it is
//! built with `CONFIG_BLOCK` (`init/do_mounts.c: devt_from_partuuid`, matched
//! case-insensitively against the string the partition parsers store), so the name works
//! for any kernel that can mount a disk root at all.

/// The sector size the tables are read with.
pub const SECTOR_SIZE: u64 = 512;

/// How much of the disk to read first: the MBR, the GPT header and the first 120 entries
/// of a partition array at its usual place (LBA 2). [`bytes_needed`] says whether more is
/// needed.
pub const HEAD_LEN: usize = 16 << 10;

/// The largest GPT partition array read (8192 entries); a header that announces more is
/// reported as corrupt rather than read.
pub const MAX_ARRAY_LEN: u64 = 1 << 20;

/// The most [`bytes_needed`] asks for: a partition array that ends further into the disk
/// is reported as unusable rather than read.
pub const MAX_NEEDED: u64 = 4 << 20;

/// Linux reads at most this many GPT entries (its `DISK_MAX_PARTS` less one).
const MAX_GPT_PARTITIONS: u32 = 255;

/// GPT type "Linux filesystem data", as stored on disk (mixed-endian).
pub const GPT_LINUX_FILESYSTEM: [u8; 16] = guid_bytes("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
/// GPT type "Linux root (x86-64)" of the Discoverable Partitions Specification.
pub const GPT_LINUX_ROOT_X86_64: [u8; 16] = guid_bytes("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
/// MBR partition type "Linux".
pub const MBR_LINUX: u8 = 0x83;

/// The kind of partition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// GUID Partition Table (behind a protective MBR).
    Gpt,
    /// DOS/MBR partition table.
    Mbr,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
        })
    }
}

/// The first Linux partition of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxPartition {
    /// The table it is in.
    pub table: TableKind,
    /// Linux's partition number: 1 is `/dev/vda1`.
    pub number: u32,
    /// The `PARTUUID` Linux gives it: the unique partition GUID in lowercase
    /// (`blkid`'s form), or for MBR `xxxxxxxx-NN` (disk signature, partition number).
    pub part_uuid: String,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
}

impl LinuxPartition {
    /// Whether `PARTUUID` names this partition well: always for GPT; for MBR only when the
    /// disk has a signature (all-zero signatures are common, and would match another disk
    /// with none just as well).
    pub fn has_unique_uuid(&self) -> bool {
        self.table == TableKind::Gpt || !self.part_uuid.starts_with("00000000-")
    }

    /// The `root=` value for this partition on disk `disk` (`vda`): `PARTUUID=...` when
    /// [`LinuxPartition::has_unique_uuid`], else the device node (`/dev/vda1`).
    pub fn root(&self, disk: &str) -> String {
        if self.has_unique_uuid() {
            format!("PARTUUID={}", self.part_uuid)
        } else {
            self.device(disk)
        }
    }

    /// The partition's device node on disk `disk`: `/dev/vda1`.
    pub fn device(&self, disk: &str) -> String {
        format!("/dev/{disk}{}", self.number)
    }
}

/// What a disk image holds, as Linux would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// No partition table: the disk is one file system (named if recognised: `ext4`,
    /// `xfs`, `vfat`, `squashfs`, `iso9660`), or something unknown.
    Whole {
        /// The file system found at the start, if recognised.
        filesystem: Option<&'static str>,
    },
    /// A partition table, with its first Linux partition if it has one.
    Partitioned {
        /// GPT or MBR.
        table: TableKind,
        /// The first partition of a Linux type, if any.
        linux: Option<LinuxPartition>,
    },
}

/// Why a partition table Linux would look at cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// A protective MBR announces a GPT, but its primary header is not valid.
    #[error("the protective MBR announces a GPT, but the header at LBA 1 is invalid: {0}")]
    GptHeader(String),
    /// The GPT header is valid but its partition entry array is not.
    #[error("the GPT partition entry array is invalid: {0}")]
    GptArray(String),
    /// The bytes given end before the partition array (see [`bytes_needed`]).
    #[error("{needed} bytes of the disk are needed to read its partition table, {given} given")]
    Short {
        /// What [`bytes_needed`] asks for.
        needed: u64,
        /// What the caller gave.
        given: u64,
    },
}

/// How many bytes from the start of the disk [`probe`] needs: [`HEAD_LEN`], or more when
/// `head` (the disk's first bytes) holds a GPT header whose partition array ends beyond
/// them, up to [`MAX_NEEDED`] (an array further in, or larger than [`MAX_ARRAY_LEN`], is
/// reported as unusable by [`probe`]).
pub fn bytes_needed(head: &[u8]) -> u64 {
    let head_len = HEAD_LEN as u64;
    let Some(h) = head.get(512..1024).filter(|h| &h[..8] == b"EFI PART") else {
        return head_len;
    };
    let len = u64::from(le32(h, 80)) * u64::from(le32(h, 84));
    le64(h, 72)
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| start.checked_add(len))
        .filter(|&end| len <= MAX_ARRAY_LEN && end <= MAX_NEEDED)
        .map_or(head_len, |end| end.max(head_len))
}

/// Read the partition table in `disk` (the first bytes of a disk image of `disk_size`
/// bytes: at least [`bytes_needed`] of them, or the whole image if it is shorter) and find
/// its first Linux partition.
pub fn probe(disk: &[u8], disk_size: u64) -> Result<Layout, TableError> {
    let sectors = disk_size / SECTOR_SIZE;
    let Some(mbr) = disk.get(..512).filter(|_| sectors >= 1) else {
        return Ok(Layout::Whole { filesystem: None });
    };
    let signed = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    if signed && entries.iter().any(|e| e[4] == 0xee && le32(e, 8) == 1) {
        return probe_gpt(disk, sectors).map(|linux| Layout::Partitioned {
            table: TableKind::Gpt,
            linux,
        });
    }
    // Linux's MBR parser: the signature, and boot indicators that make sense (a FAT boot
    // sector has code there); an 0xee entry that is not a valid protective one still
    // makes it step aside for the GPT parser, which has refused the disk.
    if signed
        && entries.iter().all(|e| e[0] == 0 || e[0] == 0x80)
        && !entries.iter().any(|e| e[4] == 0xee)
    {
        let has_any = entries.iter().any(|e| le32(e, 12) != 0);
        if has_any {
            let signature = le32(mbr, 440);
            let linux = entries.iter().enumerate().find_map(|(i, e)| {
                let (start, len) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
                (e[4] == MBR_LINUX && len != 0 && start < sectors).then(|| LinuxPartition {
                    table: TableKind::Mbr,
                    number: i as u32 + 1,
                    part_uuid: format!("{signature:08x}-{:02x}", i + 1),
                    start,
                    sectors: len.min(sectors - start),
                })
            });
            return Ok(Layout::Partitioned {
                table: TableKind::Mbr,
                linux,
            });
        }
    }
    Ok(Layout::Whole {
        filesystem: filesystem(disk),
    })
}

/// The GPT behind a protective MBR: its first Linux partition, if any.
fn probe_gpt(disk: &[u8], sectors: u64) -> Result<Option<LinuxPartition>, TableError> {
    let bad = |why: String| TableError::GptHeader(why);
    let last_lba = sectors
        .checked_sub(1)
        .ok_or_else(|| bad("the disk is empty".into()))?;
    let h = disk
        .get(512..1024)
        .filter(|_| sectors >= 2)
        .ok_or_else(|| bad("the disk ends before it".into()))?;
    if &h[..8] != b"EFI PART" {
        return Err(bad("no \"EFI PART\" signature".into()));
    }
    let header_size = le32(h, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(bad(format!(
            "header size {header_size} (must be 92 to 512)"
        )));
    }
    let mut header = h[..header_size].to_vec();
    let stored = le32(&header, 16);
    header[16..20].fill(0);
    let crc = crc32(&header);
    if crc != stored {
        return Err(bad(format!(
            "header CRC32 {stored:#010x}, computed {crc:#010x}"
        )));
    }
    let my_lba = le64(h, 24);
    if my_lba != 1 {
        return Err(bad(format!("my_lba is {my_lba}, not 1")));
    }
    let (first, last) = (le64(h, 40), le64(h, 48));
    if first > last_lba || last > last_lba || last < first {
        return Err(bad(format!(
            "usable LBAs {first}-{last} do not fit the disk's {sectors} sectors"
        )));
    }
    let entry_size = le32(h, 84);
    if entry_size != 128 {
        return Err(bad(format!(
            "partition entries of {entry_size} bytes, not 128"
        )));
    }
    let count = le32(h, 80);
    let len = u64::from(count) * 128;
    if count == 0 {
        return Err(bad("no partition entries".into()));
    }
    if len > MAX_ARRAY_LEN {
        return Err(bad(format!(
            "{count} partition entries (at most {} read)",
            MAX_ARRAY_LEN / 128
        )));
    }
    let array_lba = le64(h, 72);
    let start = array_lba
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| bad(format!("partition array at LBA {array_lba}")))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| bad(format!("partition array at LBA {array_lba}")))?;
    if array_lba > last_lba || end > sectors * SECTOR_SIZE {
        return Err(TableError::GptArray(format!(
            "LBA {array_lba}, {len} bytes, beyond the end of the disk ({sectors} sectors)"
        )));
    }
    if end > MAX_NEEDED {
        return Err(TableError::GptArray(format!(
            "at LBA {array_lba}, it ends beyond the first {} MiB, which is all that is read",
            MAX_NEEDED >> 20
        )));
    }
    let array = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(s, e)| disk.get(s..e))
        .ok_or(TableError::Short {
            needed: end,
            given: disk.len() as u64,
        })?;
    let stored = le32(h, 88);
    let crc = crc32(array);
    if crc != stored {
        return Err(TableError::GptArray(format!(
            "CRC32 {stored:#010x}, computed {crc:#010x}"
        )));
    }
    Ok(array
        .chunks_exact(128)
        .take(MAX_GPT_PARTITIONS as usize)
        .enumerate()
        .find_map(|(i, e)| {
            let kind: [u8; 16] = e[..16].try_into().unwrap_or_default();
            let (start, end) = (le64(e, 32), le64(e, 40));
            let valid = kind != [0; 16] && start <= last_lba && end <= last_lba && end >= start;
            (valid && (kind == GPT_LINUX_FILESYSTEM || kind == GPT_LINUX_ROOT_X86_64)).then(|| {
                LinuxPartition {
                    table: TableKind::Gpt,
                    number: i as u32 + 1,
                    part_uuid: format_guid(e[16..32].try_into().unwrap_or_default()),
                    start,
                    sectors: end - start + 1,
                }
            })
        }))
}

/// A file system at the start of a whole-disk image, for the log.
fn filesystem(disk: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| disk.get(off..off + magic.len()) == Some(magic);
    if at(0x438, &[0x53, 0xef]) {
        Some("ext4") // ext2/3/4 share the magic; Linux's ext4 driver mounts all three
    } else if at(0, b"XFSB") {
        Some("xfs")
    } else if at(0, b"hsqs") {
        Some("squashfs")
    } else if at(0x8001, b"CD001") {
        Some("iso9660")
    } else if at(510, &[0x55, 0xaa]) && (at(0x36, b"FAT") || at(0x52, b"FAT32")) {
        Some("vfat")
    } else {
        None
    }
}

/// A GUID as Linux and `blkid` print it (`%pUl`): the first three fields little-endian,
/// lowercase hex.
pub fn format_guid(b: [u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

/// The on-disk bytes of a GUID written `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (checked at
/// compile time for the constants above).
const fn guid_bytes(s: &str) -> [u8; 16] {
    let s = s.as_bytes();
    assert!(s.len() == 36);
    // Byte i of the on-disk form comes from the text's hex pair at POS[i].
    const POS: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
    const fn hex(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = hex(s[POS[i]]) << 4 | hex(s[POS[i] + 1]);
        i += 1;
    }
    out
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from(le32(b, off)) | u64::from(le32(b, off + 4)) << 32
}

/// CRC-32 as GPT uses it (IEEE 802.3, reflected, polynomial 0xEDB88320, initial and final
/// XOR 0xFFFFFFFF: zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// One GPT entry for [`gpt`].
    struct Entry {
        index: usize,
        kind: [u8; 16],
        uuid: [u8; 16],
        first: u64,
        last: u64,
    }

    /// A disk of `size` bytes with a protective MBR, a primary GPT (header at LBA 1, a
    /// 128-entry array at LBA 2) holding `entries`, and the backup at the end, CRCs right.
    fn gpt(size: u64, entries: &[Entry]) -> Vec<u8> {
        let sectors = size / SECTOR_SIZE;
        let mut d = vec![0u8; size as usize];
        // Protective MBR: one 0xee entry from LBA 1 over the rest of the disk.
        let e = &mut d[446..462];
        e[4] = 0xee;
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..16].copy_from_slice(&((sectors - 1).min(0xffff_ffff) as u32).to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        let mut array = vec![0u8; 128 * 128];
        for en in entries {
            let a = &mut array[en.index * 128..][..128];
            a[..16].copy_from_slice(&en.kind);
            a[16..32].copy_from_slice(&en.uuid);
            a[32..40].copy_from_slice(&en.first.to_le_bytes());
            a[40..48].copy_from_slice(&en.last.to_le_bytes());
            for (i, c) in "part".encode_utf16().enumerate() {
                a[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
            }
        }
        let array_crc = crc32(&array);
        let header = |my: u64, alt: u64, array_lba: u64| {
            let mut h = vec![0u8; 92];
            h[..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
            h[56..72].copy_from_slice(&[0x42; 16]);
            h[72..80].copy_from_slice(&array_lba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let crc = crc32(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        d[512..604].copy_from_slice(&header(1, sectors - 1, 2));
        d[1024..1024 + array.len()].copy_from_slice(&array);
        let backup_array = ((sectors - 33) * SECTOR_SIZE) as usize;
        d[backup_array..backup_array + array.len()].copy_from_slice(&array);
        let backup = ((sectors - 1) * SECTOR_SIZE) as usize;
        d[backup..backup + 92].copy_from_slice(&header(sectors - 1, 1, sectors - 33));
        d
    }

    const UUID: [u8; 16] = [
        0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    fn linux_at(index: usize, kind: [u8; 16]) -> Entry {
        Entry {
            index,
            kind,
            uuid: UUID,
            first: 2048,
            last: 4095,
        }
    }

    /// Recompute the primary header's CRC after a test changed it.
    fn fix_header_crc(d: &mut [u8]) {
        d[528..532].fill(0);
        let crc = crc32(&d[512..604]);
        d[528..532].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guids_print_as_linux_prints_them() {
        assert_eq!(format_guid(UUID), "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!(
            format_guid(GPT_LINUX_FILESYSTEM),
            "0fc63daf-8483-4772-8e79-3d69d8477de4"
        );
        assert_eq!(
            format_guid(GPT_LINUX_ROOT_X86_64),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
    }

    #[test]
    fn gpt_first_linux_partition_by_index() {
        let esp = guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        let d = gpt(
            8 * MIB,
            &[
                Entry {
                    index: 0,
                    kind: esp,
                    uuid: [1; 16],
                    first: 34,
                    last: 2047,
                },
                // Index 1 empty: Linux numbers by index, so the root is partition 3.
                linux_at(2, GPT_LINUX_FILESYSTEM),
                Entry {
                    index: 3,
                    kind: GPT_LINUX_ROOT_X86_64,
                    uuid: [2; 16],
                    first: 4096,
                    last: 8191,
                },
            ],
        );
        let got = probe(&d, 8 * MIB).unwrap();
        let Layout::Partitioned {
            table: TableKind::Gpt,
            linux: Some(p),
        } = got
        else {
            panic!("{got:?}");
        };
        assert_eq!(p.number, 3);
        assert_eq!(p.part_uuid, "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!((p.start, p.sectors), (2048, 2048));
        assert_eq!(
            p.root("vda"),
            "PARTUUID=12345678-9abc-def0-0123-456789abcdef"
        );
        assert_eq!(p.device("vda"), "/dev/vda3");
        // The header says the array fits the first 16 KiB + 1 KiB.
        assert_eq!(bytes_needed(&d), 2 * 512 + 128 * 128);
    }

    #[test]
    fn gpt_linux_root_type_counts_and_other_types_do_not() {
        let d = gpt(4 * MIB, &[linux_at(0, GPT_LINUX_ROOT_X86_64)]);
        assert!(matches!(
            probe(&d, 4 * MIB),
            Ok(Layout::Partitioned {
                linux: Some(LinuxPartition { number: 1, .. }),
                ..
            })
        ));
        let swap = guid_bytes("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F");
        let d = gpt(4 * MIB, &[linux_at(0, swap)]);
        assert_eq!(
            probe(&d, 4 * MIB),
            Ok(Layout::Partitioned {
                table: TableKind::Gpt,
                linux: None
            })
        );
    }

    #[test]
    fn gpt_entries_outside_the_disk_are_skipped() {
        let mut beyond = linux_at(0, GPT_LINUX_FILESYSTEM);
        beyond.last = 100_000;
        let d = gpt(4 * MIB, &[beyond, linux_at(1, GPT_LINUX_FILESYSTEM)]);
        let Ok(Layout::Partitioned { linux: Some(p), .. }) = probe(&d, 4 * MIB) else {
            panic!()
        };
        assert_eq!(p.number, 2);
    }

    #[test]
    fn corrupt_gpts_are_errors_not_panics() {
        let good = gpt(4 * MIB, &[linux_at(0, GPT_LINUX_FILESYSTEM)]);
        let check = |f: &dyn Fn(&mut Vec<u8>), size: u64, needle: &str| {
            let mut d = good.clone();
            f(&mut d);
            let e = probe(&d, size).unwrap_err();
            assert!(e.to_string().contains(needle), "{e} (wanted {needle:?})");
        };
        check(&|d| d[512] = b'X', 4 * MIB, "signature");
        check(&|d| d[600] ^= 1, 4 * MIB, "header CRC32");
        check(&|d| d[1024 + 40] ^= 1, 4 * MIB, "array is invalid: CRC32");
        check(
            &|d| {
                d[524..528].copy_from_slice(&600u32.to_le_bytes());
                fix_header_crc(d);
            },
            4 * MIB,
            "header size 600",
        );
        check(
            &|d| {
                d[536..544].copy_from_slice(&2u64.to_le_bytes());
                fix_header_crc(d);
            },
            4 * MIB,
            "my_lba is 2",
        );
        check(
            &|d| {
                d[596..600].copy_from_slice(&256u32.to_le_bytes());
                fix_header_crc(d);
            },
            4 * MIB,
            "entries of 256 bytes",
        );
        check(
            &|d| {
                d[592..596].copy_from_slice(&u32::MAX.to_le_bytes());
                fix_header_crc(d);
            },
            4 * MIB,
            "4294967295 partition entries",
        );
        check(
            &|d| {
                d[584..592].copy_from_slice(&u64::MAX.to_le_bytes());
                fix_header_crc(d);
            },
            4 * MIB,
            "partition array at LBA",
        );
        // The image was cut short: the usable range no longer fits.
        check(&|_| {}, MIB, "do not fit");
        // The caller read too little.
        let e = probe(&good[..2048], 4 * MIB).unwrap_err();
        assert_eq!(
            e,
            TableError::Short {
                needed: 1024 + 16384,
                given: 2048
            }
        );
    }

    #[test]
    fn partition_array_beyond_the_head_is_asked_for() {
        let mut d = gpt(8 * MIB, &[linux_at(0, GPT_LINUX_FILESYSTEM)]);
        // Move the array to LBA 2048 (1 MiB), as some tools leave room for a boot loader.
        let array = d[1024..1024 + 16384].to_vec();
        d[1024..1024 + 16384].fill(0);
        d[MIB as usize..MIB as usize + 16384].copy_from_slice(&array);
        d[584..592].copy_from_slice(&2048u64.to_le_bytes());
        fix_header_crc(&mut d);
        let need = bytes_needed(&d[..HEAD_LEN]);
        assert_eq!(need, MIB + 16384);
        assert!(matches!(
            probe(&d[..HEAD_LEN], 8 * MIB),
            Err(TableError::Short { .. })
        ));
        assert!(matches!(
            probe(&d[..need as usize], 8 * MIB),
            Ok(Layout::Partitioned { linux: Some(_), .. })
        ));
    }

    /// An MBR with `parts` (slot, type, start, sectors) and disk signature `sig`.
    fn mbr(sig: u32, parts: &[(usize, u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 4 * MIB as usize];
        d[440..444].copy_from_slice(&sig.to_le_bytes());
        for &(slot, kind, start, len) in parts {
            let e = &mut d[446 + 16 * slot..462 + 16 * slot];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&len.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xaa;
        d
    }

    #[test]
    fn mbr_first_linux_primary() {
        let d = mbr(0x1234_abcd, &[(0, 0x82, 2048, 2048), (2, 0x83, 4096, 4096)]);
        let Ok(Layout::Partitioned {
            table: TableKind::Mbr,
            linux: Some(p),
        }) = probe(&d, 4 * MIB)
        else {
            panic!()
        };
        assert_eq!(p.number, 3);
        assert_eq!(p.part_uuid, "1234abcd-03");
        assert_eq!(p.root("vda"), "PARTUUID=1234abcd-03");
        // No signature: the device name instead.
        let d = mbr(0, &[(0, 0x83, 2048, 2048)]);
        let Ok(Layout::Partitioned { linux: Some(p), .. }) = probe(&d, 4 * MIB) else {
            panic!()
        };
        assert_eq!(p.root("vda"), "/dev/vda1");
        // A partition that starts past the end of the disk is not one.
        let d = mbr(7, &[(0, 0x83, 1 << 30, 2048)]);
        assert_eq!(
            probe(&d, 4 * MIB),
            Ok(Layout::Partitioned {
                table: TableKind::Mbr,
                linux: None
            })
        );
    }

    #[test]
    fn whole_disk_file_systems_are_not_tables() {
        // ext4: the superblock magic at 0x438, nothing at 510.
        let mut d = vec![0u8; HEAD_LEN];
        d[0x438] = 0x53;
        d[0x439] = 0xef;
        assert_eq!(
            probe(&d, 64 * MIB),
            Ok(Layout::Whole {
                filesystem: Some("ext4")
            })
        );
        // A FAT boot sector: 55 aa, but boot code where the entries would be.
        let mut d = vec![0u8; HEAD_LEN];
        d[0x36..0x3b].copy_from_slice(b"FAT16");
        d[446] = 0x0e;
        d[510] = 0x55;
        d[511] = 0xaa;
        assert_eq!(
            probe(&d, 4 * MIB),
            Ok(Layout::Whole {
                filesystem: Some("vfat")
            })
        );
        // Zeros, a tiny image, nothing at all.
        assert_eq!(
            probe(&vec![0u8; HEAD_LEN], 4 * MIB),
            Ok(Layout::Whole { filesystem: None })
        );
        assert_eq!(
            probe(&[0u8; 100], 100),
            Ok(Layout::Whole { filesystem: None })
        );
        assert_eq!(probe(&[], 0), Ok(Layout::Whole { filesystem: None }));
    }

    /// A sparse file in the temp dir, removed on drop.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn tool(name: &str) -> bool {
        let found = Command::new(name).arg("--version").output().is_ok();
        if !found {
            eprintln!(
                "SKIPPED: {name} is not installed (Debian package fdisk / util-linux): the \
                 cross-check against it did not run"
            );
        }
        found
    }

    fn sfdisk(img: &Scratch, script: &str) {
        use std::io::Write;
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&img.0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed on {script}");
    }

    fn sparse(name: &str, size: u64) -> Scratch {
        let p = std::env::temp_dir().join(format!("minivmm-{name}-{}.img", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        Scratch(p)
    }

    fn probe_file(img: &Scratch) -> Layout {
        let data = std::fs::read(&img.0).unwrap();
        let need = bytes_needed(&data[..HEAD_LEN]) as usize;
        probe(&data[..need.min(data.len())], data.len() as u64).unwrap()
    }

    /// util-linux's sfdisk makes a GPT (an EFI system partition, then a Linux one); what
    /// we read matches what sfdisk and blkid report: the number and the PARTUUID.
    #[test]
    fn gpt_made_by_sfdisk() {
        if !tool("sfdisk") {
            return;
        }
        let img = sparse("sfdisk-gpt", 64 * MIB);
        sfdisk(
            &img,
            "label: gpt\nstart=2048, size=8192, type=U\nstart=10240, size=20480, type=L\n",
        );
        let Layout::Partitioned {
            table: TableKind::Gpt,
            linux: Some(p),
        } = probe_file(&img)
        else {
            panic!("{:?}", probe_file(&img))
        };
        assert_eq!((p.number, p.start, p.sectors), (2, 10240, 20480));
        let out = Command::new("sfdisk")
            .arg("--part-uuid")
            .arg(&img.0)
            .arg("2")
            .output()
            .unwrap();
        assert!(out.status.success());
        let theirs = String::from_utf8(out.stdout).unwrap().trim().to_lowercase();
        assert_eq!(p.part_uuid, theirs);
        // blkid's own probe of the partition (at its offset) names the same PARTUUID.
        if tool("blkid") {
            let out = Command::new("blkid")
                .args(["-p", "-o", "value", "-s", "PTTYPE"])
                .arg(&img.0)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gpt");
        }
        // Corrupting one byte of the array makes it an error, as in Linux.
        let mut data = std::fs::read(&img.0).unwrap();
        data[1024 + 128 + 20] ^= 0xff;
        assert!(matches!(
            probe(&data[..HEAD_LEN + 1024], data.len() as u64),
            Err(TableError::GptArray(_))
        ));
    }

    /// The same with a DOS table: swap first, Linux second; the PARTUUID is the label id
    /// sfdisk wrote and the partition number.
    #[test]
    fn mbr_made_by_sfdisk() {
        if !tool("sfdisk") {
            return;
        }
        let img = sparse("sfdisk-mbr", 64 * MIB);
        sfdisk(
            &img,
            "label: dos\nlabel-id: 0x5eedf00d\nstart=2048, size=8192, type=82\nstart=10240, type=83\n",
        );
        let Layout::Partitioned {
            table: TableKind::Mbr,
            linux: Some(p),
        } = probe_file(&img)
        else {
            panic!("{:?}", probe_file(&img))
        };
        assert_eq!((p.number, p.start), (2, 10240));
        assert_eq!(p.part_uuid, "5eedf00d-02");
        assert_eq!(p.sectors, 64 * MIB / 512 - 10240);
    }
}
