//! A minimal i8042 PS/2 controller, for two reasons: Linux's i8042 driver probes the
//! controller at boot (and must find one that answers, quickly), and writing `0xFE` to its
//! command port is how Linux reboots an x86 PC (`reboot=k`): minivmm turns that into a VM
//! exit via the `reset_evt` eventfd.
//!
//! No keyboard or mouse is attached. The controller answers the commands Linux's probe
//! sends (self test, command byte read/write, port enable/disable, interface tests) like a
//! PS/2 controller whose AUX (mouse) port is broken: the AUX loopback reply is not marked as
//! AUX data and the AUX interface test reports "clock line stuck high", so Linux decides
//! there is no AUX port without waiting for any timeout. Bytes written for the keyboard are
//! dropped (there is none), so atkbd's probe times out in the background.
//!
//! The VMM registers the device at port 0x60 with length 5: offset 0 is the data port
//! (0x60), offset 4 the command/status port (0x64); offsets 1..=3 read as 0xff.

use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Offset of the data port (port 0x60).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the command (write) / status (read) port (port 0x64).
pub const COMMAND_OFFSET: u64 = 4;

// Status register bits.
/// Output buffer full: a byte is waiting at the data port.
pub const STATUS_OBF: u8 = 0x01;
/// System flag: the controller passed its self test.
pub const STATUS_SYSF: u8 = 0x04;
/// The last write went to the command port.
pub const STATUS_CMD: u8 = 0x08;
/// Keyboard not inhibited (the "keylock" switch is open).
pub const STATUS_NOT_INHIBITED: u8 = 0x10;
/// The byte in the output buffer came from the AUX port.
pub const STATUS_AUXDATA: u8 = 0x20;

// Controller command byte (CTR) bits.
const CTR_KBDINT: u8 = 0x01;
const CTR_SYSF: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Controller commands.
const CMD_READ_RAM_FIRST: u8 = 0x20; // 0x20 reads the CTR; 0x21..=0x3f the rest of RAM
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM_FIRST: u8 = 0x60; // 0x60 writes the CTR
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_KBD_LOOP: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_AUX_SEND: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0; // 0xf0..=0xff pulse output-port lines low
/// The reset command: pulse output-port bit 0 (the CPU reset line) low.
pub const CMD_RESET: u8 = 0xfe;

// Replies.
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// AUX interface test result "clock line stuck high": Linux then decides there is no AUX
/// port (see the module documentation).
const AUX_INTERFACE_BROKEN: u8 = 0x02;

/// Output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// The controller's registers, as a snapshot stores them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042Snapshot {
    /// Controller RAM (byte 0: the command byte).
    pub ram: Vec<u8>,
    /// The output port.
    pub output_port: u8,
    /// The status register.
    pub status: u8,
    /// The output buffer.
    pub out: u8,
    /// A command waiting for its parameter.
    pub pending: Option<u8>,
}

/// The i8042 controller.
pub struct I8042 {
    reset_evt: EventFd,
    /// Controller RAM; byte 0 is the command byte (CTR).
    ram: [u8; 32],
    output_port: u8,
    status: u8,
    /// The output buffer: one byte, as on the real controller. A new reply replaces an
    /// unread one.
    out: u8,
    /// A command waiting for its parameter byte at the data port.
    pending: Option<u8>,
}

impl I8042 {
    /// The controller as it is now, for a snapshot.
    pub fn save(&self) -> I8042Snapshot {
        I8042Snapshot {
            ram: self.ram.to_vec(),
            output_port: self.output_port,
            status: self.status,
            out: self.out,
            pending: self.pending,
        }
    }

