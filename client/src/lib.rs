//! The Makiatto CLI as a library. Depends on `maki-protocol` and iroh only —
//! never on the node — so it stays small and builds on macOS.

pub mod keys;
pub mod net;
pub mod project;
pub mod publish;
pub mod scan;
