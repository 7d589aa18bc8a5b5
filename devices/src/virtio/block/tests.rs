//! Unit tests for virtio-blk on mock guest memory: a hand-built split queue (descriptor
//! table, available and used rings) driven the way a driver would, and temp-file images.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::request::{parse_request, Buffer, ParseFailure, RequestError, RequestKind};
use super::*;
use crate::test_util::CountingInterrupt;
use crate::virtio::{ActivateContext, VirtioInterrupt};
use crate::Interrupt;

const MEM_SIZE: usize = 0x10_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x8_0000;
/// Disk size in the tests: 64 sectors.
const DISK_SECTORS: u64 = 64;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A temp image of `sectors` sectors, byte i = i % 251 (so every sector differs).
fn image(sectors: u64) -> TempFile {
    let t = TempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    t.as_file().write_all_at(&data, 0).unwrap();
    t
}

fn block(t: &TempFile, read_only: bool, serial: Option<&str>) -> Block {
    Block::new(BlockConfig {
        path: t.as_path().to_path_buf(),
        read_only,
        serial: serial.map(str::to_string),
        limit: Default::default(),
    })
    .unwrap()
}

fn file_bytes(t: &TempFile) -> Vec<u8> {
    let mut f = std::fs::File::open(t.as_path()).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// (addr, len, device-writable)
type D = (u64, u32, bool);

/// The driver side of a split queue of 256 entries in `mem`.
struct Driver {
    mem: GuestMemoryMmap,
    next_desc: u16,
    avail_idx: u16,
}

impl Driver {
    fn new() -> Self {
        Driver {
            mem: mem(),
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }

    /// Write a chain into the descriptor table and publish it; returns its head index.
    fn add(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
            let next = idx.wrapping_add(1) % QUEUE_SIZE;
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = Descriptor::new(addr, len, flags, next);
            self.mem
                .write_obj(d, GuestAddress(DESC_TABLE + 16 * u64::from(idx)))
                .unwrap();
            self.next_desc = next;
        }
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// (head, len) of used element `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let base = USED_RING + 4 + 8 * u64::from(i % QUEUE_SIZE);
        (
            self.mem.read_obj(GuestAddress(base)).unwrap(),
            self.mem.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }

    fn header(&self, addr: u64, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(addr)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(addr + 8)).unwrap();
    }

    fn segment(&self, addr: u64, sector: u64, num: u32, flags: u32) {
        self.mem.write_obj(sector, GuestAddress(addr)).unwrap();
        self.mem.write_obj(num, GuestAddress(addr + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(addr + 12)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Submit one chain, process it synchronously, return (status byte, used len).
fn run(blk: &Block, drv: &mut Driver, descs: &[D]) -> (u8, u32) {
    // A sentinel so "status not written" is visible.
    drv.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut q = drv.queue();
    // Start where previous requests left off.
    q.set_next_avail(drv.avail_idx);
    q.set_next_used(drv.used_idx());
    let head = drv.add(descs);
    blk.process_queue(&drv.mem, &mut q).unwrap();
    let used = drv.used_idx();
    let (id, len) = drv.used(used.wrapping_sub(1));
    assert_eq!(id, u32::from(head));
    (drv.status(), len)
}

fn hdr() -> D {
    (HDR, 16, false)
}
fn status() -> D {
    (STATUS, 1, true)
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i % 251) as u8)
        .collect()
}

// ---- construction, features, config space ----

#[test]
fn features_writable_and_read_only() {
    let t = image(DISK_SECTORS);
    let rw = block(&t, false, None);
    let f = rw.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(rw.device_type(), 2);
    assert_eq!(rw.queue_max_sizes(), &[256]);
    assert_eq!(rw.capacity(), DISK_SECTORS);
    drop(rw);

    let ro = block(&t, true, None);
    let f = ro.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
}

#[test]
fn config_space_layout() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let rd = |off: u64, len: usize| {
        let mut v = vec![0xaau8; len];
        blk.read_config(off, &mut v);
        v
    };
    let u32_at = |field: usize| u32::from_le_bytes(rd(field as u64, 4).try_into().unwrap());
    use std::mem::offset_of;
    let capacity = offset_of!(virtio_blk_config, capacity) as u64;
    assert_eq!(
        u64::from_le_bytes(rd(capacity, 8).try_into().unwrap()),
        DISK_SECTORS
    );
    assert_eq!(u32_at(offset_of!(virtio_blk_config, size_max)), SIZE_MAX);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, seg_max)), 254);
    assert_eq!(u32_at(offset_of!(virtio_blk_config, blk_size)), 512);
    assert_eq!(
        u32_at(offset_of!(virtio_blk_config, max_discard_sectors)),
        MAX_DISCARD_SECTORS
    );
    assert_eq!(u32_at(offset_of!(virtio_blk_config, max_discard_seg)), 1);
    assert_eq!(
        u32_at(offset_of!(virtio_blk_config, discard_sector_alignment)),
        DISCARD_SECTOR_ALIGNMENT
    );
    assert_eq!(
        u32_at(offset_of!(virtio_blk_config, max_write_zeroes_sectors)),
        MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(
        u32_at(offset_of!(virtio_blk_config, max_write_zeroes_seg)),
        1
    );
    assert_eq!(
        rd(
            offset_of!(virtio_blk_config, write_zeroes_may_unmap) as u64,
            1
        ),
        [1]
    );
    assert_eq!(
        offset_of!(virtio_blk_config, max_secure_erase_sectors),
        CONFIG_LEN
    );
    // Byte-wise reads, reads straddling the end, and reads far out of range.
    assert_eq!(rd(1, 1), [0]);
    assert_eq!(rd(0, 1), [DISK_SECTORS as u8]);
    assert_eq!(rd(CONFIG_LEN as u64 - 2, 4), [0, 0, 0, 0]);
    assert_eq!(rd(56, 4), [1, 0, 0, 0]);
    assert_eq!(rd(u64::MAX, 8), [0; 8]);
    assert_eq!(rd(0x1000, 4), [0; 4]);
}

