//! The Intel MultiProcessor Specification (1.4) table: how the guest finds its CPUs and
//! its interrupt controller without ACPI.
//!
//! # The hardware concept
//! A PC guest has to discover how many CPUs it has, where its I/O APIC is, and which
//! interrupt line each legacy device uses. Firmware describes that in ACPI tables or, in the
//! older and much smaller format used here, in the *MP table*:
//!
//! - the **MP floating pointer** (16 bytes, signature `_MP_`), which Linux finds by
//!   scanning, among other places, the last KiB of base memory (`0x9fc00`, the EBDA), and
//!   which points at
//! - the **MP configuration table** (signature `PCMP`): a 44-byte header followed by
//!   entries: one per processor (its local APIC id; the *bootstrap processor* flag on
//!   CPU 0), one per bus (a single "ISA" bus here), one per I/O APIC, one per I/O
//!   interrupt (bus IRQ -> I/O APIC pin) and the local interrupts (LINT0/LINT1 pins of every
//!   local APIC).
//!
//! Both structures carry a checksum byte chosen so that all their bytes add up to 0 (mod
//! 256); Linux ignores a table whose sum is not zero.
//!
//! minivmm writes both at [`EBDA_START`]; the e820 map reserves `[EBDA_START,
//! LOW_RAM_END)` so the kernel does not reuse that memory. The area is 1 KiB, which bounds
//! the number of CPUs ([`max_cpus`]).
//!
//! # Interrupt routing
//! ISA IRQ *n* is described as wired to I/O APIC pin *n* for every *n*, IRQ 0 included.
//! That matches KVM's default GSI routing for the in-kernel irqchip
//! (`kvm_setup_default_irq_routing`: GSI *n* -> PIC pin *n* and IOAPIC pin *n*), which is
//! where the in-kernel PIT delivers its interrupt (GSI 0), and it is what Firecracker's MP
//! table does too. Real chipsets (and QEMU, which installs its own GSI 0 -> pin 2 route
//! and an ACPI interrupt source override) wire the PIT to pin 2 instead; a VMM that copies
//! QEMU's routing must change the IRQ 0 entry here to match. Linux takes the table at its
//! word: `find_isa_irq_pin(0, mp_INT)` gives the pin its `check_timer()` uses.
//!
//! LINT0 of every local APIC is `ExtINT` (the 8259 PIC's output, "virtual wire" mode) and
//! LINT1 is NMI, the standard PC wiring.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{EBDA_START, IOAPIC_START, IRQ_MAX, LAPIC_START, LOW_RAM_END};
use crate::GuestMemoryMmap;

/// Signature of the floating pointer structure.
pub const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
/// Signature of the configuration table.
pub const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP specification revision written in both structures (1.4).
pub const MP_SPEC_REV: u8 = 4;
/// Local APIC version reported for each CPU (an integrated xAPIC, as KVM emulates).
pub const APIC_VERSION: u8 = 0x14;
/// I/O APIC version (KVM's in-kernel IOAPIC reports 0x11).
pub const IOAPIC_VERSION: u8 = 0x11;

/// Size of the floating pointer structure.
pub const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
pub const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry.
pub const MPC_CPU_SIZE: usize = 20;
/// Size of every other entry type (bus, IOAPIC, I/O and local interrupt).
pub const MPC_SMALL_ENTRY_SIZE: usize = 8;

/// Entry type: processor.
pub const MP_PROCESSOR: u8 = 0;
/// Entry type: bus.
pub const MP_BUS: u8 = 1;
/// Entry type: I/O APIC.
pub const MP_IOAPIC: u8 = 2;
/// Entry type: I/O interrupt assignment.
pub const MP_INTSRC: u8 = 3;
/// Entry type: local interrupt assignment.
pub const MP_LINTSRC: u8 = 4;

/// Interrupt type: vectored interrupt from the I/O APIC.
pub const MP_INT: u8 = 0;
/// Interrupt type: non-maskable interrupt.
pub const MP_NMI: u8 = 1;
/// Interrupt type: external (8259 PIC) interrupt.
pub const MP_EXTINT: u8 = 3;

/// Processor flag: this CPU is usable.
pub const CPU_ENABLED: u8 = 1 << 0;
/// Processor flag: this is the bootstrap processor.
pub const CPU_BOOTPROCESSOR: u8 = 1 << 1;
/// I/O APIC flag: usable.
pub const IOAPIC_ENABLED: u8 = 1 << 0;

/// CPU signature in processor entries: family 6 (what Linux only prints).
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX-style feature flags in processor entries: FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Bus id of the single ISA bus.
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs" in local interrupt entries.
const ALL_LOCAL_APICS: u8 = 0xff;

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Zero CPUs were requested.
    #[error("MP table: a VM needs at least one CPU")]
    NoCpus,
    /// The table for this many CPUs does not fit the EBDA.
    #[error("MP table: {num_cpus} CPUs do not fit in the {EBDA_START:#x}..{LOW_RAM_END:#x} area (at most {max})")]
    TooManyCpus {
        /// What was asked for.
        num_cpus: u8,
        /// The most that fit.
        max: usize,
    },
    /// `irq_max` is beyond the last I/O APIC pin.
    #[error("MP table: IRQ {0} is beyond the I/O APIC's last pin ({IRQ_MAX})")]
    IrqOutOfRange(u32),
    /// Guest memory could not be written.
    #[error("MP table: cannot write guest memory at {EBDA_START:#x}: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Little-endian byte writer for the table's packed structures.
