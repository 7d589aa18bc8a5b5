//! A tiny AML (ACPI Machine Language) builder: just the encodings minivmm's DSDT needs.
//!
//! AML is the bytecode inside the DSDT. An OS runs an AML interpreter over it at boot and
//! gets a *namespace*: a tree of named objects (`\_SB_.COM1._HID`, `\_S5_`, ...) that
//! describe devices and hold methods the OS calls. Every function here returns the bytes of
//! one AML construct, so a table is built by nesting calls, the way ASL source nests.
//! Encodings follow the ACPI specification, chapter 20 ("ACPI Machine Language
//! Specification"); each function's documentation shows the grammar rule it implements and
//! the ASL it corresponds to. The unit tests compare the output with what the reference
//! compiler (`iasl`) produces for the same ASL.
//!
//! Recurring pieces of the grammar:
//! - **NameSeg**: exactly 4 characters, `[A-Z_][A-Z0-9_]{3}`; ASL pads short names with
//!   `_` (`_SB` is `_SB_`).
//! - **NameString**: a NameSeg, optionally preceded by `\` (0x5C, "from the root").
//! - **PkgLength**: the length of an object that contains other objects, counted from the
//!   first PkgLength byte to the end of the object (see [`pkg_length`]).
//!
//! Names are chosen by the VMM, never by the guest; a malformed name is a programming error
//! and is caught by `debug_assert!` and the unit tests.

/// `ZeroOp`: the integer 0.
pub const ZERO_OP: u8 = 0x00;
/// `OneOp`: the integer 1.
pub const ONE_OP: u8 = 0x01;
/// `NameOp`: `Name (NameString, DataRefObject)`.
pub const NAME_OP: u8 = 0x08;
/// `BytePrefix`: an 8-bit integer follows.
pub const BYTE_PREFIX: u8 = 0x0a;
/// `WordPrefix`: a 16-bit little-endian integer follows.
pub const WORD_PREFIX: u8 = 0x0b;
/// `DWordPrefix`: a 32-bit little-endian integer follows.
pub const DWORD_PREFIX: u8 = 0x0c;
/// `StringPrefix`: a NUL-terminated ASCII string follows.
pub const STRING_PREFIX: u8 = 0x0d;
/// `QWordPrefix`: a 64-bit little-endian integer follows.
pub const QWORD_PREFIX: u8 = 0x0e;
/// `ScopeOp`.
pub const SCOPE_OP: u8 = 0x10;
/// `BufferOp`.
pub const BUFFER_OP: u8 = 0x11;
/// `PackageOp`.
pub const PACKAGE_OP: u8 = 0x12;
/// `MethodOp`.
pub const METHOD_OP: u8 = 0x14;
/// `ExtOpPrefix`: the next byte selects an extended opcode.
pub const EXT_OP_PREFIX: u8 = 0x5b;
/// Extended opcode `OpRegionOp` (after [`EXT_OP_PREFIX`]).
pub const OP_REGION_OP: u8 = 0x80;
/// Extended opcode `FieldOp` (after [`EXT_OP_PREFIX`]).
pub const FIELD_OP: u8 = 0x81;
/// Extended opcode `DeviceOp` (after [`EXT_OP_PREFIX`]).
pub const DEVICE_OP: u8 = 0x82;
/// `RootChar`: a NameString starting with `\` is resolved from the namespace root.
pub const ROOT_CHAR: u8 = 0x5c;
/// `Local0Op`: the first of a method's eight local variables.
pub const LOCAL0: u8 = 0x60;
/// `StoreOp`: `Store (Source, Destination)`, ASL 2.0 `Destination = Source`.
pub const STORE_OP: u8 = 0x70;
/// `AndOp`: `And (Operand, Operand, Target)`.
pub const AND_OP: u8 = 0x7b;
/// `NotifyOp`: `Notify (Object, Value)`.
pub const NOTIFY_OP: u8 = 0x86;
/// `IfOp`.
pub const IF_OP: u8 = 0xa0;
/// `NullName`: an empty target ("store the result nowhere").
pub const NULL_NAME: u8 = 0x00;

