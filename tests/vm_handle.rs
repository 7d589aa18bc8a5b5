//! The [`vmm::Vm`] handle on real KVM, in this process, with a hand-assembled guest (no
//! Linux, so each VM lives for a second or two): the state machine (start, pause twice,
//! resume while running, power button, stop while paused, commands after the end), events,
//! counters, and that a paused guest really runs no instruction.
//!
//! The guest prints a digit on COM1 after every busy-wait of `DELAY` iterations, forever
//! (or, in the resetting variant, `n` times and then resets through the i8042).

use std::time::{Duration, Instant};

use minivmm_tests::speed::factor;
use minivmm_tests::{Capture, CpuSlots, TempDir};
use vmm::{Error, Vm, VmBuilder, VmConfig, VmEvent, VmOutcome, VmState};

/// Busy-wait iterations between two characters: ~0.1-0.3 s on a PVM host (CPL 0 code is
/// emulated), well under a millisecond on VT-x.
const DELAY: u32 = 150_000;

/// The guest's code (64-bit, at 1 MiB): print '0'..'7' in turn on COM1, forever, or `stop_after`
/// times and then reset.
fn guest_code(stop_after: Option<u8>) -> Vec<u8> {
    let d = DELAY.to_le_bytes();
    #[rustfmt::skip]
    let mut code = vec![
        0x31, 0xdb,                         // 0: xor ebx, ebx
        0xb9, d[0], d[1], d[2], d[3],       // 2: next: mov ecx, DELAY
        0xff, 0xc9,                         // 7: d: dec ecx
        0x75, 0xfc,                         // 9: jnz d
        0x89, 0xd8,                         // 11: mov eax, ebx
        0x83, 0xe0, 0x07,                   // 13: and eax, 7
        0x04, b'0',                         // 16: add al, '0'
        0x66, 0xba, 0xf8, 0x03,             // 18: mov dx, 0x3f8
        0xee,                               // 22: out dx, al
        0xff, 0xc3,                         // 23: inc ebx
    ];
    match stop_after {
        None => code.extend_from_slice(&[0xeb, 0xe7]), // 25: jmp next (2 - 27)
        Some(n) => code.extend_from_slice(&[
            0x83, 0xfb, n, // 25: cmp ebx, n
            0x75, 0xe4, //    28: jne next (2 - 30)
            0xb0, 0xfe, //    30: mov al, 0xfe
            0xe6, 0x64, //    32: out 0x64, al (i8042: reset)
            0xf4, //          34: hlt
        ]),
    }
    code
}

/// The tiny guest as an ELF kernel in `dir`.
fn tiny_kernel(dir: &TempDir, stop_after: Option<u8>) -> std::path::PathBuf {
    let kernel = dir.join("tiny.elf");
    std::fs::write(
        &kernel,
        boot::loader::elf_image(0x10_0000, &guest_code(stop_after), 0x1000),
    )
    .unwrap();
    kernel
}

/// A VM of the tiny guest (not started), its console, and the scratch dir with the kernel.
fn tiny_vm(stop_after: Option<u8>, acpi: bool) -> (Vm, Capture, TempDir) {
    let out = Capture::default();
    let (vm, dir) = tiny_vm_writing_to(stop_after, acpi, Box::new(out.clone()));
    (vm, out, dir)
}

/// [`tiny_vm`] with its console going to `out`.
fn tiny_vm_writing_to(
    stop_after: Option<u8>,
    acpi: bool,
    out: Box<dyn std::io::Write + Send>,
) -> (Vm, TempDir) {
    let dir = TempDir::new("minivmm-handle");
    let kernel = tiny_kernel(&dir, stop_after);
    let mut cfg = VmConfig::new(kernel);
    cfg.memory = 32 << 20;
    cfg.acpi = acpi;
    let vm = VmBuilder::new(cfg)
        .unwrap()
        .console_output(out)
        .build()
        .unwrap();
    (vm, dir)
}

/// A console output that takes its time over every write (a slow terminal or a writer
/// thread the host has not scheduled yet).
struct Slow(Capture);

