//! Tests of the tables as written to guest memory, read back the way an OS finds them:
//! scan for the RSDP, follow the XSDT, then the FADT's DSDT pointer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use vm_memory::GuestAddress;

use super::tables::{fadt_offset, FADT_SIZE, SDT_HEADER_SIZE};
use super::*;
use crate::layout::{
    IOAPIC_START, LAPIC_START, VIRTIO_IRQ_END, VIRTIO_IRQ_START, VIRTIO_MMIO_START,
};

use crate::test_util::{le16, le32, le64, mem, read, sum};

/// Reads the table at `addr`, checking the header's length field and checksum.
fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let hdr = read(mem, addr, SDT_HEADER_SIZE);
    assert_eq!(&hdr[0..4], signature, "signature at {addr:#x}");
    let len = le32(&hdr, 4) as usize;
    assert!(len >= SDT_HEADER_SIZE);
    let t = read(mem, addr, len);
    assert_eq!(
        sum(&t),
        0,
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    assert!(addr + len as u64 <= crate::layout::ACPI_TABLES_END);
    t
}

/// Everything an OS would find, keyed by signature, plus the tables' addresses.
struct Found {
    tables: BTreeMap<[u8; 4], (u64, Vec<u8>)>,
}

/// Finds the RSDP the way Linux's `acpi_find_root_pointer` does (16-byte steps through
/// 0xE0000..0x100000), then follows the XSDT and the FADT.
fn discover(mem: &GuestMemoryMmap) -> Found {
    let area = read(mem, 0xe_0000, 0x2_0000);
    let off = (0..area.len())
        .step_by(16)
        .find(|&o| &area[o..o + 8] == b"RSD PTR " && sum(&area[o..o + 20]) == 0)
        .expect("RSDP found by scanning");
    assert_eq!(0xe_0000 + off as u64, ACPI_RSDP_START);
    let rsdp = &area[off..off + 36];
    assert_eq!(rsdp[15], 2, "ACPI 2.0 RSDP");
    assert_eq!(le32(rsdp, 20), 36);
    assert_eq!(sum(rsdp), 0, "extended checksum");

    let xsdt_addr = le64(rsdp, 24);
    let xsdt = table(mem, xsdt_addr, b"XSDT");
    let mut tables = BTreeMap::new();
    for entry in xsdt[SDT_HEADER_SIZE..].chunks(8) {
        let addr = le64(entry, 0);
        let sig: [u8; 4] = read(mem, addr, 4).try_into().unwrap();
        let t = table(mem, addr, &sig);
        assert!(
            tables.insert(sig, (addr, t)).is_none(),
            "one table per signature"
        );
    }
    let fadt = &tables[b"FACP"].1;
    let dsdt_addr = le64(fadt, fadt_offset::X_DSDT);
    assert_eq!(u64::from(le32(fadt, fadt_offset::DSDT)), dsdt_addr);
    let dsdt = table(mem, dsdt_addr, b"DSDT");
    tables.insert(*b"DSDT", (dsdt_addr, dsdt));
    tables.insert(*b"XSDT", (xsdt_addr, xsdt));
    Found { tables }
}

fn config(num_cpus: u8, devices: usize) -> AcpiConfig {
    AcpiConfig {
        num_cpus,
        virtio_devices: (0..devices as u64)
            .map(|i| (VIRTIO_MMIO_START + i * 0x1000, 5 + i as u32))
            .collect(),
    }
}

