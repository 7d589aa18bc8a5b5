//! `calibrate`: measure this host's guest-kernel speed (see `speed.rs`) and print it as
//! `ns_per_iter factor`, for `./test.sh` to hand to the test binaries.

fn main() {
    let ns = minivmm_tests::speed::measure();
    println!("{ns:.1} {:.2}", minivmm_tests::speed::factor_of(ns));
}
