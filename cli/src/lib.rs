//! The front-end's reusable parts: flag parsing ([`flags`]). The `minivmm` binary
//! (`main.rs`) is the rest: clap, logging, the terminal, signals and exit codes.
#![deny(missing_docs)]

pub mod flags;