#[test]
fn config_writes_are_ignored() {
    let t = image(DISK_SECTORS);
    let mut blk = block(&t, false, None);
    let mut before = [0u8; CONFIG_LEN];
    blk.read_config(0, &mut before);
    blk.write_config(0, &[0xff; 8]);
    blk.write_config(32, &[1]);
    blk.write_config(u64::MAX, &[1, 2, 3]);
    let mut after = [0u8; CONFIG_LEN];
    blk.read_config(0, &mut after);
    assert_eq!(before, after);
}

#[test]
fn odd_sized_image_is_refused() {
    let t = TempFile::new().unwrap();
    t.as_file().set_len(1000).unwrap();
    let err = Block::new(BlockConfig {
        path: t.as_path().to_path_buf(),
        read_only: false,
        serial: None,
        limit: Default::default(),
    })
    .err()
    .unwrap();
    assert!(matches!(err, BlockError::UnalignedSize { size: 1000, .. }));
    let msg = err.to_string();
    assert!(msg.contains(&t.as_path().display().to_string()), "{msg}");
    assert!(msg.contains("1000"), "{msg}");
}

#[test]
fn locked_image_is_refused() {
    let t = image(DISK_SECTORS);
    let first = block(&t, false, None);
    let cfg = |read_only| BlockConfig {
        path: t.as_path().to_path_buf(),
        read_only,
        serial: None,
        limit: Default::default(),
    };
    let err = Block::new(cfg(false)).err().unwrap();
    assert!(matches!(err, BlockError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("in use by another process"), "{msg}");
    assert!(msg.contains(&t.as_path().display().to_string()), "{msg}");
    // A reader next to a writer is refused too.
    assert!(matches!(
        Block::new(cfg(true)).err().unwrap(),
        BlockError::Locked { .. }
    ));
    // Dropping the device releases the lock.
    drop(first);
    let r1 = Block::new(cfg(true)).unwrap();
    // Readers share.
    let r2 = Block::new(cfg(true)).unwrap();
    assert!(matches!(
        Block::new(cfg(false)).err().unwrap(),
        BlockError::Locked { .. }
    ));
    drop((r1, r2));
    Block::new(cfg(false)).unwrap();
}

#[test]
fn other_open_errors_name_the_path() {
    let err = Block::new(BlockConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: true,
        serial: None,
        limit: Default::default(),
    })
    .err()
    .unwrap();
    assert!(matches!(err, BlockError::Open { .. }));
    assert!(err.to_string().contains("/nonexistent/disk.img"));

    let err = Block::new(BlockConfig {
        path: "/tmp".into(),
        read_only: true,
        serial: None,
        limit: Default::default(),
    })
    .err()
    .unwrap();
    assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");

    // A FIFO nobody writes to: a plain read-only open would block forever.
    let fifo = std::env::temp_dir().join(format!("minivmm-blk-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    for read_only in [true, false] {
        let err = Block::new(BlockConfig {
            path: fifo.clone(),
            read_only,
            serial: None,
            limit: Default::default(),
        })
        .err()
        .unwrap();
        assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");
    }
    std::fs::remove_file(&fifo).unwrap();

    let t = image(1);
    let err = Block::new(BlockConfig {
        path: t.as_path().to_path_buf(),
        read_only: false,
        serial: Some("x".repeat(21)),
        limit: Default::default(),
    })
    .err()
    .unwrap();
    assert!(matches!(err, BlockError::SerialTooLong { len: 21, .. }));
    assert!(err.to_string().contains(&t.as_path().display().to_string()));
    // 20 bytes is fine.
    block(&t, false, Some(&"y".repeat(20)));
}

#[test]
fn empty_image_has_zero_capacity() {
    let t = TempFile::new().unwrap();
    let blk = block(&t, false, None);
    assert_eq!(blk.capacity(), 0);
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 512, true), status()]),
        (IOERR, 1)
    );
}

// ---- request types ----

#[test]
fn read_scattered() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_IN, 3);
    let (st, len) = run(
        &blk,
        &mut drv,
        &[
            hdr(),
            (DATA, 512, true),
            (DATA + 0x4000, 1024, true),
            status(),
        ],
    );
    assert_eq!((st, len), (OK, 1536 + 1));
    assert_eq!(drv.bytes(DATA, 512), pattern(3 * 512, 512));
    assert_eq!(drv.bytes(DATA + 0x4000, 1024), pattern(4 * 512, 1024));
}

