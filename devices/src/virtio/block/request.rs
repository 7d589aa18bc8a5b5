//! Turning one descriptor chain into a validated virtio-blk request (virtio 1.2, 5.2.6).
//!
//! A request is laid out as
//!
//! ```text
//! [header: 16 bytes, device-readable] [data ...] [status: >= 1 byte, device-writable]
//! ```
//!
//! where the header is `le32 type, le32 reserved, le64 sector`. [`parse_request`] checks
//! everything the guest controls before any I/O happens: descriptor directions and
//! lengths, that every buffer lies inside guest RAM, that the sector range lies inside the
//! disk (with checked arithmetic), and the discard / write-zeroes segment list. It only reads
//! guest memory (the header and segment lists), never writes it, and touches no file, so it
//! can be unit-tested and fuzzed on its own.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;

use super::{
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
    SECTOR_SHIFT, SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::virtio::GuestMemoryMmap;

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u32 = 16;
/// Size of one discard / write-zeroes segment (`struct virtio_blk_discard_write_zeroes`).
pub const SEGMENT_LEN: u32 = 16;

/// What a request asks for, with its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `data` bytes starting at `sector` into the (device-writable) data buffers.
    In {
        /// First sector.
        sector: u64,
    },
    /// Write the (device-readable) data buffers to the disk starting at `sector`.
    Out {
        /// First sector.
        sector: u64,
    },
    /// Make all completed writes durable.
    Flush,
    /// Return the device serial (up to 20 bytes) in the data buffers.
    GetId,
    /// Deallocate a range of sectors (its contents become unspecified).
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        num_sectors: u32,
    },
    /// Make a range of sectors read as zeroes.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        num_sectors: u32,
        /// The driver allows the range to be deallocated.
        unmap: bool,
    },
}

/// A guest buffer: `len` bytes at `addr`, known to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A request that passed every check of [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation and its operands.
    pub kind: RequestKind,
    /// Data buffers, in order (empty for flush, discard and write zeroes, whose segment list
    /// was already decoded into `kind`).
    pub data: Vec<Buffer>,
    /// Total length of `data` in bytes.
    pub data_len: u64,
    /// Where to write the status byte.
    pub status: GuestAddress,
}