#[test]
fn rsdp_xsdt_and_tables_are_consistent() {
    let mem = mem();
    let rsdp = setup_acpi(&mem, &config(2, 2)).unwrap();
    assert_eq!(rsdp, GuestAddress(0xe_0000));
    let found = discover(&mem);
    let sigs: Vec<&[u8; 4]> = found.tables.keys().collect();
    assert_eq!(sigs, vec![b"APIC", b"DSDT", b"FACP", b"XSDT"]);
    // XSDT: exactly FADT and MADT, in that order.
    let xsdt = &found.tables[b"XSDT"].1;
    assert_eq!(xsdt.len(), SDT_HEADER_SIZE + 16);
    assert_eq!(le64(xsdt, 36), found.tables[b"FACP"].0);
    assert_eq!(le64(xsdt, 44), found.tables[b"APIC"].0);
    // No two tables overlap, and all are aligned.
    let mut ranges: Vec<(u64, u64)> = found
        .tables
        .values()
        .map(|(a, t)| (*a, *a + t.len() as u64))
        .collect();
    ranges.push((ACPI_RSDP_START, ACPI_RSDP_START + 36));
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "{w:x?} overlap");
        assert_eq!(w[1].0 % 16, 0);
    }
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_registers() {
    let mem = mem();
    setup_acpi(&mem, &config(1, 0)).unwrap();
    let f = &discover(&mem).tables[b"FACP"].1;
    assert_eq!(f.len(), FADT_SIZE);
    assert_eq!(f[8], 6, "FADT revision");
    assert_eq!(f[fadt_offset::MINOR_VERSION], 5);
    let flags = le32(f, fadt_offset::FLAGS);
    assert_eq!(flags, (1 << 20) | (1 << 4) | (1 << 5));
    assert_eq!(
        le16(f, fadt_offset::IAPC_BOOT_ARCH),
        (1 << 2) | (1 << 3) | (1 << 5)
    );
    // Sleep control: 8-bit port 0x3c0, byte access. Sleep status: port 0x3c1.
    assert_eq!(
        &f[fadt_offset::SLEEP_CONTROL_REG..fadt_offset::SLEEP_CONTROL_REG + 12],
        &[1, 8, 0, 1, 0xc0, 0x03, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        &f[fadt_offset::SLEEP_STATUS_REG..fadt_offset::SLEEP_STATUS_REG + 12],
        &[1, 8, 0, 1, 0xc1, 0x03, 0, 0, 0, 0, 0, 0]
    );
    // No FACS, no SCI, no legacy PM blocks (offsets 36..=111 other than the DSDT).
    assert_eq!(le32(f, 36), 0, "FIRMWARE_CTRL");
    assert_eq!(le16(f, 46), 0, "SCI_INT");
    assert!(f[48..109].iter().all(|&b| b == 0), "legacy PM fields");
    assert!(f[148..244].iter().all(|&b| b == 0), "X_ PM blocks");
    assert_eq!(&f[fadt_offset::HYPERVISOR_VENDOR..], b"MINIVMM\0");
}

/// The MADT's entries, decoded: (type, bytes) in order.
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = SDT_HEADER_SIZE + 8;
    while off < madt.len() {
        let (kind, len) = (madt[off], usize::from(madt[off + 1]));
        assert!(len >= 2 && off + len <= madt.len(), "entry at {off}");
        out.push((kind, madt[off..off + len].to_vec()));
        off += len;
    }
    assert_eq!(off, madt.len(), "entries fill the table exactly");
    out
}

#[test]
fn madt_for_1_2_8_cpus() {
    for n in [1u8, 2, 8] {
        let mem = mem();
        setup_acpi(&mem, &config(n, 1)).unwrap();
        let madt = &discover(&mem).tables[b"APIC"].1;
        assert_eq!(le32(madt, 36), LAPIC_START as u32);
        assert_eq!(le32(madt, 40), 1, "PCAT_COMPAT");
        let entries = madt_entries(madt);
        assert_eq!(entries.len(), usize::from(n) + 2);
        for (i, (kind, e)) in entries[..usize::from(n)].iter().enumerate() {
            assert_eq!(*kind, 0);
            assert_eq!(e.len(), 8);
            assert_eq!((e[2], e[3]), (i as u8, i as u8), "UID and APIC id");
            assert_eq!(le32(e, 4), 1, "enabled");
        }
        let (kind, ioapic) = &entries[usize::from(n)];
        assert_eq!(*kind, 1);
        assert_eq!(ioapic.len(), 12);
        assert_eq!(
            ioapic[2], n,
            "I/O APIC id follows the CPUs', as in the MP table"
        );
        assert_eq!(le32(ioapic, 4), IOAPIC_START as u32);
        assert_eq!(le32(ioapic, 8), 0, "GSI base");
        let (kind, nmi) = &entries[usize::from(n) + 1];
        assert_eq!(*kind, 4);
        assert_eq!(nmi, &vec![4, 6, 0xff, 0, 0, 1]);
        assert!(
            entries.iter().all(|(k, _)| *k != 2),
            "no interrupt source override: IRQ n = GSI n, like the MP table"
        );
    }
}