#[test]
fn read_last_sector_and_zero_length() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 512, true), status()]),
        (OK, 513)
    );
    assert_eq!(drv.bytes(DATA, 512), pattern((DISK_SECTORS - 1) * 512, 512));
    // No data at all is a valid (empty) read.
    drv.header(HDR, VIRTIO_BLK_T_IN, DISK_SECTORS);
    assert_eq!(run(&blk, &mut drv, &[hdr(), status()]), (OK, 1));
}

#[test]
fn write_scattered() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    drv.mem
        .write_slice(&[0x11; 512], GuestAddress(DATA))
        .unwrap();
    drv.mem
        .write_slice(&[0x22; 1024], GuestAddress(DATA + 0x8000))
        .unwrap();
    drv.header(HDR, VIRTIO_BLK_T_OUT, 10);
    let (st, len) = run(
        &blk,
        &mut drv,
        &[
            hdr(),
            (DATA, 512, false),
            (DATA + 0x8000, 1024, false),
            status(),
        ],
    );
    assert_eq!((st, len), (OK, 1));
    let f = file_bytes(&t);
    assert_eq!(&f[10 * 512..11 * 512], &[0x11; 512][..]);
    assert_eq!(&f[11 * 512..13 * 512], &[0x22; 1024][..]);
    // Neighbours untouched.
    assert_eq!(&f[9 * 512..10 * 512], &pattern(9 * 512, 512)[..]);
    assert_eq!(&f[13 * 512..14 * 512], &pattern(13 * 512, 512)[..]);
}

#[test]
fn flush() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&blk, &mut drv, &[hdr(), status()]), (OK, 1));
    // Flush carrying data is malformed.
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 512, false), status()]),
        (IOERR, 1)
    );
}

#[test]
fn get_id() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, Some("disk-serial-1"));
    let mut drv = Driver::new();
    drv.mem
        .write_slice(&[0xee; 32], GuestAddress(DATA))
        .unwrap();
    drv.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 20, true), status()]),
        (OK, 21)
    );
    let mut expect = b"disk-serial-1".to_vec();
    expect.resize(20, 0);
    assert_eq!(drv.bytes(DATA, 20), expect);
    assert_eq!(drv.bytes(DATA + 20, 1), [0xee]);
    // A short buffer gets a prefix; split buffers get the pieces.
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA + 0x100, 4, true), status()]),
        (OK, 5)
    );
    assert_eq!(drv.bytes(DATA + 0x100, 4), b"disk");
    assert_eq!(
        run(
            &blk,
            &mut drv,
            &[
                hdr(),
                (DATA + 0x200, 5, true),
                (DATA + 0x300, 64, true),
                status()
            ]
        ),
        (OK, 21)
    );
    assert_eq!(drv.bytes(DATA + 0x200, 5), b"disk-");
    assert_eq!(&drv.bytes(DATA + 0x300, 15)[..8], b"serial-1");
    // Readable data buffer: wrong direction.
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 20, false), status()]),
        (IOERR, 1)
    );
}

#[test]
fn discard_and_write_zeroes() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    let seg = DATA;
    for (kind, sector, flags) in [
        (VIRTIO_BLK_T_DISCARD, 8, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 20, 0),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            40,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        ),
    ] {
        drv.header(HDR, kind, 0);
        drv.segment(seg, sector, 8, flags);
        assert_eq!(
            run(&blk, &mut drv, &[hdr(), (seg, 16, false), status()]),
            (OK, 1),
            "type {kind}"
        );
        let f = file_bytes(&t);
        let start = sector as usize * 512;
        assert_eq!(f.len(), DISK_SECTORS as usize * 512, "size kept");
        assert!(
            f[start..start + 8 * 512].iter().all(|&b| b == 0),
            "type {kind}"
        );
        assert_eq!(
            &f[start - 512..start],
            &pattern(start as u64 - 512, 512)[..]
        );
        assert_eq!(
            &f[start + 8 * 512..start + 9 * 512],
            &pattern(start as u64 + 8 * 512, 512)[..]
        );
    }
    // A segment split over two descriptors is accepted.
    drv.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    drv.segment(seg, 60, 4, 0);
    assert_eq!(
        run(
            &blk,
            &mut drv,
            &[hdr(), (seg, 8, false), (seg + 8, 8, false), status()]
        ),
        (OK, 1)
    );
    assert!(file_bytes(&t)[60 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn bad_segments() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    let seg = DATA;
    let cases: &[(u32, u64, u32, u32, u32, u8)] = &[
        // (type, sector, num, flags, list len, expected status)
        (VIRTIO_BLK_T_DISCARD, 0, 8, 2, 16, UNSUPP), // reserved flag
        (
            VIRTIO_BLK_T_DISCARD,
            0,
            8,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            16,
            UNSUPP,
        ),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0x8000_0000, 16, UNSUPP),
        (VIRTIO_BLK_T_DISCARD, 60, 8, 0, 16, IOERR), // past the end
        (VIRTIO_BLK_T_DISCARD, u64::MAX, 1, 0, 16, IOERR), // overflow
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            MAX_WRITE_ZEROES_SECTORS + 1,
            0,
            16,
            IOERR,
        ),
        (VIRTIO_BLK_T_DISCARD, 0, 8, 0, 8, IOERR), // short list
        (VIRTIO_BLK_T_DISCARD, 0, 8, 0, 32, IOERR), // two segments, max is one
        (VIRTIO_BLK_T_DISCARD, 0, 8, 0, 0, IOERR), // no segment
    ];
    let before = file_bytes(&t);
    for &(kind, sector, num, flags, list_len, want) in cases {
        drv.header(HDR, kind, 0);
        drv.segment(seg, sector, num, flags);
        drv.segment(seg + 16, 0, 8, 0);
        let descs: Vec<D> = if list_len == 0 {
            vec![hdr(), status()]
        } else {
            vec![hdr(), (seg, list_len, false), status()]
        };
        assert_eq!(
            run(&blk, &mut drv, &descs),
            (want, 1),
            "{kind} {sector} {num} {flags:#x} {list_len}"
        );
    }
    // Writable segment list: wrong direction.
    drv.segment(seg, 0, 8, 0);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (seg, 16, true), status()]),
        (IOERR, 1)
    );
    assert_eq!(file_bytes(&t), before);
}

