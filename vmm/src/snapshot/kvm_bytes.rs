//! KVM's state structures in a snapshot file: the bytes of the C structure the KVM API
//! defines (`struct kvm_regs`, `struct kvm_lapic_state`, ...), little-endian, as one hex
//! string. These structures are part of Linux's stable ABI, so the bytes mean the same to
//! every kernel; the reader checks the length exactly, so a file from another
//! architecture or a damaged one is refused rather than half-read.

use serde::{Deserialize, Deserializer, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `value`'s bytes as lowercase hex.
pub fn to_hex<T: IntoBytes + Immutable>(value: &T) -> String {
    let mut s = String::with_capacity(std::mem::size_of::<T>() * 2);
    for b in value.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A `T` from exactly `size_of::<T>()` bytes of hex.
pub fn from_hex<T: FromBytes>(s: &str) -> Result<T, String> {
    let want = std::mem::size_of::<T>();
    let name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
    if s.len() != want * 2 {
        return Err(format!(
            "{name}: {} hex digits, expected {}",
            s.len(),
            want * 2
        ));
    }
    let bytes = (0..want)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("{name}: not hex"))?;
    T::read_from_bytes(&bytes).map_err(|_| format!("{name}: wrong size"))
}

/// For `#[serde(with = "kvm_bytes")]` on a KVM structure field.
pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(v))
}

/// For `#[serde(with = "kvm_bytes")]` on a KVM structure field.
pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    from_hex(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_length() {
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1234_5678,
            rflags: 2,
            ..Default::default()
        };
        let hex = to_hex(&regs);
        assert_eq!(hex.len(), 2 * std::mem::size_of::<kvm_bindings::kvm_regs>());
        let back: kvm_bindings::kvm_regs = from_hex(&hex).unwrap();
        assert_eq!(back.rip, 0x1234_5678);
        assert!(from_hex::<kvm_bindings::kvm_regs>(&hex[2..]).is_err());
        assert!(from_hex::<kvm_bindings::kvm_regs>(&hex.replace('0', "g")).is_err());
        assert!(from_hex::<kvm_bindings::kvm_sregs>(&hex).is_err());
    }
}