impl std::io::Write for Slow {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(300));
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Wait (scaled to this host's speed) until `cond`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20).mul_f64(factor());
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn not_running(r: Result<(), Error>) -> bool {
    matches!(r, Err(Error::NotRunning(..)))
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_go_on() {
    let _slot = CpuSlots::take(1);
    let (vm, out, _dir) = tiny_vm(None, true);
    let events = vm.subscribe();
    assert_eq!(vm.state(), VmState::Created);
    assert!(not_running(vm.pause()), "pause before start");
    assert!(vm.info().uptime.is_none());

    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(vm.start().is_err(), "started twice");
    wait_until("the guest's first characters", || out.len() >= 3);

    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    vm.pause().unwrap(); // twice: nothing changes
    assert_eq!(vm.state(), VmState::Paused);
    let frozen = out.len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(out.len(), frozen, "a paused guest printed");

    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    vm.resume().unwrap(); // resume while running: nothing changes
    wait_until("output after resume", || out.len() > frozen + 2);

    // The power button of a guest that does not listen: shutting down, still running.
    vm.power_button().unwrap();
    assert_eq!(vm.state(), VmState::ShuttingDown);
    wait_until("output after the button", || out.len() > frozen + 4);

    let c = vm.counters();
    let io_out = c
        .exits
        .by_reason
        .iter()
        .find(|(r, _)| *r == "io-out")
        .unwrap()
        .1;
    assert!(io_out as usize >= out.len(), "{c:?}");
    let info = vm.info();
    assert!(info.uptime.unwrap() > Duration::ZERO);
    assert_eq!(info.devices.len(), 1, "the entropy device");
    assert_eq!(info.devices[0].name, "rng0");

    // Stop while paused.
    vm.pause().unwrap();
    vm.stop().unwrap();
    assert_eq!(vm.wait(), VmOutcome::Stopped);
    assert_eq!(vm.state(), VmState::Ended(VmOutcome::Stopped));

    // Commands after the end.
    assert!(not_running(vm.pause()));
    assert!(not_running(vm.resume()));
    assert!(not_running(vm.power_button()));
    assert!(not_running(vm.stop()));
    assert!(vm.console_input(b"x").is_err());

    let seen: Vec<VmEvent> = events.try_iter().collect();
    let states: Vec<VmState> = seen.into_iter().map(|VmEvent::State(s)| s).collect();
    assert_eq!(
        states,
        vec![
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::ShuttingDown,
            VmState::Paused,
            VmState::Ended(VmOutcome::Stopped),
        ]
    );
}

#[test]
fn a_guest_that_resets_ends_the_vm_and_a_vm_without_acpi_has_no_button() {
    let _slot = CpuSlots::take(1);
    // The output is slow, so the guest resets while its last digits are still on their way:
    // `wait` returns only once they have been written (CI once saw "01" here, when the
    // writer thread had not been scheduled yet).
    let out = Capture::default();
    let (vm, _dir) = tiny_vm_writing_to(Some(3), false, Box::new(Slow(out.clone())));
    vm.start().unwrap();
    assert!(matches!(vm.power_button(), Err(Error::NoPowerButton)));
    assert_eq!(vm.wait(), VmOutcome::Reset);
    assert_eq!(out.bytes(), b"012");
    assert!(not_running(vm.resume()));
}

#[test]
fn a_vm_stopped_before_it_started_ends_and_a_dropped_vm_stops() {
    let (vm, _out, _dir) = tiny_vm(None, true);
    vm.stop().unwrap();
    assert_eq!(vm.wait(), VmOutcome::Stopped);
    assert!(vm.start().is_err());

    let _slot = CpuSlots::take(1);
    let (vm, out, _dir) = tiny_vm(None, true);
    vm.start().unwrap();
    wait_until("the guest to run", || !out.is_empty());
    let threads_before = thread_count();
    drop(vm); // stops and joins the vCPU, VMM and device threads
    assert!(
        thread_count() < threads_before,
        "threads left: {} of {threads_before}",
        thread_count()
    );
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Soak: VMs with a disk, a NIC on a bridge (in a namespace of the test's own) and the
/// entropy device are built, started, stopped and dropped over and over (100 times, or as
/// many as fit in ten minutes on a slow host). After a warm-up, the process's file
/// descriptors, threads, taps and resident memory do not grow, and every VM ends `Stopped`.
#[test]
fn a_hundred_vms_with_devices_leave_no_fd_thread_tap_or_memory_behind() {
    const CYCLES: usize = 100;
    const WARMUP: usize = 5;
    let ns = minivmm_tests::NetNs::new("soak");
    ns.create_bridge("mvsoakbr0", None);
    let dir = TempDir::new("minivmm-soak");
    let kernel = tiny_kernel(&dir, None);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let _slot = CpuSlots::take(1);
    let deadline = Instant::now() + Duration::from_secs(600);
    let report = ns
        .spawn_in(move || {
            let mut baseline = None;
            let mut cycles = 0;
            while cycles < CYCLES && Instant::now() < deadline {
                let mut cfg = VmConfig::new(kernel.clone());
                cfg.memory = 32 << 20;
                cfg.disks.push(vmm::config::BlockConfig {
                    path: disk.clone(),
                    read_only: false,
                    serial: None,
                    limit: Default::default(),
                });
                cfg.nets.push(vmm::config::NetConfig {
                    host: vmm::config::HostInterface::Bridge("mvsoakbr0".into()),
                    mac: None,
                    limit: Default::default(),
                });
                let out = Capture::default();
                let vm = VmBuilder::new(cfg)
                    .unwrap()
                    .console_output(Box::new(out.clone()))
                    .build()
                    .unwrap();
                vm.start().unwrap();
                wait_until("the guest to print", || !out.is_empty());
                vm.stop().unwrap();
                assert_eq!(vm.wait(), VmOutcome::Stopped, "cycle {cycles}");
                drop(vm);
                cycles += 1;
                if cycles == WARMUP {
                    baseline = Some((fd_count(), thread_count(), rss_kib()));
                }
            }
            (
                cycles,
                baseline.unwrap(),
                (fd_count(), thread_count(), rss_kib()),
            )
        })
        .join()
        .unwrap();
    let (cycles, (fds0, threads0, rss0), (fds, threads, rss)) = report;
    eprintln!(
        "soak: {cycles} cycles; fds {fds0} -> {fds}, threads {threads0} -> {threads}, \
         RSS {rss0} -> {rss} KiB"
    );
    assert!(cycles >= 20, "only {cycles} cycles in ten minutes");
    assert!(fds <= fds0, "file descriptors grew: {fds0} -> {fds}");
    assert!(threads <= threads0, "threads grew: {threads0} -> {threads}");
    // The allocator keeps some freed memory; a leak of even one guest RAM (32 MiB) or
    // one device buffer per cycle would show far above this.
    assert!(
        rss <= rss0 + 4096,
        "resident memory grew: {rss0} -> {rss} KiB"
    );
    let links = ns.links();
    assert!(
        links.iter().all(|l| !l.starts_with("mvm")),
        "taps left behind: {links:?}"
    );
}