#[test]
fn unknown_type_is_unsupported() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    for kind in [
        2,
        3,
        VIRTIO_BLK_T_SECURE_ERASE,
        VIRTIO_BLK_T_ZONE_REPORT,
        u32::MAX,
    ] {
        drv.header(HDR, kind, 0);
        assert_eq!(
            run(&blk, &mut drv, &[hdr(), (DATA, 512, true), status()]),
            (UNSUPP, 1),
            "type {kind}"
        );
    }
}

#[test]
fn read_only_refuses_writes() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, true, None);
    let before = file_bytes(&t);
    let mut drv = Driver::new();
    drv.mem
        .write_slice(&[0x33; 512], GuestAddress(DATA))
        .unwrap();
    drv.header(HDR, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 512, false), status()]),
        (IOERR, 1)
    );
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        drv.header(HDR, kind, 0);
        drv.segment(DATA + 0x1000, 0, 8, 0);
        assert_eq!(
            run(
                &blk,
                &mut drv,
                &[hdr(), (DATA + 0x1000, 16, false), status()]
            ),
            (IOERR, 1)
        );
    }
    assert_eq!(file_bytes(&t), before);
    // Reads and flushes still work.
    drv.header(HDR, VIRTIO_BLK_T_IN, 1);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 512, true), status()]),
        (OK, 513)
    );
    assert_eq!(drv.bytes(DATA, 512), pattern(512, 512));
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&blk, &mut drv, &[hdr(), status()]), (OK, 1));
}

// ---- malformed chains ----

#[test]
fn malformed_io_requests() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let before = file_bytes(&t);
    let mut drv = Driver::new();
    let out_of_mem = MEM_SIZE as u64 - 256;
    let cases: Vec<(u32, u64, Vec<D>, &str)> = vec![
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (DATA, 512, false), status()],
            "IN with readable data",
        ),
        (
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (DATA, 512, true), status()],
            "OUT with writable data",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (DATA, 511, true), status()],
            "length not multiple of 512",
        ),
        (
            VIRTIO_BLK_T_OUT,
            0,
            vec![
                hdr(),
                (DATA, 256, false),
                (DATA + 0x1000, 256, false),
                status(),
            ],
            "split sectors are fine? no: total 512",
        ),
        (
            VIRTIO_BLK_T_IN,
            DISK_SECTORS,
            vec![hdr(), (DATA, 512, true), status()],
            "sector past end",
        ),
        (
            VIRTIO_BLK_T_IN,
            DISK_SECTORS - 1,
            vec![hdr(), (DATA, 1024, true), status()],
            "range past end",
        ),
        (
            VIRTIO_BLK_T_IN,
            u64::MAX,
            vec![hdr(), (DATA, 512, true), status()],
            "sector + len overflows",
        ),
        (
            VIRTIO_BLK_T_IN,
            u64::MAX >> 9,
            vec![hdr(), (DATA, 512, true), status()],
            "byte offset huge",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (out_of_mem, 512, true), status()],
            "data outside memory",
        ),
        (
            VIRTIO_BLK_T_OUT,
            0,
            vec![hdr(), (u64::MAX - 10, 512, false), status()],
            "data address wraps",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![hdr(), (DATA, SIZE_MAX + 512, true), status()],
            "segment above size_max",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 16, true), (DATA, 512, true), status()],
            "writable header",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 8, false), (DATA, 512, true), status()],
            "short header",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![(HDR, 528, false), status()],
            "header merged with data",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![(out_of_mem + 250, 16, false), (DATA, 512, true), status()],
            "header outside memory",
        ),
        (
            VIRTIO_BLK_T_IN,
            0,
            vec![status()],
            "only a status descriptor",
        ),
    ];
    for (kind, sector, descs, what) in cases {
        drv.header(HDR, kind, sector);
        let got = run(&blk, &mut drv, &descs);
        if what.starts_with("split sectors") {
            // Sanity check that the table really is about malformed requests: a 512-byte
            // write split over two descriptors is valid.
            assert_eq!(got, (OK, 1), "{what}");
            continue;
        }
        assert_eq!(got, (IOERR, 1), "{what}");
    }
    // Only the valid split write changed the disk (sector 0).
    let after = file_bytes(&t);
    assert_eq!(&after[512..], &before[512..]);
}

