//! Adversarial: another local user of the machine reads a node's files. Key directories, the
//! data directory, the ledger file and the blob segments are the owner's alone — when a
//! consortium is created, when a node first starts, and again at start if an existing
//! install left them readable by others.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_medledger");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts `medledger dev` in `dir` and waits until its API answers (everything on disk is
/// opened by then); the caller kills it.
fn start_dev(dir: &Path, log: &Path) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(BIN)
        .args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let started = Instant::now();
    loop {
        if agent.get(&format!("http://127.0.0.1:{port}/v1/health")).call().is_ok_and(|r| r.status() == 200) {
            return child;
        }
        if started.elapsed() > Duration::from_secs(180) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("dev node did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The private paths of a dev node's data directory: (path, wanted mode).
fn private_paths(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut paths = vec![
        (dir.to_owned(), 0o700),
        (dir.join("keys"), 0o700),
        (dir.join("patient-keys"), 0o700),
        (dir.join("blobs"), 0o700),
        (dir.join("ledger.redb"), 0o600),
    ];
    for entry in std::fs::read_dir(dir.join("keys")).unwrap() {
        paths.push((entry.unwrap().path(), 0o600));
    }
    let segments: Vec<PathBuf> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(!segments.is_empty(), "the blob store has segments");
    paths.extend(segments.into_iter().map(|p| (p, 0o600)));
    paths.push((dir.join("blobs").join("LOCK"), 0o600));
    paths
}

#[test]
fn key_directories_and_ledger_file_are_private() {
    let temp = tempfile::tempdir().unwrap();
    // A new consortium: every directory holding keys is private.
    let consortium = temp.path().join("consortium");
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&consortium)
        .args(["--validators", "1", "--organisations", "Hospital A"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for dir in [consortium.join("organisations"), consortium.join("node-0")] {
        assert_eq!(mode(&dir), 0o700, "{} holds keys ({:o})", dir.display(), mode(&dir));
    }

    // A dev node's first start: its data directory, key directories, ledger and blobs.
    let dir = temp.path().join("dev");
    let log = temp.path().join("dev.log");
    stop(start_dev(&dir, &log));
    for (path, wanted) in private_paths(&dir) {
        assert_eq!(mode(&path), wanted, "{} is {:o}", path.display(), mode(&path));
    }

    // An install from before: everything readable by all. The next start tightens it.
    for (path, wanted) in private_paths(&dir) {
        set_mode(&path, if wanted == 0o700 { 0o755 } else { 0o644 });
    }
    stop(start_dev(&dir, &log));
    for (path, wanted) in private_paths(&dir) {
        assert_eq!(mode(&path), wanted, "{} was not made private at start ({:o})", path.display(), mode(&path));
    }
}