/// Small resource descriptor "IRQ without flags byte" (tag 0x04, 2 data bytes).
pub const RES_IRQ_NO_FLAGS: u8 = 0x22;
/// Small resource descriptor "I/O port" (tag 0x08, 7 data bytes).
pub const RES_IO: u8 = 0x47;
/// Small resource descriptor "End Tag" (tag 0x0f, 1 data byte: the checksum).
pub const RES_END_TAG: u8 = 0x79;
/// Large resource descriptor "32-bit fixed memory range".
pub const RES_MEMORY32_FIXED: u8 = 0x86;
/// Large resource descriptor "extended interrupt".
pub const RES_EXTENDED_IRQ: u8 = 0x89;

/// The largest value a PkgLength can encode (28 bits).
pub const PKG_LENGTH_MAX: usize = (1 << 28) - 1;

/// Whether `seg` is a valid NameSeg: a letter or `_`, then letters, digits or `_`.
pub fn is_name_seg(seg: &[u8; 4]) -> bool {
    let lead = |c: u8| c.is_ascii_uppercase() || c == b'_';
    lead(seg[0]) && seg[1..].iter().all(|&c| lead(c) || c.is_ascii_digit())
}

/// A NameString of one segment, relative to the current scope: the 4 bytes of `seg`.
/// ASL: `COM1`.
pub fn name_seg(seg: &[u8; 4]) -> Vec<u8> {
    debug_assert!(is_name_seg(seg), "invalid AML NameSeg {seg:?}");
    seg.to_vec()
}

/// A NameString from the root: `\` (0x5C) then the segment. ASL: `\_SB`.
pub fn root_name(seg: &[u8; 4]) -> Vec<u8> {
    let mut v = vec![ROOT_CHAR];
    v.extend(name_seg(seg));
    v
}

/// Encodes a PkgLength for an object whose contents after the PkgLength are
/// `content_len` bytes long. The encoded value counts the PkgLength bytes too.
///
/// - 1 byte when the total is at most 63: bits 5..0 hold it, bits 7..6 are 0;
/// - otherwise 2 to 4 bytes: bits 7..6 of the lead byte say how many bytes follow
///   (1..=3), bits 3..0 hold the low nibble of the total, and each following byte holds
///   the next 8 bits (so 12, 20 or 28 bits in all).
///
/// Lengths above [`PKG_LENGTH_MAX`] cannot be encoded; the builders never produce them
/// (minivmm's DSDT is a few KiB) and a debug build asserts it.
pub fn pkg_length(content_len: usize) -> Vec<u8> {
    if content_len < 63 {
        return vec![(content_len + 1) as u8];
    }
    for extra in 1..=3usize {
        let total = content_len + 1 + extra;
        if total < 1 << (4 + 8 * extra) {
            let mut v = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                v.push((total >> (4 + 8 * i)) as u8);
            }
            return v;
        }
    }
    debug_assert!(false, "AML object of {content_len} bytes is too large");
    vec![0xff, 0xff, 0xff, 0xff]
}

/// An opcode (one or two bytes), a PkgLength, then `contents`: the shape of every AML
/// object that contains other objects (Scope, Device, Method, Package, Buffer, If, Field).
fn with_pkg_length(opcode: &[u8], contents: &[u8]) -> Vec<u8> {
    let mut v = opcode.to_vec();
    v.extend(pkg_length(contents.len()));
    v.extend_from_slice(contents);
    v
}

/// An integer in its shortest encoding, as `iasl` writes it: `ZeroOp` (0x00) for 0,
/// `OneOp` (0x01) for 1, otherwise `BytePrefix`/`WordPrefix`/`DWordPrefix`/`QWordPrefix`
/// followed by 1, 2, 4 or 8 little-endian bytes. ASL: `Zero`, `One`, `0x80`, `0x03C2`.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        v if v <= 0xff => vec![BYTE_PREFIX, v as u8],
        v if v <= 0xffff => {
            let mut out = vec![WORD_PREFIX];
            out.extend_from_slice(&(v as u16).to_le_bytes());
            out
        }
        v if v <= 0xffff_ffff => {
            let mut out = vec![DWORD_PREFIX];
            out.extend_from_slice(&(v as u32).to_le_bytes());
            out
        }
        v => {
            let mut out = vec![QWORD_PREFIX];
            out.extend_from_slice(&v.to_le_bytes());
            out
        }
    }
}

