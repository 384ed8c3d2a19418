//! The state key: where it lives by default, that it is never inside the
//! data directory, and that a directory opened with another key is
//! refused naming the file.

use std::path::Path;
use std::time::Duration;

use tessera_server::ServerConfig;

fn config(dir: &Path) -> ServerConfig {
    let mut c = ServerConfig {
        data_dir: dir.join("data"),
        dim: Some(4),
        rounds: Some(0),
        ..ServerConfig::default()
    };
    c.network.insecure_dev = true;
    c.network.listen = "127.0.0.1:0".parse().unwrap();
    c
}

async fn run(c: ServerConfig) -> Result<(), String> {
    let server = tessera_server::start(c).await.map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stops by itself")
        .map_err(|e| e.to_string())
}

#[test]
fn the_default_key_is_beside_the_tls_key_or_beside_the_data_directory() {
    let mut c = config(Path::new("/srv/t"));
    assert_eq!(c.state_key_path(), Path::new("/srv/t/data.state-key"));
    c.network.tls_key = Some("/etc/tessera/key.pem".into());
    assert_eq!(c.state_key_path(), Path::new("/etc/tessera/state.key"));
    c.state_key = Some("/k/s".into());
    assert_eq!(c.state_key_path(), Path::new("/k/s"));
}

#[tokio::test]
async fn a_key_inside_the_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.state_key = Some(c.data_dir.join("state.key"));
    let err = run(c).await.unwrap_err();
    assert!(err.contains("inside the data directory"), "{err}");
}

/// The first start generates the key (owner-only); a later start with
/// another key is refused, naming a file of the data directory, and the
/// key's bytes are in no message.
#[tokio::test]
async fn a_directory_sealed_under_another_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    run(c.clone()).await.unwrap();
    let key_file = c.state_key_path();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    run(c.clone()).await.unwrap();
    let other = "cd".repeat(32);
    std::fs::write(&key_file, format!("{other}\n")).unwrap();
    let data_dir = c.data_dir.display().to_string();
    let err = run(c).await.unwrap_err();
    assert!(
        err.contains(&data_dir) && err.contains("state key is not the one"),
        "{err}"
    );
    assert!(!err.contains(&other));
}

/// Review: an editor of the data directory who can delete the key file
/// (not read it) strips every MAC, deletes the audit log and the key; the
/// next start generated a new key and sealed the edited directory as found
/// under it. A start never seals: with a key generated now, a directory
/// holding records is refused, untouched, and `tessera migrate` (run by
/// the operator, who knows whether the key was lost or never existed)
/// seals it.
#[tokio::test]
async fn a_deleted_key_does_not_make_the_server_seal_an_edited_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    run(c.clone()).await.unwrap();
    let manifest = c.data_dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert!(v.as_object_mut().unwrap().remove("mac").is_some());
    std::fs::write(&manifest, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let _ = std::fs::remove_file(c.data_dir.join("audit.jsonl"));
    std::fs::remove_file(c.state_key_path()).unwrap();
    let err = run(c.clone()).await.unwrap_err();
    assert!(
        err.contains("tessera migrate") && err.contains("manifest.json"),
        "{err}"
    );
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert!(after.get("mac").is_none(), "the edited manifest was sealed");
    assert!(!c.data_dir.join("audit.jsonl").exists());
}
