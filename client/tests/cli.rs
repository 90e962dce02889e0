//! The `maki` binary's command line without a node: keys, init, and clear
//! errors. (Also makes `cargo test` build the binary for the e2e tests.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_maki");

fn maki(home: &std::path::Path, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(BIN)
        .args(args)
        .current_dir(home)
        .env("MAKI_HOME", home)
        .env_remove("MAKI_NODE")
        .output()
}

#[test]
fn keys_are_stable_and_private() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let a = maki(dir.path(), &["keys"])?;
    let b = maki(dir.path(), &["keys"])?;
    assert!(a.status.success());
    let key = String::from_utf8(a.stdout)?;
    assert_eq!(key.trim().len(), 64);
    assert_eq!(key, String::from_utf8(b.stdout)?);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("key"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    Ok(())
}

#[test]
fn commands_without_a_node_say_how_to_fix_it() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let out = maki(dir.path(), &["sites"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node TICKET"));

    let out = maki(dir.path(), &["sites", "--node", "makinode1zzzz"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ticket is not valid"));

    let out = maki(dir.path(), &["publish", "--dry-run"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--site DOMAIN"));

    let init = maki(
        dir.path(),
        &["init", "--site", "Example.COM", "--dir", "dist"],
    )?;
    assert!(init.status.success());
    let toml = std::fs::read_to_string(dir.path().join("maki.toml"))?;
    assert!(
        toml.contains("domain = \"Example.COM\"") && toml.contains("dir = \"dist\""),
        "{toml}"
    );
    let again = maki(dir.path(), &["init"])?;
    assert_eq!(again.status.code(), Some(1));
    Ok(())
}