/// A string constant: `StringPrefix` (0x0D), the ASCII bytes, a NUL. ASL: `"LNRO0005"`.
pub fn string(s: &str) -> Vec<u8> {
    debug_assert!(s.is_ascii() && !s.contains('\0'));
    let mut v = vec![STRING_PREFIX];
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// The 32-bit compressed EISA id of a 7-character PNP id such as `PNP0501`, as
/// `EisaId ("PNP0501")` computes it: three letters of 5 bits each (`'A'` = 1) in bits
/// 14..0 of a 16-bit big-endian word, then the four hex digits as a big-endian 16-bit
/// word; stored little-endian, so `PNP0501` becomes the bytes `41 D0 05 01`.
pub fn eisa_id_value(id: &[u8; 7]) -> u32 {
    debug_assert!(id[..3].iter().all(u8::is_ascii_uppercase));
    debug_assert!(id[3..].iter().all(u8::is_ascii_hexdigit));
    let letter = |c: u8| u16::from(c.wrapping_sub(b'@') & 0x1f);
    let vendor = (letter(id[0]) << 10) | (letter(id[1]) << 5) | letter(id[2]);
    let product = id[3..].iter().fold(0u16, |acc, &c| {
        let digit = (c as char).to_digit(16).unwrap_or(0) as u16;
        (acc << 4) | digit
    });
    u32::from(vendor.swap_bytes()) | (u32::from(product.swap_bytes()) << 16)
}

/// `EisaId ("PNP0501")`: the compressed id as an integer (always a `DWordPrefix`
/// constant, since the value has bits above 16 set).
pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
    integer(u64::from(eisa_id_value(id)))
}

/// `DefName := NameOp NameString DataRefObject`. ASL: `Name (_UID, Zero)`.
pub fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut v = vec![NAME_OP];
    v.extend(name_seg(seg));
    v.extend_from_slice(value);
    v
}

/// `DefScope := ScopeOp PkgLength NameString TermList`. ASL: `Scope (_SB) { ... }`.
/// `path` is an encoded NameString ([`name_seg`] or [`root_name`]).
pub fn scope(path: &[u8], body: &[u8]) -> Vec<u8> {
    with_pkg_length(&[SCOPE_OP], &[path, body].concat())
}

/// `DefDevice := ExtOpPrefix DeviceOp PkgLength NameString TermList`.
/// ASL: `Device (COM1) { ... }`.
pub fn device(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
    with_pkg_length(
        &[EXT_OP_PREFIX, DEVICE_OP],
        &[&name_seg(seg), body].concat(),
    )
}

/// `DefMethod := MethodOp PkgLength NameString MethodFlags TermList`, where MethodFlags
/// holds the argument count in bits 2..0 and "Serialized" in bit 3 (sync level 0).
/// ASL: `Method (_EVT, 1, NotSerialized) { ... }`.
pub fn method(seg: &[u8; 4], args: u8, serialized: bool, body: &[u8]) -> Vec<u8> {
    debug_assert!(args <= 7);
    let flags = (args & 0x7) | if serialized { 1 << 3 } else { 0 };
    with_pkg_length(&[METHOD_OP], &[&name_seg(seg)[..], &[flags], body].concat())
}

/// `DefPackage := PackageOp PkgLength NumElements PackageElementList`, NumElements being
/// one byte. ASL: `Package (0x01) { 0x05 }`.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    debug_assert!(elements.len() <= 255);
    let mut contents = vec![elements.len() as u8];
    for e in elements {
        contents.extend_from_slice(e);
    }
    with_pkg_length(&[PACKAGE_OP], &contents)
}

/// `DefBuffer := BufferOp PkgLength BufferSize ByteList`, BufferSize being an integer
/// ([`integer`]). ASL: `Buffer (0x02) { 0x79, 0x00 }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    with_pkg_length(
        &[BUFFER_OP],
        &[integer(bytes.len() as u64), bytes.to_vec()].concat(),
    )
}

/// `ResourceTemplate () { ... }`: a [`buffer`] holding the resource descriptors followed
/// by an End Tag (0x79 and a checksum byte; 0 means "no checksum", which is what `iasl`
/// writes). This is the value of a `_CRS` ("current resource settings") object.
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = descriptors.concat();
    bytes.extend_from_slice(&[RES_END_TAG, 0]);
    buffer(&bytes)
}

/// I/O port descriptor (small item 0x47, 8 bytes): information byte (bit 0: the device
/// decodes 16 address bits), minimum and maximum base (u16 each), alignment, length.
/// ASL: `IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)`.
pub fn io(min: u16, max: u16, alignment: u8, length: u8) -> Vec<u8> {
    let mut v = vec![RES_IO, 0x01];
    v.extend_from_slice(&min.to_le_bytes());
    v.extend_from_slice(&max.to_le_bytes());
    v.extend_from_slice(&[alignment, length]);
    v
}

