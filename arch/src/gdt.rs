//! Segment descriptors and the boot GDT.
//!
//! # The hardware concept
//! x86 still has *segmentation*. Every memory access goes through a segment register (CS for
//! code, SS for the stack, DS/ES/FS/GS for data). A segment register holds a 16-bit
//! *selector* — `index * 8 | table | privilege` — that names an 8-byte *descriptor* in the
//! Global Descriptor Table (GDT). When a selector is loaded, the CPU copies base, limit and
//! access rights from the descriptor into a hidden part of the register.
//!
//! In 64-bit mode base and limit are ignored for CS/DS/ES/SS (memory is flat), but the
//! descriptor still matters: the `L` bit of the CS descriptor is what makes the CPU run
//! 64-bit code, and the privilege level (DPL) decides the ring.
//!
//! A descriptor packs its fields in a historical, split layout:
//! ```text
//! bits 63..56  base 31:24          bits 55..52  flags: G, D/B, L, AVL
//! bits 51..48  limit 19:16         bits 47..40  access: P, DPL(2), S, type(4)
//! bits 39..16  base 23:0           bits 15..0   limit 15:0
//! ```
//! `gdt_entry` takes the flags and access byte as one 16-bit value laid out like bits
//! 55..40 (`0xa09b` = G|L, P|S|code exec/read/accessed), which is how most VMMs write it.
//!
//! KVM does not read the GDT when user space sets the segment registers
//! (`KVM_SET_SREGS` takes the hidden parts directly, as [`kvm_segment`]s), but the guest
//! reads the GDT as soon as it reloads a selector, so both must agree:
//! [`kvm_segment_from_gdt`] derives one from the other.
//!
//! # The boot GDT minivmm writes
//! The 64-bit boot protocol (Linux `Documentation/arch/x86/boot.rst`, "64-bit Boot
//! Protocol") says: "a GDT must be loaded with the descriptors for selectors
//! `__BOOT_CS`(0x10) and `__BOOT_DS`(0x18); both descriptors must be 4G flat segment ...
//! CS must be `__BOOT_CS` and DS, ES, SS must be `__BOOT_DS`". In practice the kernel
//! loads its own GDT right away and any flat selectors work, but minivmm follows the
//! document and mirrors the kernel's own boot GDT (`arch/x86/boot/compressed/head_64.S`):
//!
//! | selector | slot | descriptor |
//! |----------|------|------------|
//! | 0x00 | 0 | null (required by the CPU) |
//! | 0x08 | 1 | unused (null) |
//! | 0x10 | 2 | 64-bit code, ring 0 ([`BOOT_CS`]) |
//! | 0x18 | 3 | flat read/write data, ring 0 ([`BOOT_DS`]) |
//! | 0x20 | 4-5 | busy 64-bit TSS, 16 bytes in long mode ([`BOOT_TSS`]) |
//!
//! The TSS only exists because the CPU requires TR to hold a usable TSS in long mode; it
//! is never used before Linux installs its own (no privilege change happens before that).

use kvm_bindings::kvm_segment;

use crate::layout::BOOT_GDT_MAX;

/// Selector of the 64-bit code segment (`__BOOT_CS` in Linux).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the flat data segment (`__BOOT_DS` in Linux).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the task-state segment (`__BOOT_TSS` in Linux).
pub const BOOT_TSS: u16 = 0x20;

/// Flags+access of a 64-bit ring-0 code segment: G, L; present, S=1, type 0xb
/// (execute/read, accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags+access of a flat ring-0 data segment: G, D/B (32-bit); present, S=1, type 0x3
/// (read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags+access of a busy 64-bit TSS: present, S=0 (system), type 0xb (busy TSS).
pub const TSS_FLAGS: u16 = 0x008b;
/// Limit of the TSS: the architectural minimum of 104 bytes, minus one.
pub const TSS_LIMIT: u32 = 0x67;

/// Encodes one 8-byte segment descriptor.
///
/// `flags` holds descriptor bits 55..40: the G/D/L/AVL nibble in bits 15..12 and the access
/// byte in bits 7..0 (bits 11..8 are the limit's top nibble and are taken from `limit`).
/// `limit` is the 20-bit raw limit (in 4 KiB units when G is set).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT, slot by slot (see the module docs for the layout).
pub fn boot_gdt() -> [u64; BOOT_GDT_MAX] {
    [
        0,
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
        0, // upper half of the 16-byte TSS descriptor: base 63:32 = 0
    ]
}

/// Decodes a descriptor into the form `KVM_SET_SREGS` wants for a segment register
/// loaded with selector `table_index * 8` (GDT, RPL 0).
///
/// The limit is returned in bytes (scaled by 4 KiB when G is set), as KVM expects.
/// A descriptor whose present bit is clear gives an unusable segment.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: if present == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        // The classic flat 64-bit code and data descriptors.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        // Linux's own __BOOT_CS of the 32-bit protocol: flat 32-bit code, not accessed.
        assert_eq!(gdt_entry(0xc09a, 0, 0xfffff), 0x00cf_9a00_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, TSS_LIMIT), 0x0000_8b00_0000_0067);
        // Base bits land in both split fields.
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn decode_code64() {
        let seg = kvm_segment_from_gdt(0x00af_9b00_0000_ffff, 2);
        assert_eq!(seg.selector, BOOT_CS);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(
            (seg.present, seg.dpl, seg.s, seg.l, seg.db, seg.g),
            (1, 0, 1, 1, 0, 1)
        );
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn decode_data_tss_and_null() {
        let data = kvm_segment_from_gdt(gdt_entry(DATA_FLAGS, 0, 0xfffff), 3);
        assert_eq!(data.selector, BOOT_DS);
        assert_eq!((data.type_, data.db, data.l, data.s), (3, 1, 0, 1));
        let tss = kvm_segment_from_gdt(gdt_entry(TSS_FLAGS, 0, TSS_LIMIT), 4);
        assert_eq!(tss.selector, BOOT_TSS);
        assert_eq!((tss.type_, tss.s, tss.g, tss.limit), (0xb, 0, 0, 0x67));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn encode_decode_round_trip() {
        for &(flags, base, limit) in &[
            (0xc093u16, 0xdead_b000u32, 0x12345u32),
            (0x0089, 0x0010_0000, 0x0ffff),
            (0x40fb, 0xffff_ffff, 0xfffff),
        ] {
            let seg = kvm_segment_from_gdt(gdt_entry(flags, base, limit), 7);
            assert_eq!(seg.base, u64::from(base));
            let g = flags >> 15 == 1;
            let expect = if g { (limit << 12) | 0xfff } else { limit };
            assert_eq!(seg.limit, expect);
            assert_eq!(seg.type_, (flags & 0xf) as u8);
            assert_eq!(seg.dpl, ((flags >> 5) & 3) as u8);
        }
    }

    #[test]
    fn boot_gdt_matches_selectors() {
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[usize::from(BOOT_CS / 8)], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[usize::from(BOOT_DS / 8)], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[usize::from(BOOT_TSS / 8)] >> 40 & 0xff, 0x8b);
    }
}
