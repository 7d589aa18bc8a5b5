//! The kernel command line: building it, checking its length, writing it to guest memory.
//!
//! # The boot-protocol concept
//! Linux reads its command line (`console=ttyS0 root=/dev/vda ...`) from a NUL-terminated
//! string in guest memory whose address the loader stores in the zero page field
//! `cmd_line_ptr` (`Documentation/arch/x86/boot.rst`, "The kernel command line"). The
//! setup header of a bzImage says how long it may be: `cmdline_size` (protocol 2.06+) is
//! "the maximum size of the command line without the terminating zero"; older kernels
//! accept 255 bytes. A vmlinux (ELF) has no header; x86 kernels then keep the first
//! `COMMAND_LINE_SIZE` (2048) bytes and drop the rest, so minivmm only warns there.
//!
//! minivmm writes the command line at [`CMDLINE_START`] and allows at most
//! [`CMDLINE_MAX_SIZE`] bytes including the NUL.

use linux_loader::bootparam::setup_header;
use vm_memory::{Bytes, GuestAddress};

use arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};

use crate::GuestMemoryMmap;

/// The command line minivmm starts from.
///
/// - `console=ttyS0`: kernel messages go to the first serial port (minivmm's COM1).
/// - `reboot=k`: a guest reboot (or `panic=`'s automatic reboot) goes through the keyboard
///   controller reset (i8042 command 0xfe), which minivmm's i8042 turns into a clean VMM
///   exit with status 0, rather than through ACPI or a triple fault.
/// - `panic=1`: after a kernel panic, reboot after 1 second instead of hanging forever, so
///   a panicking guest ends the VMM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Command-line limit of kernels with boot protocol older than 2.06 (no `cmdline_size`).
pub const OLD_KERNEL_CMDLINE_MAX: usize = 255;

/// The x86 kernel's own `COMMAND_LINE_SIZE` (including the NUL): longer is truncated.
pub const KERNEL_COMMAND_LINE_SIZE: usize = 2048;

/// Errors about the command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A part contains a NUL byte, which would end the string early.
    #[error("kernel command line part {0:?} contains a NUL byte")]
    Nul(String),
    /// Too long for minivmm's command-line area.
    #[error("kernel command line is {len} bytes; minivmm allows at most {max}")]
    TooLong {
        /// Length without the terminating NUL.
        len: usize,
        /// Largest allowed length without the NUL.
        max: usize,
    },
    /// Too long for the kernel being booted.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max} (setup header cmdline_size)")]
    TooLongForKernel {
        /// Length without the terminating NUL.
        len: usize,
        /// The kernel's limit without the NUL.
        max: usize,
    },
    /// Guest memory could not be written.
    #[error("cannot write the kernel command line at {CMDLINE_START:#x}: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Joins the non-empty parts (each trimmed of surrounding whitespace) with single spaces.
///
/// Fails if a part contains a NUL byte or the result does not fit [`CMDLINE_MAX_SIZE`]
/// with its terminating NUL.
pub fn build(parts: &[&str]) -> Result<String, Error> {
    let mut out = String::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if part.contains('\0') {
            return Err(Error::Nul(part.to_string()));
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(part);
    }
    if out.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::TooLong {
            len: out.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    Ok(out)
}

/// The longest command line (without NUL) the kernel with this setup header accepts;
/// `None` (an ELF kernel) gives minivmm's own limit.
pub fn max_len(header: Option<&setup_header>) -> usize {
    let ours = CMDLINE_MAX_SIZE - 1;
    match header {
        None => ours,
        Some(h) if h.version < 0x0206 => OLD_KERNEL_CMDLINE_MAX,
        Some(h) => (h.cmdline_size as usize).min(ours),
    }
}

/// Checks `cmdline` against the kernel's limit (see [`max_len`]).
pub fn check_fits(cmdline: &str, header: Option<&setup_header>) -> Result<(), Error> {
    let max = max_len(header);
    if cmdline.len() > max {
        return Err(Error::TooLongForKernel {
            len: cmdline.len(),
            max,
        });
    }
    if header.is_none() && cmdline.len() >= KERNEL_COMMAND_LINE_SIZE {
        log::warn!(
            "kernel command line is {} bytes; x86 kernels usually keep only the first {}",
            cmdline.len(),
            KERNEL_COMMAND_LINE_SIZE - 1
        );
    }
    Ok(())
}

/// Writes `cmdline` and its terminating NUL at [`CMDLINE_START`]; returns the address and
/// the length without the NUL, as the zero page wants them.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(GuestAddress, usize), Error> {
    if cmdline.contains('\0') {
        return Err(Error::Nul(cmdline.to_string()));
    }
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::TooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    let addr = GuestAddress(CMDLINE_START);
    mem.write_slice(&bytes, addr).map_err(Error::Write)?;
    Ok((addr, cmdline.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_parts() {
        assert_eq!(
            build(&[DEFAULT_CMDLINE, "", "  root=/dev/vda ", "   ", "quiet"]).unwrap(),
            "console=ttyS0 reboot=k panic=1 root=/dev/vda quiet"
        );
        assert_eq!(build(&[]).unwrap(), "");
        assert_eq!(build(&["a"]).unwrap(), "a");
    }

    #[test]
    fn rejects_nul() {
        let err = build(&["ok", "bad\0part"]).unwrap_err();
        assert!(matches!(err, Error::Nul(_)));
        assert!(err.to_string().contains("NUL"));
    }

    #[test]
    fn length_limit() {
        let just = "x".repeat(CMDLINE_MAX_SIZE - 1);
        assert_eq!(build(&[&just]).unwrap().len(), CMDLINE_MAX_SIZE - 1);
        let over = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(build(&[&over]), Err(Error::TooLong { .. })));
        // The joining space counts.
        let half = "y".repeat(CMDLINE_MAX_SIZE / 2);
        assert!(build(&[&half, &half]).is_err());
    }

    #[test]
    fn kernel_limit() {
        let h = setup_header {
            version: 0x020f,
            cmdline_size: 2047,
            ..Default::default()
        };
        assert_eq!(max_len(Some(&h)), 2047);
        check_fits(&"a".repeat(2047), Some(&h)).unwrap();
        let err = check_fits(&"a".repeat(2048), Some(&h)).unwrap_err();
        assert!(err.to_string().contains("at most 2047"), "{err}");
        let old = setup_header {
            version: 0x0205,
            cmdline_size: 9999,
            ..Default::default()
        };
        assert_eq!(max_len(Some(&old)), 255);
        assert_eq!(max_len(None), CMDLINE_MAX_SIZE - 1);
        check_fits(&"a".repeat(4000), None).unwrap();
    }

    #[test]
    fn writes_with_nul() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xff; 64], GuestAddress(CMDLINE_START))
            .unwrap();
        let (addr, len) = write_cmdline(&mem, DEFAULT_CMDLINE).unwrap();
        assert_eq!(
            (addr, len),
            (GuestAddress(CMDLINE_START), DEFAULT_CMDLINE.len())
        );
        let mut buf = vec![0u8; len + 1];
        mem.read_slice(&mut buf, addr).unwrap();
        assert_eq!(&buf[..len], DEFAULT_CMDLINE.as_bytes());
        assert_eq!(buf[len], 0);
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(write_cmdline(&small, "x"), Err(Error::Write(_))));
    }
}