/// IRQ descriptor without flags (small item 0x22, 3 bytes): a 16-bit mask of ISA IRQs,
/// which by ISA convention are edge-triggered, active high. ASL: `IRQNoFlags () {4}`.
pub fn irq_no_flags(irq: u8) -> Vec<u8> {
    debug_assert!(irq < 16);
    let mask = 1u16 << (irq & 0xf);
    let mut v = vec![RES_IRQ_NO_FLAGS];
    v.extend_from_slice(&mask.to_le_bytes());
    v
}

/// 32-bit fixed memory range descriptor (large item 0x86, 12 bytes): u16 length 9,
/// information byte (bit 0: writable), base and length (u32 each).
/// ASL: `Memory32Fixed (ReadWrite, 0xC0001000, 0x00001000)`.
pub fn memory32_fixed(writable: bool, base: u32, length: u32) -> Vec<u8> {
    let mut v = vec![RES_MEMORY32_FIXED];
    v.extend_from_slice(&9u16.to_le_bytes());
    v.push(u8::from(writable));
    v.extend_from_slice(&base.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    v
}

/// How a device signals an interrupt line (the flags of [`interrupt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptFlags {
    /// The line is edge-triggered (else level-triggered).
    pub edge: bool,
    /// The line is active low (else active high).
    pub active_low: bool,
    /// Other devices may share the line (else exclusive).
    pub shared: bool,
}

/// Extended interrupt descriptor (large item 0x89, 9 bytes for one interrupt): u16 length
/// 6, flags byte (bit 0 consumer, bit 1 edge, bit 2 active low, bit 3 shared), the number
/// of interrupts (1), then the interrupt number (a GSI) as u32. The device is always the
/// consumer of the interrupt. ASL:
/// `Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 5 }`.
pub fn interrupt(flags: InterruptFlags, gsi: u32) -> Vec<u8> {
    let bits = 0x01
        | if flags.edge { 0x02 } else { 0 }
        | if flags.active_low { 0x04 } else { 0 }
        | if flags.shared { 0x08 } else { 0 };
    let mut v = vec![RES_EXTENDED_IRQ];
    v.extend_from_slice(&6u16.to_le_bytes());
    v.extend_from_slice(&[bits, 1]);
    v.extend_from_slice(&gsi.to_le_bytes());
    v
}

/// The address space of an [`operation_region`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegionSpace {
    /// Physical memory (`SystemMemory`, 0).
    SystemMemory = 0,
    /// x86 port I/O (`SystemIO`, 1).
    SystemIo = 1,
}

/// `DefOpRegion := ExtOpPrefix OpRegionOp NameString RegionSpace RegionOffset RegionLen`,
/// offset and length being integers. It names a range of an address space so that
/// fields can read and write it. ASL: `OperationRegion (GDST, SystemIO, 0x03C2, One)`.
pub fn operation_region(seg: &[u8; 4], space: RegionSpace, offset: u64, len: u64) -> Vec<u8> {
    let mut v = vec![EXT_OP_PREFIX, OP_REGION_OP];
    v.extend(name_seg(seg));
    v.push(space as u8);
    v.extend(integer(offset));
    v.extend(integer(len));
    v
}

/// Field access type "ByteAcc" (bits 3..0 of the field flags).
pub const FIELD_BYTE_ACC: u8 = 1;

/// `DefField := ExtOpPrefix FieldOp PkgLength NameString FieldFlags FieldList`, with
/// FieldFlags = access type (bits 3..0), lock rule (bit 4, 0 = NoLock) and update rule
/// (bits 6..5, 0 = Preserve), and each NamedField = NameSeg followed by its width in bits
/// (encoded like a PkgLength, but the value is the bit count alone).
/// ASL: `Field (GDST, ByteAcc, NoLock, Preserve) { GEVT, 8 }`.
pub fn field(region: &[u8; 4], flags: u8, fields: &[(&[u8; 4], u8)]) -> Vec<u8> {
    let mut contents = name_seg(region);
    contents.push(flags);
    for (seg, bits) in fields {
        debug_assert!(*bits < 64, "wider fields need a multi-byte length");
        contents.extend(name_seg(seg));
        contents.push(*bits);
    }
    with_pkg_length(&[EXT_OP_PREFIX, FIELD_OP], &contents)
}

