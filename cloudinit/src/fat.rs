//! A FAT16 file system image with a few files in its root directory, written from
//! scratch: what a NoCloud seed needs, and nothing more (no subdirectories, no
//! fragmentation, no writes after the fact).
//!
//! Layout (Microsoft's "FAT: General Overview of On-Disk Format", 1.03), in 512-byte
//! sectors: the boot sector with its BIOS parameter block, two copies of the FAT, a root
//! directory of 512 entries, then the data area, one sector per cluster. Each file's
//! clusters are consecutive; an empty file has none.
//!
//! Why FAT16 whatever the size: a FAT's kind is decided by its cluster count alone
//! (fewer than 4085: FAT12; fewer than 65525: FAT16), so with one-sector clusters FAT16
//! holds anything from a few bytes (the image is then padded to 4096 clusters, 2 MiB) to
//! 31 MiB, enough for the seed's 16 MiB limit, with one FAT entry format to write.
//!
//! Names are stored twice, as FAT always does with mixed case or long names: a VFAT long
//! name (UCS-2 in 13-character pieces, before the short entry, last piece first, each
//! with the short name's checksum) and a unique 8.3 alias (`USER-D~1`). Linux's vfat
//! driver, `mtools` and `fsck.fat` read the long name.
//!
//! The image is a function of its inputs only: the timestamps are fixed (2000-01-01
//! 00:00) and the volume serial number is a hash of the label and the files, so the same
//! seed gives the same bytes.

/// Bytes per sector (and per cluster).
pub const SECTOR: usize = 512;
/// The fewest clusters a FAT16 volume has (one more than FAT12's most, with margin).
const MIN_CLUSTERS: usize = 4096;
/// The most clusters FAT16 allows (cluster numbers up to 0xFFF4).
pub const MAX_CLUSTERS: usize = 65524;
/// Root directory entries (32 bytes each: 32 sectors).
const ROOT_ENTRIES: usize = 512;
const RESERVED_SECTORS: usize = 1;
const FATS: usize = 2;
/// 2000-01-01 in FAT's date format: (year - 1980) << 9 | month << 5 | day.
const DATE: u16 = (20 << 9) | (1 << 5) | 1;

/// Why an image could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FatError {
    /// More data than a FAT16 volume of one-sector clusters holds.
    #[error("{bytes} bytes of files do not fit a FAT16 image (at most {} bytes)", MAX_CLUSTERS * SECTOR)]
    TooLarge {
        /// The files' total size.
        bytes: u64,
    },
    /// A name that cannot be a file's in the root directory.
    #[error(
        "file name {0:?}: 1 to 255 ASCII letters, digits, '.', '-' or '_', not starting with '.'"
    )]
    BadName(String),
    /// Two files whose names differ only in case, or too many files.
    #[error("file names must be unique (ignoring case), at most 9 files: {0:?}")]
    Names(Vec<String>),
    /// A label longer than 11 characters or with characters FAT labels cannot hold.
    #[error("volume label {0:?}: 1 to 11 upper-case letters, digits, - or _")]
    BadLabel(String),
}

