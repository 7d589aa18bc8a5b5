//! Loading a Linux kernel into guest memory: ELF vmlinux and bzImage (through linux-loader),
//! the command line, the initrd, the zero page and the e820 map. Pure code over guest memory.
#![deny(missing_docs)]
