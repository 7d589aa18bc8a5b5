//! Fuzz virtio-blk request handling: the input becomes guest memory — descriptor table,
//! available ring and every buffer — and the block device drains the queue synchronously
//! (`Block::process_queue`, the code its worker thread runs) against a small temp image.
//!
//! Input layout: byte 0 selects options (bit 0: read-only disk; bit 1: EVENT_IDX; bit 2:
//! clamp descriptor addresses and lengths to 4 KiB so chains reach the deep checks more
//! often; bits 3..4: queue size 2^(1+n), 2 to 16), bytes 1..3 the device's starting
//! `next_avail`, the rest is copied to guest memory from address 0: descriptor table at 0,
//! available ring at 0x100, used ring at 0x140, buffers anywhere.
//!
//! Besides "no panic, no hang, no access outside guest memory" (the latter enforced by
//! vm-memory's checked accessors and AddressSanitizer), it checks that every used entry
//! corresponds to a popped chain.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 0x1_0000;
// A compact layout (queues of at most 16 entries), so short inputs already reach the rings.
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x140;
/// Image size: 64 sectors.
const IMAGE_LEN: u64 = 64 * 512;

fn image(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "minivmm-fuzz-blk-{}-{name}.img",
        std::process::id()
    ));
    let f = std::fs::File::create(&path).expect("create fuzz image");
    f.set_len(IMAGE_LEN).expect("size fuzz image");
    path
}

fn devices() -> &'static (Block, Block) {
    static DEVICES: OnceLock<(Block, Block)> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let open = |name, read_only| {
            let path = image(name);
            let blk = Block::new(BlockConfig {
                path: path.clone(),
                read_only,
                serial: Some("fuzz".to_string()),
                limit: Default::default(),
            })
            .expect("open fuzz image");
            // The device keeps its file descriptor; the name is only needed to open it.
            let _ = std::fs::remove_file(&path);
            blk
        };
        (open("rw", false), open("ro", true))
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&options, rest)) = input.split_first() else {
        return;
    };
    let Some((start, contents)) = rest.split_at_checked(2) else {
        return;
    };
    let next_avail = u16::from_le_bytes([start[0], start[1]]);
    let queue_size: u16 = 1 << (1 + ((options >> 3) & 3));

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let len = contents.len().min(MEM_SIZE);
    mem.write_slice(&contents[..len], GuestAddress(0)).unwrap();

    if options & 4 != 0 {
        for i in 0..u64::from(queue_size) {
            let at = GuestAddress(DESC_TABLE + 16 * i);
            let d: Descriptor = mem.read_obj(at).unwrap();
            let clamped = Descriptor::new(d.addr().0 & 0xfff, d.len() & 0xfff, d.flags(), d.next());
            mem.write_obj(clamped, at).unwrap();
        }
    }

    let mut queue = Queue::new(256).unwrap();
    queue.set_size(queue_size);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_event_idx(options & 2 != 0);
    queue.set_next_avail(next_avail);
    queue.set_next_used(next_avail);
    queue.set_ready(true);
    assert!(queue.is_valid(&mem));

    let (rw, ro) = devices();
    let blk = if options & 1 != 0 { ro } else { rw };
    let _ = blk.process_queue(&mem, &mut queue);

    // Every chain returned to the used ring was popped from the available ring first.
    // (Nothing stronger holds in general: read requests may overwrite the rings themselves.)
    let used = queue.next_used().wrapping_sub(next_avail);
    let popped = queue.next_avail().wrapping_sub(next_avail);
    assert!(used <= popped, "used {used} > popped {popped}");
});