/// Make a FAT16 image labelled `label` holding `files` (name, contents) in its root
/// directory, in that order.
pub fn image(label: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, FatError> {
    if label.is_empty()
        || label.len() > 11
        || !label
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
    {
        return Err(FatError::BadLabel(label.to_string()));
    }
    for (name, _) in files {
        let fine = |c: u8| c.is_ascii_alphanumeric() || b".-_".contains(&c);
        if name.is_empty() || name.len() > 255 || name.starts_with('.') || !name.bytes().all(fine) {
            return Err(FatError::BadName(name.to_string()));
        }
    }
    let mut lower: Vec<String> = files.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    lower.sort();
    lower.dedup();
    if lower.len() != files.len() || files.len() > 9 {
        return Err(FatError::Names(
            files.iter().map(|(n, _)| n.to_string()).collect(),
        ));
    }

    let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let data_clusters: usize = files.iter().map(|(_, d)| d.len().div_ceil(SECTOR)).sum();
    if data_clusters > MAX_CLUSTERS {
        return Err(FatError::TooLarge { bytes });
    }
    let clusters = data_clusters.max(MIN_CLUSTERS);
    // FAT16 entries are 2 bytes; entries 0 and 1 are reserved.
    let fat_sectors = ((clusters + 2) * 2).div_ceil(SECTOR);
    let root_sectors = ROOT_ENTRIES * 32 / SECTOR;
    let fat_start = RESERVED_SECTORS;
    let root_start = fat_start + FATS * fat_sectors;
    let data_start = root_start + root_sectors;
    let total = data_start + clusters;
    let mut img = vec![0u8; total * SECTOR];

    // Boot sector and BIOS parameter block.
    let serial = fnv1a(label.as_bytes(), files);
    let b = &mut img[..SECTOR];
    b[..3].copy_from_slice(&[0xeb, 0x3c, 0x90]); // jmp 0x3e; nop
    b[3..11].copy_from_slice(b"MINIVMM ");
    put16(b, 11, SECTOR as u16);
    b[13] = 1; // sectors per cluster
    put16(b, 14, RESERVED_SECTORS as u16);
    b[16] = FATS as u8;
    put16(b, 17, ROOT_ENTRIES as u16);
    if total < 0x10000 {
        put16(b, 19, total as u16);
    } else {
        put32(b, 32, total as u32);
    }
    b[21] = 0xf8; // media: fixed disk
    put16(b, 22, fat_sectors as u16);
    put16(b, 24, 32); // sectors per track and heads: unused, but fsck likes them set
    put16(b, 26, 64);
    b[36] = 0x80; // drive number
    b[38] = 0x29; // extended boot signature: serial, label and type follow
    put32(b, 39, serial);
    b[43..54].copy_from_slice(&padded(label));
    b[54..62].copy_from_slice(b"FAT16   ");
    // Not bootable: the jump lands on "hlt; jmp $-1".
    b[0x3e..0x41].copy_from_slice(&[0xf4, 0xeb, 0xfd]);
    b[510] = 0x55;
    b[511] = 0xaa;

    // The FAT: media byte in entry 0, end-of-chain in entry 1, then each file's chain.
    let mut fat = vec![0u8; fat_sectors * SECTOR];
    put16(&mut fat, 0, 0xfff8);
    put16(&mut fat, 2, 0xffff);
    // Root directory: the volume label, then each file's long-name entries and short entry.
    let mut root = Vec::with_capacity(ROOT_ENTRIES * 32);
    root.extend_from_slice(&dir_entry(&padded(label), 0x08, 0, 0));
    let mut next = 2usize; // the first data cluster
    for (i, (name, data)) in files.iter().enumerate() {
        let n = data.len().div_ceil(SECTOR);
        let first = if n == 0 { 0 } else { next };
        for c in next..next + n {
            let link = if c + 1 == next + n {
                0xffff
            } else {
                c as u16 + 1
            };
            put16(&mut fat, c * 2, link);
        }
        let at = (data_start + next - 2) * SECTOR;
        img[at..at + data.len()].copy_from_slice(data);
        next += n;
        let short = short_name(name, i + 1);
        root.extend_from_slice(&long_name_entries(name, &short));
        root.extend_from_slice(&dir_entry(&short, 0x20, first as u16, data.len() as u32));
    }
    for copy in 0..FATS {
        let at = (fat_start + copy * fat_sectors) * SECTOR;
        img[at..at + fat.len()].copy_from_slice(&fat);
    }
    let at = root_start * SECTOR;
    img[at..at + root.len()].copy_from_slice(&root);
    Ok(img)
}

/// An 11-byte name field: `s` padded with spaces.
fn padded(s: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out
}

/// The 8.3 alias of `name`: up to six of its characters that a short name may hold, upper
/// case, then `~N` (unique: `N` is the file's position), and up to three of its extension's.
fn short_name(name: &str, n: usize) -> [u8; 11] {
    let valid = |c: &u8| c.is_ascii_alphanumeric() || b"!#$%&'()-@^_`{}~".contains(c);
    let clean = |s: &str, max: usize| -> Vec<u8> {
        s.bytes()
            .filter(valid)
            .map(|c| c.to_ascii_uppercase())
            .take(max)
            .collect()
    };
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let mut out = [b' '; 11];
    let mut b = clean(base, 6);
    if b.is_empty() {
        b.push(b'_');
    }
    b.extend_from_slice(format!("~{n}").as_bytes());
    out[..b.len()].copy_from_slice(&b);
    let e = clean(ext, 3);
    out[8..8 + e.len()].copy_from_slice(&e);
    out
}

/// The long-name entries for `name` (stored before its short entry, last piece first).
fn long_name_entries(name: &str, short: &[u8; 11]) -> Vec<u8> {
    let sum = short
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c));
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let pieces = units.len().div_ceil(13);
    if !units.len().is_multiple_of(13) {
        units.push(0); // NUL-terminated unless it fills the last piece, then 0xFFFF
    }
    units.resize(pieces * 13, 0xffff);
    let mut out = Vec::with_capacity(pieces * 32);
    for p in (0..pieces).rev() {
        let mut e = [0u8; 32];
        e[0] = (p + 1) as u8 | if p + 1 == pieces { 0x40 } else { 0 };
        let chars = &units[p * 13..p * 13 + 13];
        // Characters at offsets 1-10, 14-25 and 28-31.
        let offsets = (0..5)
            .map(|i| 1 + 2 * i)
            .chain((0..6).map(|i| 14 + 2 * i))
            .chain((0..2).map(|i| 28 + 2 * i));
        for (c, off) in chars.iter().zip(offsets) {
            put16(&mut e, off, *c);
        }
        e[11] = 0x0f; // attributes: long name
        e[13] = sum;
        out.extend_from_slice(&e);
    }
    out
}

