//! `makiatto` built with the test-only `next-format` feature: a node that
//! plays a newer release (a NodeRecord field and a record kind today's
//! release does not know), for the mixed-version test in
//! `tests/tests/upgrade.rs`. Never shipped.

#[path = "../main.rs"]
mod cli;

fn main() {
    cli::main();
}
