//! The VM's life.
