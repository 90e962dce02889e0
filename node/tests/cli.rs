//! The `makiatto` binary's command line: refusals that must not write
//! anything. (Also makes `cargo test` build the binary for the e2e tests.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_makiatto");

#[test]
fn init_refuses_bad_admin_keys_and_overwrites() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("d");
    let out = Command::new(BIN)
        .args(["init", "--admin", "not-a-key", "--data-dir"])
        .arg(&data)
        .output()?;
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(!data.exists(), "nothing written on a bad key");

    let key = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    let ok = Command::new(BIN)
        .args(["init", "--admin", key, "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("node.key"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(data.join("makiatto.toml"))?;

    let again = Command::new(BIN)
        .args(["init", "--admin", key, "--data-dir"])
        .arg(&data)
        .output()?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(data.join("makiatto.toml"))?, config);

    let valid = Command::new(BIN)
        .args(["validate", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(valid.status.success());
    std::fs::write(data.join("makiatto.toml"), format!("{config}\nbogus = 1\n"))?;
    let invalid = Command::new(BIN)
        .args(["validate", "--data-dir"])
        .arg(&data)
        .output()?;
    assert_eq!(invalid.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("bogus"));
    Ok(())
}