#[test]
fn no_status_byte_means_used_len_zero() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_IN, 0);
    let out_of_mem = MEM_SIZE as u64;
    for (descs, what) in [
        (
            vec![hdr(), (DATA, 512, true), (STATUS, 1, false)],
            "readable status",
        ),
        (
            vec![hdr(), (DATA, 512, true), (STATUS, 0, true)],
            "empty status",
        ),
        (
            vec![hdr(), (DATA, 512, true), (out_of_mem, 1, true)],
            "status outside memory",
        ),
        (vec![hdr()], "header only"),
    ] {
        drv.mem
            .write_slice(&[0xcc; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(run(&blk, &mut drv, &descs), (0xff, 0), "{what}");
        assert_eq!(
            drv.bytes(DATA, 512),
            vec![0xcc; 512],
            "{what}: no data moved"
        );
    }
}

#[test]
fn too_many_segments() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_IN, 0);
    // seg_max (254) data descriptors of 0 bytes: fine. One more: refused. Data descriptors of
    // 0 bytes keep the request inside the disk whatever their count.
    let mk = |n: usize| {
        let mut v = vec![hdr()];
        v.extend(std::iter::repeat_n((DATA, 0u32, true), n));
        v.push(status());
        v
    };
    assert_eq!(run(&blk, &mut drv, &mk(SEG_MAX as usize)), (OK, 1));
    // 255 data + 2 > 256 descriptors do not fit a direct chain; use parse_request directly.
    let descs: Vec<Descriptor> = mk(SEG_MAX as usize + 1)
        .iter()
        .map(|&(a, l, w)| Descriptor::new(a, l, if w { VRING_DESC_F_WRITE as u16 } else { 0 }, 0))
        .collect();
    let err = parse_request(&drv.mem, descs.into_iter(), DISK_SECTORS).unwrap_err();
    assert_eq!(err.error, RequestError::TooManySegments(255));
    assert_eq!(err.status, Some(GuestAddress(STATUS)));
    assert_eq!(err.error.status(), IOERR);
}

#[test]
fn parse_request_is_pure_and_exact() {
    let drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_OUT, 5);
    let d = |a: u64, l: u32, w: bool| {
        Descriptor::new(a, l, if w { VRING_DESC_F_WRITE as u16 } else { 0 }, 0)
    };
    let req = parse_request(
        &drv.mem,
        vec![d(HDR, 16, false), d(DATA, 1024, false), d(STATUS, 1, true)].into_iter(),
        DISK_SECTORS,
    )
    .unwrap();
    assert_eq!(req.kind, RequestKind::Out { sector: 5 });
    assert_eq!(
        req.data,
        vec![Buffer {
            addr: GuestAddress(DATA),
            len: 1024
        }]
    );
    assert_eq!(req.data_len, 1024);
    assert_eq!(req.status, GuestAddress(STATUS));
    // Parsing wrote nothing.
    assert_eq!(drv.bytes(DATA, 4), [0; 4]);

    assert_eq!(
        parse_request(&drv.mem, std::iter::empty(), DISK_SECTORS),
        Err(ParseFailure {
            error: RequestError::EmptyChain,
            status: None
        })
    );
    drv.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    drv.segment(DATA, 2, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let req = parse_request(
        &drv.mem,
        vec![d(HDR, 16, false), d(DATA, 16, false), d(STATUS, 1, true)].into_iter(),
        DISK_SECTORS,
    )
    .unwrap();
    assert_eq!(
        req.kind,
        RequestKind::WriteZeroes {
            sector: 2,
            num_sectors: 3,
            unmap: true
        }
    );
}

// ---- queue processing ----

#[test]
fn several_chains_in_one_pass_and_wraparound() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    let mut q = drv.queue();
    // 640 reads, in batches of 80 chains of 3 descriptors, so both the descriptor
    // table and the ring indices wrap.
    for batch in 0..8u64 {
        let mut expect = Vec::new();
        for i in 0..80u64 {
            let n = batch * 80 + i;
            let h = HDR + 16 * i;
            let data = DATA + 512 * i;
            let st = STATUS + i;
            drv.header(h, VIRTIO_BLK_T_IN, n % DISK_SECTORS);
            let head = drv.add(&[(h, 16, false), (data, 512, true), (st, 1, true)]);
            expect.push((head, data, n % DISK_SECTORS, st));
        }
        let used_before = drv.used_idx();
        assert!(blk.process_queue(&drv.mem, &mut q).unwrap());
        assert_eq!(drv.used_idx(), used_before.wrapping_add(80));
        for (i, (head, data, sector, st)) in expect.into_iter().enumerate() {
            assert_eq!(
                drv.used(used_before.wrapping_add(i as u16)),
                (u32::from(head), 513)
            );
            assert_eq!(drv.bytes(data, 512), pattern(sector * 512, 512));
            assert_eq!(drv.bytes(st, 1), [OK]);
        }
    }
    // Nothing pending: no used entries, no interrupt wanted.
    assert!(!blk.process_queue(&drv.mem, &mut q).unwrap());
}

