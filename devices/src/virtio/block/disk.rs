//! The disk image behind a virtio-blk device: opening and locking it, finding its size, and
//! moving data between it and guest memory.
//!
//! Everything here uses positional I/O (`pread`/`pwrite`/`fallocate` at an explicit offset),
//! so the file's seek position is never shared state, and every guest buffer is reached
//! through vm-memory's checked accessors: a `VolatileSlice` only exists for memory that
//! really is guest RAM.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::{BlockError, SECTOR_SIZE};
use crate::virtio::GuestMemoryMmap;

// BLKGETSIZE64 = _IOR(0x12, 114, size_t): the size of a block device in bytes.
vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// An open raw disk image (regular file or block device).
pub(crate) struct DiskImage {
    file: File,
    path: PathBuf,
    /// Size in bytes, a multiple of [`SECTOR_SIZE`].
    size: u64,
    read_only: bool,
}

impl DiskImage {
    /// Open `path` (read-only or read-write), lock it and find its size.
    ///
    /// Writable images take an exclusive `flock`, read-only ones a shared one, both
    /// non-blocking: two VMs writing one image would corrupt it, and a reader next to a writer
    /// would see it change underneath.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        // O_NONBLOCK: a FIFO opened read-only would block until a writer came. Anything but
        // a file or block device is refused below; those are opened again, by descriptor
        // (the same inode, no race with a rename), without the flag.
        let probe = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(open_err)?;
        let kind = probe
            .metadata()
            .map_err(|source| BlockError::Metadata {
                path: path.to_path_buf(),
                source,
            })?
            .file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(format!("/proc/self/fd/{}", probe.as_raw_fd()))
            .map_err(open_err)?;
        drop(probe);

        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock only takes a file descriptor, which `file` owns and keeps open for the
        // duration of the call; it touches no memory of ours.
        let ret = unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) };
        if ret != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                BlockError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                BlockError::Lock {
                    path: path.to_path_buf(),
                    source: err,
                }
            });
        }

        let meta = file.metadata().map_err(|source| BlockError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
        let file_type = meta.file_type();
        let size = if file_type.is_block_device() {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`,
            // a live, writable u64; the fd is owned by `file`.
            let ret = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(&file, BLKGETSIZE64(), &mut size)
            };
            if ret < 0 {
                return Err(BlockError::Metadata {
                    path: path.to_path_buf(),
                    source: io::Error::last_os_error(),
                });
            }
            size
        } else if file_type.is_file() {
            meta.len()
        } else {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        };

        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::UnalignedSize {
                path: path.to_path_buf(),
                size,
            });
        }

        Ok(DiskImage {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }

    /// The image path (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Copy `len` bytes of the image at `offset` into guest memory at `addr`.
    pub(crate) fn read_to_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let mut src = FileAt {
            file: &self.file,
            offset,
        };
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            let mut slice = slice.map_err(io::Error::other)?;
            src.read_exact_volatile(&mut slice).map_err(volatile_err)?;
        }
        Ok(())
    }

    /// Copy `len` bytes of guest memory at `addr` into the image at `offset`.
    pub(crate) fn write_from_guest(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let mut dst = FileAt {
            file: &self.file,
            offset,
        };
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            let slice = slice.map_err(io::Error::other)?;
            dst.write_all_volatile(&slice).map_err(volatile_err)?;
        }
        Ok(())
    }

    /// Make every completed write durable (`fdatasync`).
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocate `len` bytes at `offset`; later reads return zeroes.
    pub(crate) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Make `len` bytes at `offset` read as zeroes. With `unmap` the range may be deallocated
    /// (hole punch); without, it stays allocated (`FALLOC_FL_ZERO_RANGE`). When the file system
    /// or device supports neither, zeroes are written, 64 KiB at a time; `abort`, when set
    /// between two of those writes, ends it with `ECANCELED` (the device is being reset: a
    /// gigabyte of zeroes must not hold that up).
    pub(crate) fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        abort: Option<&std::sync::atomic::AtomicBool>,
    ) -> io::Result<()> {
        let mode = if unmap {
            FallocateMode::PunchHole
        } else {
            FallocateMode::ZeroRange
        };
        if fallocate(&self.file, mode, true, offset, len).is_ok() {
            return Ok(());
        }
        static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut done: u64 = 0;
        while done < len {
            if abort.is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed)) {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
            let chunk = (len - done).min(ZEROES.len() as u64);
            let at = offset
                .checked_add(done)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            // `chunk` is at most ZEROES.len(), so the cast and the slice are in bounds.
            self.file.write_all_at(&ZEROES[..chunk as usize], at)?;
            done += chunk;
        }
        Ok(())
    }
}

fn volatile_err(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

/// The image seen as a stream starting at `offset`, read and written with `pread`/`pwrite`
/// straight into and out of guest memory (no bounce buffer, no shared seek position).
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn offset(&self) -> Result<libc::off64_t, VolatileMemoryError> {
        libc::off64_t::try_from(self.offset)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::from(io::ErrorKind::InvalidInput)))
    }

    fn advance(&mut self, n: usize) -> Result<(), VolatileMemoryError> {
        self.offset = self.offset.checked_add(n as u64).ok_or_else(|| {
            VolatileMemoryError::IOError(io::Error::from(io::ErrorKind::InvalidInput))
        })?;
        Ok(())
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the fd is owned by `self.file`, which outlives the call. A `VolatileSlice`
        // points at `buf.len()` bytes of mapped guest memory that stay mapped while `guard`
        // lives, so the kernel may write up to `buf.len()` bytes there.
        let ret = unsafe {
            libc::pread64(
                self.file.as_raw_fd(),
                guard.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        if ret < 0 {
            // A failed read may still have written part of the buffer.
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        }
        let n = ret as usize;
        buf.bitmap().mark_dirty(0, n);
        self.advance(n)?;
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: the fd is owned by `self.file`, which outlives the call. A `VolatileSlice`
        // points at `buf.len()` bytes of mapped guest memory that stay mapped while `guard`
        // lives, so the kernel may read up to `buf.len()` bytes there.
        let ret = unsafe {
            libc::pwrite64(
                self.file.as_raw_fd(),
                guard.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        if ret < 0 {
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        }
        let n = ret as usize;
        self.advance(n)?;
        Ok(n)
    }
}
