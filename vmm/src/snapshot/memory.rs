//! Guest RAM in a snapshot: one file, `memory`, holding every RAM region back to back
//! (region `i` at the sum of the earlier regions' sizes), written sparse.
//!
//! Saving: a page that is all zeroes is not written, so it stays a hole in the file and
//! takes no disk space; a page the guest never touched is not even read (the kernel says
//! which pages of anonymous memory exist, with `mincore`).
//!
//! Restoring: each region is the file mapped `MAP_PRIVATE`: nothing is read up front, a
//! page comes from the file (the page cache) the first time the guest touches it, and the
//! guest's writes go to private copies, never back into the snapshot. That is why a
//! restore costs milliseconds whatever the memory size, and why one snapshot can be
//! restored many times at once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

use devices::virtio::GuestMemoryMmap;

/// The file's name in the snapshot directory.
pub const MEMORY_FILE: &str = "memory";

const PAGE: usize = 4096;
/// How much is read from guest memory at a time while saving.
const CHUNK: usize = 1 << 20;

/// One region of guest RAM and where it is in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    /// Guest physical address.
    pub guest_address: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// What saving wrote.
pub struct Saved {
    /// The regions, for the state file.
    pub regions: Vec<RegionEntry>,
    /// Bytes of data written (non-zero pages).
    pub written: u64,
}

/// Which pages of `len` bytes at `host` are resident (one bool per page); None if the
/// kernel cannot say.
fn resident_pages(host: *mut u8, len: usize) -> Option<Vec<bool>> {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: `host..host+len` is one live mapping (a guest RAM region, page-aligned), and
    // `vec` has one byte per page of it, which is all mincore writes.
    let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    (rc == 0).then(|| vec.iter().map(|b| b & 1 != 0).collect())
}

/// Write guest RAM to `path`, sparse. `anonymous`: the memory is anonymous (not mapped
/// from an earlier snapshot), so pages that are not resident are zero and are skipped
/// without being read.
pub fn save(mem: &GuestMemoryMmap, path: &Path, anonymous: bool) -> std::io::Result<Saved> {
    let file = File::create(path)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    let mut written = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let len = region.len() as usize;
        regions.push(RegionEntry {
            guest_address: region.start_addr().0,
            size: region.len(),
            file_offset: offset,
        });
        let resident = if anonymous {
            resident_pages(region.as_ptr(), len)
        } else {
            None
        };
        let mut pos = 0usize;
        while pos < len {
            let n = CHUNK.min(len - pos);
            let pages = pos / PAGE..(pos + n).div_ceil(PAGE);
            if let Some(r) = &resident {
                if !r[pages.clone()].iter().any(|&x| x) {
                    pos += n;
                    continue;
                }
            }
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, vm_memory::MemoryRegionAddress(pos as u64))
                .map_err(std::io::Error::other)?;
            // Runs of non-zero pages, each written with one pwrite.
            let mut run: Option<usize> = None;
            for p in 0..n.div_ceil(PAGE) {
                let page = &chunk[p * PAGE..((p + 1) * PAGE).min(n)];
                let zero = page.iter().all(|&b| b == 0);
                match (zero, run) {
                    (false, None) => run = Some(p),
                    (true, Some(start)) => {
                        let data = &chunk[start * PAGE..p * PAGE];
                        file.write_all_at(data, offset + (pos + start * PAGE) as u64)?;
                        written += data.len() as u64;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(start) = run {
                let data = &chunk[start * PAGE..];
                file.write_all_at(data, offset + (pos + start * PAGE) as u64)?;
                written += data.len() as u64;
            }
            pos += n;
        }
        offset += region.len();
    }
    // The size covers every region, so trailing zero pages are holes too.
    file.set_len(offset)?;
    file.sync_all()?;
    Ok(Saved { regions, written })
}

/// Map the memory file's regions `MAP_PRIVATE` at their guest addresses. Checks that the
/// file is as large as the regions say (a truncated file would fault the guest with
/// SIGBUS on first touch).
pub fn map(path: &Path, regions: &[RegionEntry]) -> Result<GuestMemoryMmap, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let mut out = Vec::new();
    for r in regions {
        let end = r.file_offset.checked_add(r.size);
        if end.is_none_or(|e| e > file_len) || r.size == 0 || r.size % PAGE as u64 != 0 {
            return Err(format!(
                "{}: region at {:#x} (+{:#x} at file offset {:#x}) is not in the {file_len}-byte \
                 file (truncated?)",
                path.display(),
                r.guest_address,
                r.size,
                r.file_offset
            ));
        }
        let size = usize::try_from(r.size).map_err(|_| "region too large".to_string())?;
        let fo = FileOffset::new(file.try_clone().map_err(|e| e.to_string())?, r.file_offset);
        let mapping: MmapRegion<()> = MmapRegionBuilder::new(size)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("mapping {}: {e}", path.display()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_address))
            .ok_or_else(|| format!("region at {:#x} overflows", r.guest_address))?;
        out.push(region);
    }
    GuestMemoryMmap::from_regions(out).map_err(|e| format!("guest memory layout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_round_trip() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 4 << 20),
            (GuestAddress(1 << 32), 2 << 20),
        ])
        .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1234)).unwrap();
        mem.write_slice(&[7u8; 8192], GuestAddress((1 << 32) + 0x10000))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("minivmm-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(MEMORY_FILE);
        let saved = save(&mem, &path, true).unwrap();
        // One page for "hello", two for the 7s.
        assert_eq!(saved.written, 3 * PAGE as u64);
        assert_eq!(saved.regions[1].file_offset, 4 << 20);
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 6 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );

        let back = map(&path, &saved.regions).unwrap();
        let mut buf = [0u8; 5];
        back.read_slice(&mut buf, GuestAddress(0x1234)).unwrap();
        assert_eq!(&buf, b"hello");
        let mut b = [0u8; 1];
        back.read_slice(&mut b, GuestAddress((1 << 32) + 0x11fff))
            .unwrap();
        assert_eq!(b[0], 7);
        // Private: writes do not reach the file.
        back.write_slice(b"XXXXX", GuestAddress(0x1234)).unwrap();
        let again = map(&path, &saved.regions).unwrap();
        again.read_slice(&mut buf, GuestAddress(0x1234)).unwrap();
        assert_eq!(&buf, b"hello");
        // A saved copy of restored memory (not anonymous) has the same content.
        let path2 = dir.join("memory2");
        let saved2 = save(&back, &path2, false).unwrap();
        assert_eq!(saved2.written, 3 * PAGE as u64);

        // Truncated: refused, not SIGBUS later.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(5 << 20)
            .unwrap();
        let e = map(&path, &saved.regions).err().unwrap();
        assert!(e.contains("truncated"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