#[test]
fn event_idx_suppresses_interrupts() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let mut drv = Driver::new();
    let mut q = drv.queue();
    q.set_event_idx(true);
    let used_event = GuestAddress(AVAIL_RING + 4 + 2 * u64::from(QUEUE_SIZE));
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    // The driver wants an interrupt only once used idx passes 2 (used_event = 1).
    drv.mem.write_obj(1u16, used_event).unwrap();
    drv.add(&[hdr(), status()]);
    assert!(!blk.process_queue(&drv.mem, &mut q).unwrap(), "used 0 -> 1");
    drv.add(&[hdr(), status()]);
    assert!(blk.process_queue(&drv.mem, &mut q).unwrap(), "used 1 -> 2");
    drv.add(&[hdr(), status()]);
    assert!(!blk.process_queue(&drv.mem, &mut q).unwrap(), "used 2 -> 3");
    // The device published avail_event = next avail, so the driver will notify.
    let avail_event: u16 = drv
        .mem
        .read_obj(GuestAddress(USED_RING + 4 + 8 * u64::from(QUEUE_SIZE)))
        .unwrap();
    assert_eq!(avail_event, 3);
    assert_eq!(drv.used_idx(), 3);
}

#[test]
fn broken_rings_do_not_hang() {
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    let drv = Driver::new();

    // The available index claims more chains than the queue holds.
    let mut q = drv.queue();
    drv.mem
        .write_obj(QUEUE_SIZE + 1, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    assert!(matches!(
        blk.process_queue(&drv.mem, &mut q),
        Err(QueueError::Queue(_))
    ));

    // An available ring whose entries lie outside guest memory: idx readable, ring not.
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    let avail = MEM_SIZE as u64 - 4;
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    drv.mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    assert!(matches!(
        blk.process_queue(&drv.mem, &mut q),
        Err(QueueError::NoProgress)
    ));

    // A descriptor loop: the chain walk stops after queue-size descriptors.
    let mut drv = Driver::new();
    let mut q = drv.queue();
    drv.header(HDR, VIRTIO_BLK_T_IN, 0);
    drv.mem
        .write_obj(
            Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 0),
            GuestAddress(DESC_TABLE),
        )
        .unwrap();
    drv.publish(0);
    assert!(blk.process_queue(&drv.mem, &mut q).unwrap());
    assert_eq!(drv.used(0), (0, 0));
}

// ---- the worker thread ----

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        crate::test_util::wait_for(cond),
        "timed out waiting for {what}"
    );
}

fn activate(
    blk: &mut Block,
    drv: &Driver,
    line: &Arc<CountingInterrupt>,
    features: u64,
) -> EventFd {
    let evt = EventFd::new(0).unwrap();
    blk.activate(ActivateContext {
        mem: drv.mem.clone(),
        acked_features: features,
        queues: vec![drv.queue()],
        queue_events: vec![evt.try_clone().unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(line.clone())),
    })
    .unwrap();
    evt
}

#[test]
fn worker_end_to_end() {
    let t = image(DISK_SECTORS);
    let mut blk = block(&t, false, None);
    let mut drv = Driver::new();
    let line = Arc::new(CountingInterrupt::default());

    // A write queued before activation is picked up without a notification.
    drv.mem
        .write_slice(&[0x5a; 1024], GuestAddress(DATA))
        .unwrap();
    drv.header(HDR, VIRTIO_BLK_T_OUT, 2);
    drv.add(&[hdr(), (DATA, 1024, false), status()]);
    let features = blk.features();
    let evt = activate(&mut blk, &drv, &line, features);
    assert!(blk.is_active());
    wait_for("first completion", || drv.used_idx() == 1);
    wait_for("interrupt", || line.count() >= 1);
    assert_eq!(drv.used(0), (0, 1));
    assert_eq!(drv.status(), OK);
    assert_eq!(&file_bytes(&t)[1024..2048], &[0x5a; 1024][..]);

    // Read it back through a notification. EVENT_IDX is on: the driver asks for an
    // interrupt once the used index passes 1.
    drv.mem
        .write_obj(
            1u16,
            GuestAddress(AVAIL_RING + 4 + 2 * u64::from(QUEUE_SIZE)),
        )
        .unwrap();
    drv.header(HDR + 0x100, VIRTIO_BLK_T_IN, 2);
    let head = drv.add(&[
        (HDR + 0x100, 16, false),
        (DATA + 0x1000, 1024, true),
        (STATUS + 1, 1, true),
    ]);
    evt.write(1).unwrap();
    wait_for("second completion", || drv.used_idx() == 2);
    assert_eq!(drv.used(1), (u32::from(head), 1025));
    assert_eq!(drv.bytes(DATA + 0x1000, 1024), vec![0x5a; 1024]);
    wait_for("second interrupt", || line.count() >= 2);

    // Activating twice is refused; reset drops the worker's queue and allows a fresh
    // activation.
    let again = blk.activate(ActivateContext {
        mem: drv.mem.clone(),
        acked_features: 0,
        queues: vec![drv.queue()],
        queue_events: vec![EventFd::new(0).unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(line.clone())),
    });
    assert!(matches!(again, Err(ActivateError::BadConfig(_))));
    blk.reset();
    assert!(!blk.is_active());
    // After reset, notifications are not served.
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    drv.add(&[hdr(), status()]);
    evt.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(drv.used_idx(), 2);

    // A fresh driver (after reset the rings start over), and the file is still open.
    let mut drv = Driver::new();
    let evt = activate(&mut blk, &drv, &line, 0);
    drv.header(HDR, VIRTIO_BLK_T_IN, 2);
    drv.add(&[hdr(), (DATA, 512, true), status()]);
    evt.write(1).unwrap();
    wait_for("completion after re-activation", || drv.used_idx() == 1);
    assert_eq!(drv.bytes(DATA, 512), vec![0x5a; 512]);
    // Dropping an active device stops its worker (the test would hang otherwise).
    drop(blk);
}

