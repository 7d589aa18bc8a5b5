//! Helpers for minivmm's integration and end-to-end tests.