/// A short directory entry.
fn dir_entry(name: &[u8; 11], attr: u8, cluster: u16, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    put16(&mut e, 16, DATE); // created
    put16(&mut e, 18, DATE); // accessed
    put16(&mut e, 24, DATE); // written (time 00:00 stays zero)
    put16(&mut e, 26, cluster);
    put32(&mut e, 28, size);
    e
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// FNV-1a over the label and every file's name and contents, folded to 32 bits: the
/// volume serial number.
fn fnv1a(label: &[u8], files: &[(&str, &[u8])]) -> u32 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(label);
    for (name, data) in files {
        eat(name.as_bytes());
        eat(&[0]);
        eat(data);
    }
    (h ^ h >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read a file back by walking the root directory and FAT, as a driver would.
    fn read_back(img: &[u8], want: &str) -> Option<Vec<u8>> {
        let u16_at = |off: usize| u16::from_le_bytes([img[off], img[off + 1]]);
        let fat_sectors = usize::from(u16_at(22));
        let root = (1 + 2 * fat_sectors) * SECTOR;
        let data = root + 32 * SECTOR;
        let mut long = String::new();
        for e in img[root..data].chunks(32) {
            if e[0] == 0 {
                break;
            }
            if e[11] == 0x0f {
                let mut piece = String::new();
                for off in (0..5)
                    .map(|i| 1 + 2 * i)
                    .chain((0..6).map(|i| 14 + 2 * i))
                    .chain([28, 30])
                {
                    let c = u16::from_le_bytes([e[off], e[off + 1]]);
                    if c == 0 || c == 0xffff {
                        break;
                    }
                    piece.push(char::from_u32(c.into()).unwrap());
                }
                long.insert_str(0, &piece);
                continue;
            }
            let name = std::mem::take(&mut long);
            if e[11] & 0x08 != 0 || name != want {
                continue;
            }
            let size = u32::from_le_bytes(e[28..32].try_into().unwrap()) as usize;
            let mut cluster = usize::from(u16::from_le_bytes([e[26], e[27]]));
            let mut out = Vec::new();
            while out.len() < size {
                let at = data + (cluster - 2) * SECTOR;
                out.extend_from_slice(&img[at..at + SECTOR]);
                cluster = usize::from(u16_at(SECTOR + cluster * 2));
            }
            out.truncate(size);
            return Some(out);
        }
        None
    }

    #[test]
    fn files_read_back_through_the_directory_and_fat() {
        let big: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files: [(&str, &[u8]); 4] = [
            ("user-data", b"#cloud-config\n"),
            ("meta-data", b""),
            ("network-config", &big),
            ("vendor-data", &[0u8; 512]),
        ];
        let img = image("CIDATA", &files).unwrap();
        for (name, data) in files {
            assert_eq!(read_back(&img, name).as_deref(), Some(data), "{name}");
        }
        assert_eq!(read_back(&img, "USER-D~1"), None);
        assert_eq!(&img[43..54], b"CIDATA     ");
        assert_eq!(&img[54..62], b"FAT16   ");
        // FAT16 by cluster count: at least 4085 clusters.
        let total = usize::from(u16::from_le_bytes([img[19], img[20]]));
        assert_eq!(total * SECTOR, img.len());
        assert!(total - (1 + 2 * usize::from(img[22]) + 32) >= 4085);
        // The same inputs, the same bytes.
        assert_eq!(img, image("CIDATA", &files).unwrap());
    }

    #[test]
    fn short_names_and_checksums() {
        assert_eq!(&short_name("user-data", 1), b"USER-D~1   ");
        assert_eq!(&short_name("network-config", 3), b"NETWOR~3   ");
        assert_eq!(&short_name("a.b.txt", 2), b"AB~2    TXT");
        assert_eq!(&short_name("--", 4), b"--~4       ");
        assert_eq!(&short_name("+", 5), b"_~5        ");
        // The checksum example of the specification's algorithm: over "USER-D~1   ".
        let e = long_name_entries("user-data", &short_name("user-data", 1));
        assert_eq!(e.len(), 32);
        assert_eq!(e[0], 0x41);
        let mut sum = 0u8;
        for c in b"USER-D~1   " {
            sum = ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(*c);
        }
        assert_eq!(e[13], sum);
        // 13 characters exactly: no terminator, no padding; 14: a second piece.
        assert_eq!(long_name_entries("abcdefghijklm", b"ABCDEF~1   ").len(), 32);
        let two = long_name_entries("network-config", b"NETWOR~1   ");
        assert_eq!((two.len(), two[0], two[32]), (64, 0x42, 0x01));
    }

    #[test]
    fn bad_inputs() {
        assert!(matches!(image("cidata", &[]), Err(FatError::BadLabel(_))));
        assert!(matches!(
            image("TOOLONGLABEL", &[]),
            Err(FatError::BadLabel(_))
        ));
        assert!(matches!(
            image("X", &[("a/b", b"")]),
            Err(FatError::BadName(_))
        ));
        assert!(matches!(
            image("X", &[("", b"")]),
            Err(FatError::BadName(_))
        ));
        assert!(matches!(
            image("X", &[(".a", b"")]),
            Err(FatError::BadName(_))
        ));
        assert!(matches!(
            image("X", &[("A", b""), ("a", b"")]),
            Err(FatError::Names(_))
        ));
        let huge = vec![0u8; MAX_CLUSTERS * SECTOR + 1];
        assert!(matches!(
            image("X", &[("big", &huge)]),
            Err(FatError::TooLarge { .. })
        ));
        // The largest that fits is FAT16 still.
        let most = vec![1u8; MAX_CLUSTERS * SECTOR];
        let img = image("X", &[("big", &most)]).unwrap();
        assert_eq!(read_back(&img, "big").unwrap(), most);
    }
}
