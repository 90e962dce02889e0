//! The Makiatto node daemon as a library: `main.rs` parses arguments and
//! calls into here, and tests drive the same code.

pub mod admin;
pub mod config;
pub mod content;
pub mod edge;
pub mod identity;
pub mod live;
pub mod node;
pub mod state;

pub use config::Config;
pub use node::{Node, NodeError};