#[derive(Default)]
struct ByteWriter(Vec<u8>);

impl ByteWriter {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// The byte that makes `bytes` (with the checksum byte still 0) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

fn table_size(num_cpus: usize, num_irqs: usize) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + num_cpus * MPC_CPU_SIZE
        + MPC_SMALL_ENTRY_SIZE * (1 /* bus */ + 1 /* ioapic */ + num_irqs + 2/* lint */)
}

/// How many CPUs fit in the EBDA area when IRQs `0..=IRQ_MAX` are described.
pub fn max_cpus() -> usize {
    let room = (LOW_RAM_END - EBDA_START) as usize - table_size(0, IRQ_MAX as usize + 1);
    room / MPC_CPU_SIZE
}

/// Writes the MP floating pointer and configuration table at [`EBDA_START`] for
/// `num_cpus` CPUs (local APIC id = CPU index, CPU 0 is the bootstrap processor), an
/// I/O APIC with id `num_cpus` at [`IOAPIC_START`], and ISA IRQs `0..=irq_max` each wired to
/// the I/O APIC pin of the same number (pass [`IRQ_MAX`] normally).
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8, irq_max: u32) -> Result<(), Error> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    if irq_max > IRQ_MAX {
        return Err(Error::IrqOutOfRange(irq_max));
    }
    let irq_max = irq_max as u8; // <= 23
    let num_irqs = usize::from(irq_max) + 1;
    let total = table_size(usize::from(num_cpus), num_irqs);
    if total > (LOW_RAM_END - EBDA_START) as usize {
        return Err(Error::TooManyCpus {
            num_cpus,
            max: max_cpus(),
        });
    }
    let table_addr = EBDA_START + MPF_SIZE as u64;
    let ioapic_id = num_cpus; // the first id after the CPUs' local APIC ids

    // Entries, after the header.
    let mut entries = ByteWriter::default();
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries
            .u8(MP_PROCESSOR)
            .u8(cpu) // local APIC id
            .u8(APIC_VERSION)
            .u8(flags)
            .u32(CPU_SIGNATURE)
            .u32(CPU_FEATURES)
            .u32(0)
            .u32(0); // reserved
    }
    entries.u8(MP_BUS).u8(ISA_BUS_ID).bytes(b"ISA   ");
    entries
        .u8(MP_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(IOAPIC_ENABLED)
        .u32(IOAPIC_START as u32);
    for irq in 0..=irq_max {
        entries
            .u8(MP_INTSRC)
            .u8(MP_INT)
            .u16(0) // polarity/trigger: conforms to the bus (ISA: edge, active high)
            .u8(ISA_BUS_ID)
            .u8(irq) // source bus IRQ
            .u8(ioapic_id)
            .u8(irq); // destination I/O APIC pin
    }
    for (kind, pin) in [(MP_EXTINT, 0u8), (MP_NMI, 1u8)] {
        entries
            .u8(MP_LINTSRC)
            .u8(kind)
            .u16(0)
            .u8(ISA_BUS_ID)
            .u8(0)
            .u8(ALL_LOCAL_APICS)
            .u8(pin); // LINT0 / LINT1
    }
    let entry_count = u16::from(num_cpus) + 2 + u16::from(irq_max) + 1 + 2;

    // Header, then checksum over header + entries.
    let table_len = (MPC_HEADER_SIZE + entries.0.len()) as u16;
    let mut table = ByteWriter::default();
    table
        .bytes(MPC_SIGNATURE)
        .u16(table_len)
        .u8(MP_SPEC_REV)
        .u8(0) // checksum, filled below
        .bytes(b"MINIVMM ") // OEM id, 8 bytes
        .bytes(b"000000000000") // product id, 12 bytes
        .u32(0) // OEM table pointer
        .u16(0) // OEM table size
        .u16(entry_count)
        .u32(LAPIC_START as u32)
        .u16(0) // extended table length
        .u8(0) // extended table checksum
        .u8(0) // reserved
        .bytes(&entries.0);
    table.0[7] = checksum(&table.0);

    let mut mpf = ByteWriter::default();
    mpf.bytes(MPF_SIGNATURE)
        .u32(table_addr as u32)
        .u8(1) // length in 16-byte units
        .u8(MP_SPEC_REV)
        .u8(0) // checksum, filled below
        .u8(0) // feature 1: 0 = a configuration table is present
        .u8(0) // feature 2: bit 7 clear = virtual wire mode, no IMCR
        .bytes(&[0; 3]);
    mpf.0[10] = checksum(&mpf.0);

    debug_assert_eq!(mpf.0.len() + table.0.len(), total);
    mem.write_slice(&mpf.0, GuestAddress(EBDA_START))
        .map_err(Error::Write)?;
    mem.write_slice(&table.0, GuestAddress(table_addr))
        .map_err(Error::Write)?;
    log::debug!("MP table: {num_cpus} CPUs, IRQs 0..={irq_max}, {total} bytes at {EBDA_START:#x}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::{le16, le32, mem, read, sum};

    /// Parsed-back table: the entries grouped by type.
    #[derive(Default, Debug)]
    struct Parsed {
        cpus: Vec<(u8, u8)>,           // (apic id, flags)
        buses: Vec<Vec<u8>>,           // bus type strings
        ioapics: Vec<(u8, u8, u32)>,   // (id, version, address)
        intsrc: Vec<(u8, u8, u8, u8)>, // (type, src irq, dst apic, dst pin)
        lint: Vec<(u8, u8, u8)>,       // (type, dst apic, lint pin)
    }

    /// Parses the structures the way Linux's `smp_scan_config`/`smp_read_mpc` do.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let mpf = read(mem, EBDA_START, MPF_SIZE);
        assert_eq!(&mpf[0..4], MPF_SIGNATURE);
        assert_eq!(mpf[8], 1);
        assert_eq!(mpf[9], 4);
        assert_eq!(sum(&mpf), 0, "floating pointer checksum");
        let table_addr = u64::from(le32(&mpf, 4));
        let hdr = read(mem, table_addr, MPC_HEADER_SIZE);
        assert_eq!(&hdr[0..4], MPC_SIGNATURE);
        let len = usize::from(le16(&hdr, 4));
        let table = read(mem, table_addr, len);
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert_eq!(le32(&table, 36), LAPIC_START as u32);
        assert!(table_addr + len as u64 <= LOW_RAM_END);
        let count = le16(&table, 34);
        let mut p = Parsed::default();
        let mut off = MPC_HEADER_SIZE;
        for _ in 0..count {
            let e = &table[off..];
            match e[0] {
                MP_PROCESSOR => {
                    p.cpus.push((e[1], e[3]));
                    assert_eq!(e[2], APIC_VERSION);
                    off += MPC_CPU_SIZE;
                    continue;
                }
                MP_BUS => p.buses.push(e[2..8].to_vec()),
                MP_IOAPIC => p.ioapics.push((e[1], e[2], le32(e, 4))),
                MP_INTSRC => p.intsrc.push((e[1], e[5], e[6], e[7])),
                MP_LINTSRC => p.lint.push((e[1], e[6], e[7])),
                t => panic!("unknown entry type {t}"),
            }
            off += MPC_SMALL_ENTRY_SIZE;
        }
        assert_eq!(off, len, "entries fill the table exactly");
        p
    }

    #[test]
    fn tables_for_1_2_8_cpus() {
        for n in [1u8, 2, 8] {
            let mem = mem();
            setup_mptable(&mem, n, IRQ_MAX).unwrap();
            let p = parse(&mem);
            assert_eq!(p.cpus.len(), usize::from(n));
            for (i, (id, flags)) in p.cpus.iter().enumerate() {
                assert_eq!(usize::from(*id), i);
                let bsp = if i == 0 { CPU_BOOTPROCESSOR } else { 0 };
                assert_eq!(*flags, CPU_ENABLED | bsp);
            }
            assert_eq!(p.buses, vec![b"ISA   ".to_vec()]);
            assert_eq!(p.ioapics, vec![(n, 0x11, 0xfec0_0000)]);
            assert_eq!(p.intsrc.len(), 24);
            for (i, (kind, src, dst, pin)) in p.intsrc.iter().enumerate() {
                assert_eq!(
                    (*kind, usize::from(*src), *dst, usize::from(*pin)),
                    (MP_INT, i, n, i)
                );
            }
            assert_eq!(p.lint, vec![(MP_EXTINT, 0xff, 0), (MP_NMI, 0xff, 1)]);
        }
    }

    #[test]
    fn fewer_irqs() {
        let mem = mem();
        setup_mptable(&mem, 1, 15).unwrap();
        assert_eq!(parse(&mem).intsrc.len(), 16);
    }

    #[test]
    fn limits() {
        let mem = mem();
        assert!(matches!(
            setup_mptable(&mem, 0, IRQ_MAX),
            Err(Error::NoCpus)
        ));
        assert!(matches!(
            setup_mptable(&mem, 2, IRQ_MAX + 1),
            Err(Error::IrqOutOfRange(24))
        ));
        let max = max_cpus();
        assert_eq!(max, 37);
        setup_mptable(&mem, max as u8, IRQ_MAX).unwrap();
        assert_eq!(parse(&mem).cpus.len(), max);
        let err = setup_mptable(&mem, max as u8 + 1, IRQ_MAX).unwrap_err();
        assert!(err.to_string().contains("at most 37"), "{err}");
    }

    #[test]
    fn memory_too_small() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1, IRQ_MAX),
            Err(Error::Write(_))
        ));
    }
}