/// A device whose worker is busy with a 1 GiB write-zeroes that the file system cannot do
/// in one call: the image lives in `/dev/shm` (tmpfs, which has no `FALLOC_FL_ZERO_RANGE`),
/// so the worker writes zeroes 64 KiB at a time. Returns the image, the device, the driver
/// and the time the request was seen running.
fn busy_with_write_zeroes() -> (TempFile, Block, Driver) {
    let t = TempFile::new_in(std::path::Path::new("/dev/shm")).unwrap();
    let sectors = u64::from(MAX_WRITE_ZEROES_SECTORS);
    t.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
    let zero_range = vmm_sys_util::fallocate::fallocate(
        t.as_file(),
        vmm_sys_util::fallocate::FallocateMode::ZeroRange,
        true,
        0,
        4096,
    );
    assert!(
        zero_range.is_err(),
        "/dev/shm zeroes ranges itself: this test needs a file system that cannot"
    );
    let mut blk = block(&t, false, None);
    let mut drv = Driver::new();
    let line = Arc::new(CountingInterrupt::default());
    let evt = activate(&mut blk, &drv, &line, 0);
    drv.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    drv.segment(DATA, 0, MAX_WRITE_ZEROES_SECTORS, 0);
    drv.add(&[hdr(), (DATA, 16, false), status()]);
    evt.write(1).unwrap();
    use std::os::unix::fs::MetadataExt;
    wait_for("the write-zeroes to start", || {
        t.as_file().metadata().unwrap().blocks() > 0
    });
    (t, blk, drv)
}

/// Bytes of `t` actually written (allocated), in MiB.
fn allocated_mib(t: &TempFile) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (t.as_file().metadata().unwrap().blocks() * 512) >> 20
}

/// A reset during a long write-zeroes returns at once (it runs on the vCPU thread that
/// wrote `Status`), the request gives up between two chunks, and the device takes a fresh
/// activation and serves it at once.
#[test]
fn reset_during_a_long_write_zeroes_does_not_wait_for_it() {
    let (t, mut blk, _drv) = busy_with_write_zeroes();
    let start = Instant::now();
    blk.reset();
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_millis(50),
        "reset waited {waited:?}"
    );
    assert!(!blk.is_active());

    let mut drv = Driver::new();
    let line = Arc::new(CountingInterrupt::default());
    let evt = activate(&mut blk, &drv, &line, 0);
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    drv.add(&[hdr(), status()]);
    evt.write(1).unwrap();
    wait_for("a request after the reset", || drv.used_idx() == 1);
    let written = allocated_mib(&t);
    assert!(
        written < 1024,
        "the write-zeroes ran to its end ({written} MiB) instead of giving up"
    );
}

/// Dropping a device (the VM ends) during a long write-zeroes stops its worker promptly.
#[test]
fn stop_while_a_request_runs() {
    let (t, blk, _drv) = busy_with_write_zeroes();
    let start = Instant::now();
    drop(blk);
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(2), "stopping took {waited:?}");
    let written = allocated_mib(&t);
    assert!(
        written < 1024,
        "the write-zeroes ran to its end ({written} MiB)"
    );
}

/// Pause waits for the request in progress (a request boundary), then the worker serves
/// nothing until resume.
#[test]
fn pause_parks_the_worker_at_a_request_boundary() {
    let t = image(DISK_SECTORS);
    let mut blk = block(&t, false, None);
    let mut drv = Driver::new();
    let line = Arc::new(CountingInterrupt::default());
    let evt = activate(&mut blk, &drv, &line, 0);
    let control = blk.worker().unwrap();
    assert!(
        control.pause(Duration::from_secs(5)).unwrap(),
        "did not park"
    );
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    drv.add(&[hdr(), status()]);
    evt.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(drv.used_idx(), 0, "a paused worker served a request");
    control.resume().unwrap();
    wait_for("the request after resume", || drv.used_idx() == 1);
    // Pausing twice, resuming twice: harmless.
    assert!(control.pause(Duration::from_secs(5)).unwrap());
    assert!(control.pause(Duration::from_secs(5)).unwrap());
    control.resume().unwrap();
    control.resume().unwrap();
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    drv.add(&[hdr(), status()]);
    evt.write(1).unwrap();
    wait_for("a request after pausing twice", || drv.used_idx() == 2);
}

