//! Tiny hand-assembled guests on a real KVM VM: they exercise the vCPU run loop and the
//! port-I/O and MMIO buses without a kernel. Each test builds a VM without the in-kernel
//! irqchip, so that `hlt` comes back to user space and ends the run loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::{BootTimer, SerialDevice, I8042};
use devices::virtio::GuestMemoryMmap;
use devices::Interrupt;
use kvm_ioctls::Kvm;
use minivmm_tests::Capture;
use vm_memory::{Bytes, GuestAddress};
use vmm::bus::Bus;
use vmm::stats::ExitCounters;
use vmm::vcpu::{Vcpu, VcpuControl};
use vmm::VmOutcome;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Machine {
    vm: kvm_ioctls::VmFd,
    mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    out: Capture,
    reset: EventFd,
    timer: Arc<Mutex<BootTimer>>,
}

fn machine() -> Machine {
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().unwrap();
    let mem = vmm::memory::create(&vmm::memory::layout(32 << 20, None).unwrap()).unwrap();
    vmm::memory::register(&vm, &mem).unwrap();
    let out = Capture::default();
    let mut pio = Bus::new();
    let serial = SerialDevice::new(Arc::new(NoIrq), Box::new(out.clone()));
    pio.insert(Arc::new(Mutex::new(serial)), 0x3f8, 8).unwrap();
    let reset = EventFd::new(EFD_NONBLOCK).unwrap();
    pio.insert(
        Arc::new(Mutex::new(I8042::new(reset.try_clone().unwrap()))),
        0x60,
        5,
    )
    .unwrap();
    let mut mmio = Bus::new();
    let timer = Arc::new(Mutex::new(BootTimer::new(Instant::now())));
    mmio.insert(timer.clone(), 0xc000_0000, 0x1000).unwrap();
    Machine {
        vm,
        mem,
        pio,
        mmio,
        out,
        reset,
        timer,
    }
}

/// Run vCPU 0 (already set up by `setup`) until its run loop ends.
fn run(m: Machine, setup: impl FnOnce(&Vcpu, &GuestMemoryMmap)) -> (VmOutcome, Machine) {
    let pio = Arc::new(std::mem::take(&mut { m.pio }));
    let mmio = Arc::new(std::mem::take(&mut { m.mmio }));
    let counters = Arc::new(ExitCounters::new(false));
    let vcpu = Vcpu::new(&m.vm, 0, pio.clone(), mmio.clone(), m.mem.clone(), counters).unwrap();
    setup(&vcpu, &m.mem);
    let control = VcpuControl::default();
    let t = std::thread::spawn(move || vcpu.run(&control));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !t.is_finished() {
        assert!(
            Instant::now() < deadline,
            "tiny guest did not finish in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let outcome = t
        .join()
        .unwrap()
        .expect("the run loop ended without an outcome");
    let m = Machine {
        pio: Bus::new(),
        mmio: Bus::new(),
        ..m
    };
    // Keep the buses alive until here so the devices saw every access.
    drop((pio, mmio));
    (outcome, m)
}

/// Set vCPU 0 up as minivmm does for Linux (GDT, identity page tables, long mode), with
/// RIP at `rip`.
fn long_mode_at(rip: u64) -> impl FnOnce(&Vcpu, &GuestMemoryMmap) {
    move |v, mem| {
        let sregs = arch::regs::boot_sregs(mem, v.fd().get_sregs().unwrap()).unwrap();
        v.fd().set_sregs(&sregs).unwrap();
        v.fd()
            .set_regs(&arch::regs::boot_regs(rip, arch::layout::ZERO_PAGE_START))
            .unwrap();
    }
}

#[test]
fn real_mode_guest_writes_serial_and_halts() {
    let m = machine();
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xb0, b'H', 0xee,       // mov al, 'H'; out dx, al
        0xb0, b'i', 0xee,       // mov al, 'i'; out dx, al
        0xba, 0x99, 0x00,       // mov dx, 0x99 (no device there)
        0xec,                   // in al, dx      -> 0xff from the floating bus
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xee,                   // out dx, al     -> 0xff on the serial line
        0xf4,                   // hlt
    ];
    m.mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    let (outcome, m) = run(m, |v, _| {
        let mut sregs = v.fd().get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        v.fd().set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        v.fd().set_regs(&regs).unwrap();
    });
    assert_eq!(outcome, VmOutcome::PowerOff);
    assert_eq!(*m.out.0.lock().unwrap(), b"Hi\xff");
    assert!(m.reset.read().is_err(), "no reset was asked for");
}

#[test]
fn long_mode_guest_uses_mmio_and_resets() {
    let m = machine();
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x66, 0xba, 0xf8, 0x03,                         // mov dx, 0x3f8
        0xb0, b'L', 0xee,                               // mov al, 'L'; out dx, al
        0x48, 0xb8, 0, 0, 0, 0xc0, 0, 0, 0, 0,          // mov rax, 0xc0000000
        0xc6, 0x00, 123,                                // mov byte [rax], 123 (boot timer)
        0x48, 0xb8, 0, 0x10, 0, 0xd0, 0, 0, 0, 0,       // mov rax, 0xd0001000
        0xc6, 0x00, 1,                                  // mov byte [rax], 1 (nobody there)
        0xb0, 0xfe, 0xe6, 0x64,                         // mov al, 0xfe; out 0x64, al (reset)
        0xf4,                                           // hlt
    ];
    m.mem.write_slice(code, GuestAddress(0x10_0000)).unwrap();
    let (outcome, m) = run(m, long_mode_at(0x10_0000));
    // The i8042 signalled the reset; the vCPU then ran into hlt.
    assert_eq!(outcome, VmOutcome::PowerOff);
    assert_eq!(m.reset.read().unwrap(), 1, "the i8042 signalled a reset");
    assert_eq!(*m.out.0.lock().unwrap(), b"L");
    assert!(
        m.timer.lock().unwrap().boot_time().is_some(),
        "boot timer saw 123"
    );
}

#[test]
fn triple_fault_is_a_crash() {
    let m = machine();
    // Long mode with an empty IDT: the first exception (ud2) cannot be delivered, which
    // escalates to a double and then a triple fault.
    m.mem
        .write_slice(&[0x0f, 0x0b], GuestAddress(0x10_0000))
        .unwrap();
    let (outcome, _) = run(m, long_mode_at(0x10_0000));
    match outcome {
        VmOutcome::Crash(why) => assert!(
            why.contains("triple fault") || why.contains("internal error"),
            "{why}"
        ),
        other => panic!("expected a crash, got {other:?}"),
    }
}