/// Why a descriptor chain is not a valid request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain has no descriptors (bad head index, or unreadable descriptor table).
    #[error("empty descriptor chain")]
    EmptyChain,
    /// The last descriptor cannot hold the status byte.
    #[error("the last descriptor (addr {addr:#x}, len {len}) is not a device-writable status buffer inside guest memory")]
    BadStatus {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Only a status descriptor, no header.
    #[error("the chain has no header descriptor")]
    MissingHeader,
    /// The header descriptor is writable, has the wrong length or lies outside memory.
    #[error("bad header descriptor (addr {addr:#x}, len {len}, writable {writable})")]
    BadHeader {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
        /// Whether it was device-writable.
        writable: bool,
    },
    /// More data descriptors than `seg_max`.
    #[error("{0} data descriptors, more than seg_max {max}", max = SEG_MAX)]
    TooManySegments(usize),
    /// A data descriptor has the wrong direction for the request type.
    #[error("data descriptor at {addr:#x} has the wrong direction for request type {kind} (device-writable: {writable})")]
    WrongDirection {
        /// Request type.
        kind: u32,
        /// Its guest address.
        addr: u64,
        /// Whether it was device-writable.
        writable: bool,
    },
    /// A data descriptor is bigger than `size_max`.
    #[error("data descriptor at {addr:#x} is {len} bytes, more than size_max {max}", max = SIZE_MAX)]
    SegmentTooLarge {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A data buffer does not lie entirely inside guest memory.
    #[error("data buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Read / write data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    /// The sector range does not fit in the disk (or overflows).
    #[error("sectors {sector}+{len_bytes} bytes are outside the disk of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        len_bytes: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// A flush request carried data.
    #[error("flush request with {0} data descriptors")]
    FlushWithData(usize),
    /// The discard / write-zeroes segment list has the wrong size.
    #[error("segment list of {0} bytes: need 1 to {max} segments of 16 bytes", max = MAX_DISCARD_SEG)]
    BadSegmentList(u64),
    /// A discard / write-zeroes segment has more sectors than the device allows.
    #[error("segment of {num_sectors} sectors, more than the maximum {max}")]
    SegmentTooManySectors {
        /// Requested sectors.
        num_sectors: u32,
        /// The maximum from the config space.
        max: u32,
    },
    /// A discard / write-zeroes segment sets flags the device does not support.
    #[error("unsupported segment flags {0:#x}")]
    UnsupportedFlags(u32),
    /// The request type is not one the device implements.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
}

impl RequestError {
    /// The status byte that reports this error to the driver.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A chain that failed [`parse_request`]: why, and where the status byte goes if the chain
/// has a usable status descriptor (otherwise the chain is returned with nothing written).
#[derive(Debug, PartialEq, Eq)]
pub struct ParseFailure {
    /// What is wrong.
    pub error: RequestError,
    /// The status byte's address, when the last descriptor is a valid status buffer.
    pub status: Option<GuestAddress>,
}

/// `struct virtio_blk_outhdr`, little-endian in guest memory.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    ioprio: u32,
    sector: u64,
}

// SAFETY: plain old data: integers only, no padding (4 + 4 + 8 bytes, 8-aligned), every bit
// pattern valid.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`, little-endian in guest memory.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Segment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}

// SAFETY: plain old data: integers only, no padding (8 + 4 + 4 bytes, 8-aligned), every bit
// pattern valid.
unsafe impl ByteValued for Segment {}

/// Parse and validate one descriptor chain against guest memory `mem` and a disk of
/// `capacity` sectors.
///
/// `chain` yields the chain's descriptors in order (a `virtio_queue::DescriptorChain`, or
/// any iterator in tests). At most `SEG_MAX + 2` descriptors are kept; a longer chain is
/// still walked to its end (the walk is bounded by the queue) to find the status descriptor.
pub fn parse_request(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    capacity: u64,
) -> Result<Request, ParseFailure> {
    const KEEP: usize = SEG_MAX as usize + 2;
    let mut descs: Vec<Descriptor> = Vec::with_capacity(4);
    let mut count: usize = 0;
    let mut last = None;
    for desc in chain {
        if descs.len() < KEEP {
            descs.push(desc);
        }
        count += 1;
        last = Some(desc);
    }
    let fail = |error, status| ParseFailure { error, status };

    // The status descriptor: last, device-writable, at least one byte, inside memory.
    let status_desc = last.ok_or(fail(RequestError::EmptyChain, None))?;
    if !status_desc.is_write_only()
        || status_desc.len() == 0
        || !mem.check_range(status_desc.addr(), 1)
    {
        return Err(fail(
            RequestError::BadStatus {
                addr: status_desc.addr().0,
                len: status_desc.len(),
            },
            None,
        ));
    }
    let status = status_desc.addr();
    let fail = |error| ParseFailure {
        error,
        status: Some(status),
    };

    if count < 2 {
        return Err(fail(RequestError::MissingHeader));
    }
    if count - 2 > SEG_MAX as usize {
        return Err(fail(RequestError::TooManySegments(count - 2)));
    }
    // From here on every descriptor of the chain is in `descs` (count <= KEEP).
    let (header_desc, rest) = descs
        .split_first()
        .ok_or(fail(RequestError::MissingHeader))?;
    let data_descs = rest.split_last().map(|(_, d)| d).unwrap_or(&[]);

    let bad_header = || {
        fail(RequestError::BadHeader {
            addr: header_desc.addr().0,
            len: header_desc.len(),
            writable: header_desc.is_write_only(),
        })
    };
    if header_desc.is_write_only() || header_desc.len() != HEADER_LEN {
        return Err(bad_header());
    }
    let header: RequestHeader = mem.read_obj(header_desc.addr()).map_err(|_| bad_header())?;
    let kind = u32::from_le(header.kind);
    let sector = u64::from_le(header.sector);

    // Data descriptors: direction per type, inside memory, not larger than size_max.
    let device_writes = match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => true,
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => false,
        VIRTIO_BLK_T_FLUSH => {
            if !data_descs.is_empty() {
                return Err(fail(RequestError::FlushWithData(data_descs.len())));
            }
            false
        }
        other => return Err(fail(RequestError::UnsupportedType(other))),
    };
    let mut data = Vec::with_capacity(data_descs.len());
    let mut data_len: u64 = 0;
    for d in data_descs {
        let (addr, len) = (d.addr(), d.len());
        if d.is_write_only() != device_writes {
            return Err(fail(RequestError::WrongDirection {
                kind,
                addr: addr.0,
                writable: d.is_write_only(),
            }));
        }
        if len > SIZE_MAX {
            return Err(fail(RequestError::SegmentTooLarge { addr: addr.0, len }));
        }
        if !mem.check_range(addr, len as usize) {
            return Err(fail(RequestError::OutsideMemory { addr: addr.0, len }));
        }
        // At most SEG_MAX * SIZE_MAX bytes: cannot overflow a u64.
        data_len += u64::from(len);
        data.push(Buffer { addr, len });
    }

    let request = |kind, data| Request {
        kind,
        data,
        data_len,
        status,
    };
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            if !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(fail(RequestError::UnalignedLength(data_len)));
            }
            check_range(sector, data_len >> SECTOR_SHIFT, capacity).map_err(|()| {
                fail(RequestError::OutOfRange {
                    sector,
                    len_bytes: data_len,
                    capacity,
                })
            })?;
            let kind = if kind == VIRTIO_BLK_T_IN {
                RequestKind::In { sector }
            } else {
                RequestKind::Out { sector }
            };
            Ok(request(kind, data))
        }
        VIRTIO_BLK_T_FLUSH => Ok(request(RequestKind::Flush, data)),
        VIRTIO_BLK_T_GET_ID => Ok(request(RequestKind::GetId, data)),
        // Discard or write zeroes: the data is a list of segments.
        _ => {
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            let (max_seg, max_sectors) = if discard {
                (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
            } else {
                (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
            };
            let nseg = data_len / u64::from(SEGMENT_LEN);
            if !data_len.is_multiple_of(u64::from(SEGMENT_LEN))
                || nseg == 0
                || nseg > u64::from(max_seg)
            {
                return Err(fail(RequestError::BadSegmentList(data_len)));
            }
            // The device supports one segment (max_*_seg = 1); it may still be split over
            // several descriptors, so gather its bytes.
            let seg =
                read_segment(mem, &data).ok_or(fail(RequestError::BadSegmentList(data_len)))?;
            let seg_sector = u64::from_le(seg.sector);
            let num_sectors = u32::from_le(seg.num_sectors);
            let flags = u32::from_le(seg.flags);
            let allowed_flags = if discard {
                // 5.2.6.2: discard with the unmap flag set must fail with UNSUPP.
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed_flags != 0 {
                return Err(fail(RequestError::UnsupportedFlags(flags)));
            }
            if num_sectors > max_sectors {
                return Err(fail(RequestError::SegmentTooManySectors {
                    num_sectors,
                    max: max_sectors,
                }));
            }
            check_range(seg_sector, u64::from(num_sectors), capacity).map_err(|()| {
                fail(RequestError::OutOfRange {
                    sector: seg_sector,
                    len_bytes: u64::from(num_sectors) << SECTOR_SHIFT,
                    capacity,
                })
            })?;
            let kind = if discard {
                RequestKind::Discard {
                    sector: seg_sector,
                    num_sectors,
                }
            } else {
                RequestKind::WriteZeroes {
                    sector: seg_sector,
                    num_sectors,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                }
            };
            Ok(request(kind, Vec::new()))
        }
    }
}

/// `sector .. sector + count` must lie inside a disk of `capacity` sectors.
fn check_range(sector: u64, count: u64, capacity: u64) -> Result<(), ()> {
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(()),
    }
}

/// Gather the first 16-byte segment from the (already range-checked) buffers.
fn read_segment(mem: &GuestMemoryMmap, data: &[Buffer]) -> Option<Segment> {
    let mut seg = Segment::default();
    let bytes = seg.as_mut_slice();
    let mut filled = 0usize;
    for buf in data {
        if filled == bytes.len() {
            break;
        }
        let take = (bytes.len() - filled).min(buf.len as usize);
        let dst = bytes.get_mut(filled..filled + take)?;
        mem.read_slice(dst, buf.addr).ok()?;
        filled += take;
    }
    (filled == bytes.len()).then_some(seg)
}