#[test]
fn dsdt_describes_every_virtio_device() {
    let mem = mem();
    let cfg = config(1, 3);
    setup_acpi(&mem, &cfg).unwrap();
    let dsdt = &discover(&mem).tables[b"DSDT"].1;
    for (i, (base, irq)) in cfg.virtio_devices.iter().enumerate() {
        let expected = dsdt::virtio_device(i, *base as u32, *irq);
        assert!(
            dsdt.windows(expected.len()).any(|w| w == expected),
            "device {i} in the DSDT"
        );
    }
}

#[test]
fn bad_configs_are_refused() {
    let mem = mem();
    let err = |cfg: AcpiConfig| setup_acpi(&mem, &cfg).unwrap_err();
    assert!(matches!(err(config(0, 0)), Error::CpuCount(0)));
    assert!(matches!(err(config(255, 0)), Error::CpuCount(255)));
    assert!(matches!(
        err(config(1, 33)),
        Error::TooManyDevices { count: 33 }
    ));
    for base in [0xffff_f001, u64::MAX - 10, 0x1_0000_0000] {
        let cfg = AcpiConfig {
            num_cpus: 1,
            virtio_devices: vec![(base, 5)],
        };
        assert!(matches!(err(cfg), Error::DeviceAbove4G(b) if b == base));
    }
    for irq in [COM1_IRQ, ACPI_GED_IRQ, 24, u32::MAX] {
        let cfg = AcpiConfig {
            num_cpus: 1,
            virtio_devices: vec![(VIRTIO_MMIO_START, irq)],
        };
        assert!(matches!(err(cfg), Error::BadIrq(i) if i == irq));
    }
    // The last window below 4 GiB is fine.
    let cfg = AcpiConfig {
        num_cpus: 1,
        virtio_devices: vec![(0xffff_f000, 5)],
    };
    setup_acpi(&mem, &cfg).unwrap();
}

#[test]
fn largest_config_fits() {
    let mem = mem();
    // Every IRQ line a virtio device can get (5..=22) in use.
    let lines = (VIRTIO_IRQ_END - VIRTIO_IRQ_START + 1) as usize;
    setup_acpi(&mem, &config(MAX_CPUS, lines)).unwrap();
    let found = discover(&mem);
    let end = found
        .tables
        .values()
        .map(|(a, t)| a + t.len() as u64)
        .max()
        .unwrap();
    assert!(
        end - ACPI_RSDP_START < 6 * 1024,
        "{} bytes",
        end - ACPI_RSDP_START
    );
    let entries = madt_entries(&found.tables[b"APIC"].1);
    assert_eq!(entries.iter().filter(|(k, _)| *k == 0).count(), 254);
}

#[test]
fn memory_without_the_bios_area() {
    let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xa_0000)]).unwrap();
    assert!(matches!(
        setup_acpi(&small, &config(1, 0)),
        Err(Error::Write { addr: 0xe_0000, .. })
    ));
}

/// `tool` (`iasl`, `acpiexec`), if installed (Debian package `acpica-tools`).
fn acpica_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn iasl() -> Option<PathBuf> {
    acpica_tool("iasl")
}