    /// Put the controller in the state `snap` describes (its RAM must be 32 bytes).
    pub fn restore(&mut self, snap: &I8042Snapshot) -> Result<(), String> {
        self.ram = snap
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| format!("i8042: {} bytes of RAM, expected 32", snap.ram.len()))?;
        self.output_port = snap.output_port;
        self.status = snap.status;
        self.out = snap.out;
        self.pending = snap.pending;
        Ok(())
    }

    /// A controller that writes 1 to `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CTR_KBDINT | CTR_SYSF | CTR_AUXDIS | CTR_XLATE;
        Self {
            reset_evt,
            ram,
            output_port: OUTPUT_PORT_DEFAULT,
            status: STATUS_SYSF | STATUS_NOT_INHIBITED,
            out: 0,
            pending: None,
        }
    }

    fn set_ctr_bits(&mut self, bits: u8, on: bool) {
        if on {
            self.ram[0] |= bits;
        } else {
            self.ram[0] &= !bits;
        }
    }

    /// Put `byte` in the output buffer for the guest to read at the data port.
    fn reply(&mut self, byte: u8, aux: bool) {
        self.out = byte;
        self.status |= STATUS_OBF;
        if aux {
            self.status |= STATUS_AUXDATA;
        } else {
            self.status &= !STATUS_AUXDATA;
        }
    }

    fn request_reset(&self) {
        crate::log_ratelimited!(log::Level::Info, "i8042: guest requested a CPU reset");
        if let Err(e) = self.reset_evt.write(1) {
            crate::error_ratelimited!("i8042: failed to signal the reset event: {e}");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_CMD;
        // A new command cancels one still waiting for its parameter.
        self.pending = None;
        match cmd {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                let byte = self.ram[usize::from(cmd - CMD_READ_RAM_FIRST)];
                self.reply(byte, false);
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_KBD_LOOP
            | CMD_AUX_LOOP
            | CMD_AUX_SEND => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.set_ctr_bits(CTR_AUXDIS, true),
            CMD_AUX_ENABLE => self.set_ctr_bits(CTR_AUXDIS, false),
            CMD_KBD_DISABLE => self.set_ctr_bits(CTR_KBDDIS, true),
            CMD_KBD_ENABLE => self.set_ctr_bits(CTR_KBDDIS, false),
            CMD_AUX_TEST => self.reply(AUX_INTERFACE_BROKEN, false),
            CMD_SELF_TEST => {
                self.status |= STATUS_SYSF;
                self.reply(SELF_TEST_OK, false);
            }
            CMD_KBD_TEST => self.reply(INTERFACE_OK, false),
            CMD_READ_INPUT_PORT => self.reply(0, false),
            CMD_READ_OUTPUT_PORT => self.reply(self.output_port, false),
            CMD_PULSE_FIRST..=0xff => {
                // Bits 0..=3 of the command select the lines to pulse; a 0 bit pulses it.
                if cmd & 0x01 == 0 {
                    self.request_reset();
                }
            }
            _ => crate::warn_ratelimited!("i8042: unsupported command {cmd:#04x}"),
        }
    }

    fn data_write(&mut self, byte: u8) {
        self.status &= !STATUS_CMD;
        match self.pending.take() {
            Some(cmd @ CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST) => {
                self.ram[usize::from(cmd - CMD_WRITE_RAM_FIRST)] = byte;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = byte;
                if byte & 0x01 == 0 {
                    self.request_reset();
                }
            }
            Some(CMD_KBD_LOOP) => self.reply(byte, false),
            // The AUX port is broken (module documentation): the echo does not come back as
            // AUX data, which makes Linux's loopback check fail at once.
            Some(CMD_AUX_LOOP) => self.reply(byte, false),
            Some(CMD_AUX_SEND) => {
                crate::log_ratelimited!(log::Level::Debug, "i8042: {byte:#04x} for absent mouse")
            }
            _ => {
                crate::log_ratelimited!(log::Level::Debug, "i8042: {byte:#04x} for absent keyboard")
            }
        }
    }

    fn data_read(&mut self) -> u8 {
        self.status &= !(STATUS_OBF | STATUS_AUXDATA);
        self.out
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = &mut *data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            DATA_OFFSET => self.data_read(),
            COMMAND_OFFSET => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else {
            return;
        };
        match offset {
            DATA_OFFSET => self.data_write(*byte),
            COMMAND_OFFSET => self.command(*byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn dev() -> (I8042, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    fn status(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(DATA_OFFSET, &mut b);
        b[0]
    }

    /// Linux's `i8042_command`: command, parameters, then wait for OBF before each result.
    fn command(d: &mut I8042, cmd: u8, params: &[u8], results: usize) -> Vec<u8> {
        d.write(COMMAND_OFFSET, &[cmd]);
        for p in params {
            d.write(DATA_OFFSET, &[*p]);
        }
        (0..results)
            .map(|_| {
                assert_ne!(status(d) & STATUS_OBF, 0, "reply to {cmd:#x} missing");
                data(d)
            })
            .collect()
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, evt) = dev();
        // i8042_flush: nothing pending.
        assert_eq!(status(&mut d) & STATUS_OBF, 0);
        assert_ne!(
            status(&mut d) & STATUS_NOT_INHIBITED,
            0,
            "keylock must not be active"
        );
        // Self test.
        assert_eq!(command(&mut d, CMD_SELF_TEST, &[], 1), [SELF_TEST_OK]);
        assert_eq!(status(&mut d) & STATUS_OBF, 0);
        // Stable CTR reads, then write it back modified.
        let c1 = command(&mut d, 0x20, &[], 1)[0];
        let c2 = command(&mut d, 0x20, &[], 1)[0];
        assert_eq!(c1, c2);
        let new = (c1 | CTR_KBDDIS) & !CTR_KBDINT;
        command(&mut d, 0x60, &[new], 0);
        assert_eq!(command(&mut d, 0x20, &[], 1), [new]);
        // Keyboard interface test.
        assert_eq!(command(&mut d, CMD_KBD_TEST, &[], 1), [INTERFACE_OK]);
        // AUX loop: the reply is there at once but not marked AUX -> Linux: "auxerr".
        d.write(COMMAND_OFFSET, &[CMD_AUX_LOOP]);
        d.write(DATA_OFFSET, &[0x5a]);
        let st = status(&mut d);
        assert_ne!(st & STATUS_OBF, 0);
        assert_eq!(st & STATUS_AUXDATA, 0);
        // AUX test then reports an error, so no AUX port is registered.
        let aux = command(&mut d, CMD_AUX_TEST, &[], 1)[0];
        assert!(aux != 0 && aux != 0xfa && aux != 0xff);
        // No reset was requested along the way.
        assert!(evt.read().is_err());
    }

    #[test]
    fn port_enable_disable_track_ctr() {
        let (mut d, _) = dev();
        command(&mut d, CMD_AUX_ENABLE, &[], 0);
        assert_eq!(command(&mut d, 0x20, &[], 1)[0] & CTR_AUXDIS, 0);
        command(&mut d, CMD_AUX_DISABLE, &[], 0);
        assert_ne!(command(&mut d, 0x20, &[], 1)[0] & CTR_AUXDIS, 0);
        command(&mut d, CMD_KBD_DISABLE, &[], 0);
        assert_ne!(command(&mut d, 0x20, &[], 1)[0] & CTR_KBDDIS, 0);
        command(&mut d, CMD_KBD_ENABLE, &[], 0);
        assert_eq!(command(&mut d, 0x20, &[], 1)[0] & CTR_KBDDIS, 0);
    }

    #[test]
    fn reset_command_signals_event() {
        let (mut d, evt) = dev();
        assert!(evt.read().is_err(), "no reset yet");
        d.write(COMMAND_OFFSET, &[CMD_RESET]);
        assert_eq!(evt.read().unwrap(), 1);
        // Pulsing other lines (bit 0 set) does not reset.
        d.write(COMMAND_OFFSET, &[0xff]);
        assert!(evt.read().is_err());
        // Writing the output port with the reset line low resets too.
        command(&mut d, CMD_WRITE_OUTPUT_PORT, &[0x02], 0);
        assert_eq!(evt.read().unwrap(), 1);
        command(&mut d, CMD_WRITE_OUTPUT_PORT, &[0x03], 0);
        assert!(evt.read().is_err());
        assert_eq!(command(&mut d, CMD_READ_OUTPUT_PORT, &[], 1), [0x03]);
    }

    #[test]
    fn other_offsets_and_widths() {
        let (mut d, evt) = dev();
        for off in 1..4 {
            let mut b = [0];
            d.read(off, &mut b);
            assert_eq!(b[0], 0xff);
            d.write(off, &[CMD_RESET]);
        }
        let mut two = [0u8; 2];
        d.read(COMMAND_OFFSET, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        d.write(COMMAND_OFFSET, &[CMD_RESET, 0]);
        assert!(evt.read().is_err(), "only one-byte command writes count");
    }

    #[test]
    fn keyboard_bytes_are_dropped_and_loop_echoes() {
        let (mut d, _) = dev();
        d.write(DATA_OFFSET, &[0xf2]); // atkbd GET ID: no keyboard, no answer
        assert_eq!(status(&mut d) & STATUS_OBF, 0);
        assert_eq!(command(&mut d, CMD_KBD_LOOP, &[0x33], 1), [0x33]);
        // A command cancels a pending parameter: 0x60 then 0xAA leaves the CTR alone.
        let ctr = command(&mut d, 0x20, &[], 1)[0];
        d.write(COMMAND_OFFSET, &[0x60]);
        assert_eq!(command(&mut d, CMD_SELF_TEST, &[], 1), [SELF_TEST_OK]);
        d.write(DATA_OFFSET, &[0x00]);
        assert_eq!(command(&mut d, 0x20, &[], 1), [ctr]);
    }
}