/// `DefStore := StoreOp TermArg SuperName`. ASL: `Local0 = GEVT`.
pub fn store(source: &[u8], destination: &[u8]) -> Vec<u8> {
    [&[STORE_OP][..], source, destination].concat()
}

/// `DefAnd := AndOp Operand Operand Target`, with a [`NULL_NAME`] target (the result is
/// only used as a value). ASL: `(Local0 & One)`.
pub fn and(a: &[u8], b: &[u8]) -> Vec<u8> {
    [&[AND_OP][..], a, b, &[NULL_NAME]].concat()
}

/// `DefIfElse := IfOp PkgLength Predicate TermList` (no Else).
/// ASL: `If (Predicate) { ... }`.
pub fn if_then(predicate: &[u8], body: &[u8]) -> Vec<u8> {
    with_pkg_length(&[IF_OP], &[predicate, body].concat())
}

/// `DefNotify := NotifyOp NotifyObject NotifyValue`: tells the OS driver of `object`
/// that something happened (0x80 on a power button: "pressed").
/// ASL: `Notify (PWRB, 0x80)`.
pub fn notify(object: &[u8], value: u8) -> Vec<u8> {
    [&[NOTIFY_OP][..], object, &integer(value.into())].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_encodings() {
        // One byte: up to 63 in all.
        assert_eq!(pkg_length(0), vec![0x01]);
        assert_eq!(pkg_length(62), vec![63]);
        // Two bytes from 64 in all: 63 contents + 2 = 65 = 0x41 -> lead 0x41, then 0x04.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        // The GED0 device iasl encoded as `41 06`: 0x61 = 97 bytes, 95 of contents.
        assert_eq!(pkg_length(95), vec![0x41, 0x06]);
        // Largest two-byte value: 0xfff in all.
        assert_eq!(pkg_length(0xfff - 2), vec![0x4f, 0xff]);
        // Three bytes.
        assert_eq!(pkg_length(0xfff - 1), vec![0x81, 0x00, 0x01]);
        assert_eq!(pkg_length(0x12345 - 3), vec![0x85, 0x34, 0x12]);
        // Four bytes.
        assert_eq!(pkg_length(0xf_ffff - 2), vec![0xc1, 0x00, 0x00, 0x01]);
        assert_eq!(pkg_length(PKG_LENGTH_MAX - 4), vec![0xcf, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn integers_use_the_shortest_encoding() {
        assert_eq!(integer(0), vec![0x00]);
        assert_eq!(integer(1), vec![0x01]);
        assert_eq!(integer(5), vec![0x0a, 0x05]);
        assert_eq!(integer(0x3c2), vec![0x0b, 0xc2, 0x03]);
        assert_eq!(integer(0xc000_1000), vec![0x0c, 0x00, 0x10, 0x00, 0xc0]);
        assert_eq!(integer(0x1_0000_0000), vec![0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn eisa_ids() {
        // Values iasl computes for EisaId("PNP0501") and EisaId("PNP0C0C").
        assert_eq!(eisa_id_value(b"PNP0501"), 0x0105_d041);
        assert_eq!(eisa_id(b"PNP0C0C"), vec![0x0c, 0x41, 0xd0, 0x0c, 0x0c]);
    }

    #[test]
    fn names() {
        assert!(is_name_seg(b"_SB_"));
        assert!(is_name_seg(b"V031"));
        assert!(!is_name_seg(b"0ABC"));
        assert!(!is_name_seg(b"ab__"));
        assert_eq!(root_name(b"_SB_"), b"\\_SB_".to_vec());
        assert_eq!(string("AB"), vec![0x0d, b'A', b'B', 0]);
    }

    #[test]
    fn resource_descriptors() {
        assert_eq!(
            io(0x3f8, 0x3f8, 0, 8),
            vec![0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08]
        );
        assert_eq!(irq_no_flags(4), vec![0x22, 0x10, 0x00]);
        let edge = InterruptFlags {
            edge: true,
            active_low: false,
            shared: false,
        };
        assert_eq!(
            interrupt(edge, 5),
            vec![0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0, 0, 0]
        );
        let level_low_shared = InterruptFlags {
            edge: false,
            active_low: true,
            shared: true,
        };
        assert_eq!(interrupt(level_low_shared, 40)[3], 0x0d);
        // An empty template is a 2-byte buffer holding the End Tag.
        assert_eq!(
            resource_template(&[]),
            vec![0x11, 0x05, 0x0a, 0x02, 0x79, 0x00]
        );
    }
}