/// Disassembles `table` with `iasl -d` in a fresh directory and returns the ASL text.
fn disassemble(iasl: &Path, name: &str, table: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("minivmm-acpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, table).unwrap();
    let out = Command::new(iasl)
        .arg("-d")
        .arg(&dat)
        .current_dir(&dir)
        .output()
        .unwrap();
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap_or_else(|e| {
        panic!(
            "iasl -d {name}: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    dsl
}

#[test]
fn iasl_decodes_our_tables() {
    let Some(iasl) = iasl() else {
        eprintln!(
            "iasl not on PATH: skipping the disassembly check (apt-get install acpica-tools)"
        );
        return;
    };
    let mem = mem();
    let cfg = AcpiConfig {
        num_cpus: 4,
        virtio_devices: vec![(0xc000_1000, 5), (0xc000_2000, 6)],
    };
    setup_acpi(&mem, &cfg).unwrap();
    let found = discover(&mem);

    let dsdt = disassemble(&iasl, "dsdt", &found.tables[b"DSDT"].1);
    for needle in [
        "Name (_S5, Package (0x01)",
        "Device (COM1)",
        "EisaId (\"PNP0501\")",
        "IO (Decode16,",
        "0x03F8,",
        "IRQNoFlags ()",
        "{4}",
        "EisaId (\"PNP0C0C\")",
        "\"ACPI0013\"",
        "OperationRegion (GDST, SystemIO, 0x03C2, One)",
        "Notify (PWRB, 0x80)",
        "Device (V000)",
        "Device (V001)",
        "\"LNRO0005\"",
        "Memory32Fixed (ReadWrite,",
        "0xC0001000,",
        "0xC0002000,",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000017,",
        "0x00000005,",
        "0x00000006,",
    ] {
        assert!(dsdt.contains(needle), "{needle:?} missing from:\n{dsdt}");
    }

    let facp = disassemble(&iasl, "facp", &found.tables[b"FACP"].1);
    for needle in [
        "Hardware Reduced (V5) : 1",
        "Control Method Power Button (V1) : 1",
        "Control Method Sleep Button (V1) : 1",
        "8042 Present on ports 60/64 (V2) : 0",
        "VGA Not Present (V4) : 1",
        "CMOS RTC Not Present (V5) : 1",
        "DSDT Address : 000E0030",
        "Sleep Control Register : [Generic Address Structure]\n[0F4h 0244 1] Space ID : 01 [SystemIO]",
        "[0F8h 0248 8] Address : 00000000000003C0",
        "[104h 0260 8] Address : 00000000000003C1",
    ] {
        assert!(
            squash(&facp).contains(&squash(needle)),
            "{needle:?} missing from:\n{facp}"
        );
    }
    assert!(!facp.contains("**** Invalid"), "{facp}");

    let apic = disassemble(&iasl, "apic", &found.tables[b"APIC"].1);
    assert_eq!(apic.matches("[Processor Local APIC]").count(), 4, "{apic}");
    assert_eq!(apic.matches("[I/O APIC]").count(), 1, "{apic}");
    assert_eq!(apic.matches("[Local APIC NMI]").count(), 1, "{apic}");
    assert!(!apic.contains("**** Invalid"), "{apic}");
}

/// `s` with runs of spaces collapsed, to compare iasl's column-aligned lines.
fn squash(s: &str) -> String {
    s.split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs our DSDT in ACPICA's own interpreter (`acpiexec`, the code Linux uses), with the
/// I/O region reading `fill` (so `GEVT` reads `fill`), and returns its output.
fn acpiexec(tool: &Path, dsdt: &[u8], fill: u8, commands: &str) -> String {
    let dir = std::env::temp_dir().join(format!("minivmm-acpiexec-{}-{fill}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dsdt.aml");
    std::fs::write(&file, dsdt).unwrap();
    let out = Command::new(tool)
        .arg("-fv")
        .arg(fill.to_string())
        .arg("-b")
        .arg(commands)
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn acpica_runs_s5_and_the_power_button_method() {
    let Some(tool) = acpica_tool("acpiexec") else {
        eprintln!(
            "acpiexec not on PATH: skipping the AML execution check (apt-get install acpica-tools)"
        );
        return;
    };
    let mem = mem();
    setup_acpi(&mem, &config(1, 1)).unwrap();
    let dsdt = discover(&mem).tables[b"DSDT"].1.clone();

    // \_S5_ evaluates to a package whose first element is the S5 sleep type, and _EVT,
    // seeing the power-button bit, notifies PWRB with 0x80.
    let cmds = "evaluate \\_S5_; evaluate \\_SB.GED0._EVT 3";
    let pressed = acpiexec(&tool, &dsdt, GED_EVENT_POWER_BUTTON, cmds);
    assert!(
        pressed.contains("[Integer] = 0000000000000005"),
        "{pressed}"
    );
    assert!(
        pressed.contains("Notify on [PWRB]") && pressed.contains("Value 0x80"),
        "{pressed}"
    );
    assert!(!pressed.contains("AE_"), "an ACPICA error: {pressed}");

    // With the bit clear, no notification.
    let idle = acpiexec(&tool, &dsdt, 0, cmds);
    assert!(idle.contains("Evaluating \\_SB.GED0._EVT"), "{idle}");
    assert!(!idle.contains("Notify"), "{idle}");
}