#[test]
fn activate_checks_its_context() {
    let t = image(DISK_SECTORS);
    let mut blk = block(&t, false, None);
    let drv = Driver::new();
    let line: Arc<dyn Interrupt> = Arc::new(CountingInterrupt::default());
    let ctx = |queues: Vec<Queue>, n_evts: usize| ActivateContext {
        mem: drv.mem.clone(),
        acked_features: 0,
        queues,
        queue_events: (0..n_evts).map(|_| EventFd::new(0).unwrap()).collect(),
        interrupt: Arc::new(VirtioInterrupt::new(line.clone())),
    };
    assert!(matches!(
        blk.activate(ctx(vec![], 0)),
        Err(ActivateError::BadConfig(_))
    ));
    assert!(matches!(
        blk.activate(ctx(vec![drv.queue(), drv.queue()], 2)),
        Err(ActivateError::BadConfig(_))
    ));
    assert!(matches!(
        blk.activate(ctx(vec![drv.queue()], 0)),
        Err(ActivateError::BadConfig(_))
    ));
    let mut not_ready = drv.queue();
    not_ready.set_ready(false);
    assert!(matches!(
        blk.activate(ctx(vec![not_ready], 1)),
        Err(ActivateError::QueueNotReady(0))
    ));
    assert!(!blk.is_active());
    blk.activate(ctx(vec![drv.queue()], 1)).unwrap();
    assert!(blk.is_active());
    blk.reset();
    // Reset twice is harmless.
    blk.reset();
}

#[test]
fn image_grown_or_shrunk_behind_our_back() {
    // The disk shrinks after open: reads past the new end fail with IOERR, not a hang.
    let t = image(DISK_SECTORS);
    let blk = block(&t, false, None);
    t.as_file().set_len(512).unwrap();
    let mut drv = Driver::new();
    drv.header(HDR, VIRTIO_BLK_T_IN, 10);
    let (st, _) = run(&blk, &mut drv, &[hdr(), (DATA, 512, true), status()]);
    assert_eq!(st, IOERR);
}

/// A block device as the image: capacity comes from BLKGETSIZE64, I/O and discard work.
/// Needs a scratch block device whose contents may be destroyed, e.g. a loop device:
/// `truncate -s 1M /tmp/x.img && losetup -f --show /tmp/x.img`, then
/// `MINIVMM_TEST_BLOCKDEV=/dev/loopN cargo test -p devices block_device -- --ignored`.
#[test]
#[ignore = "needs a scratch block device in MINIVMM_TEST_BLOCKDEV"]
fn block_device_image() {
    let path = std::env::var("MINIVMM_TEST_BLOCKDEV").expect("MINIVMM_TEST_BLOCKDEV not set");
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let size = dev.metadata().unwrap().len();
    assert_eq!(size, 0, "metadata does not give a block device's size");
    let blk = Block::new(BlockConfig {
        path: path.clone().into(),
        read_only: false,
        serial: None,
        limit: Default::default(),
    })
    .unwrap();
    let end = std::fs::File::open(&path)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .unwrap();
    assert!(end > 0);
    assert_eq!(blk.capacity(), end / SECTOR_SIZE);

    let mut drv = Driver::new();
    drv.mem
        .write_slice(&[0x77; 1024], GuestAddress(DATA))
        .unwrap();
    drv.header(HDR, VIRTIO_BLK_T_OUT, 4);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 1024, false), status()]),
        (OK, 1)
    );
    drv.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&blk, &mut drv, &[hdr(), status()]), (OK, 1));
    let mut back = vec![0u8; 1024];
    dev.read_exact_at(&mut back, 4 * 512).unwrap();
    assert_eq!(back, vec![0x77; 1024]);
    drv.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    drv.segment(DATA + 0x1000, 4, 2, 0);
    assert_eq!(
        run(
            &blk,
            &mut drv,
            &[hdr(), (DATA + 0x1000, 16, false), status()]
        ),
        (OK, 1)
    );
    drv.header(HDR, VIRTIO_BLK_T_IN, 4);
    assert_eq!(
        run(&blk, &mut drv, &[hdr(), (DATA, 1024, true), status()]),
        (OK, 1025)
    );
    assert_eq!(drv.bytes(DATA, 1024), vec![0; 1024]);
    drv.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    drv.segment(DATA + 0x1000, 0, 8, 0);
    assert_eq!(
        run(
            &blk,
            &mut drv,
            &[hdr(), (DATA + 0x1000, 16, false), status()]
        ),
        (OK, 1)
    );
}

#[test]
fn a_broken_ring_makes_the_worker_ask_for_a_reset_and_stop_using_it() {
    let t = image(DISK_SECTORS);
    let mut blk = block(&t, false, None);
    let drv = Driver::new();
    let line = Arc::new(CountingInterrupt::default());
    let interrupt = Arc::new(VirtioInterrupt::new(line.clone()));
    let evt = EventFd::new(0).unwrap();
    blk.activate(ActivateContext {
        mem: drv.mem.clone(),
        acked_features: 0,
        queues: vec![drv.queue()],
        queue_events: vec![evt.try_clone().unwrap()],
        interrupt: interrupt.clone(),
    })
    .unwrap();
    // The available index claims more chains than the queue holds.
    drv.mem
        .write_obj(QUEUE_SIZE + 1, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    evt.write(1).unwrap();
    wait_for("DEVICE_NEEDS_RESET", || interrupt.needs_reset());
    wait_for("config interrupt", || {
        interrupt.status() & crate::virtio::VIRTIO_MMIO_INT_CONFIG != 0
    });
    let irqs = line.count();
    // Repaired or not, the ring is not looked at again before a reset.
    drv.mem
        .write_obj(0u16, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    evt.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(line.count(), irqs);
    // The transport's reset clears the request along with the interrupt status.
    blk.reset();
    interrupt.reset();
    assert!(!interrupt.needs_reset());
}
