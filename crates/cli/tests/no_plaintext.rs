//! The demo node's whole data directory, and everything it logged, contain none of the demo
//! records' plaintext: not resource bodies, not patient names, not clinical values.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_medledger");

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn demo_data_directory_and_logs_hold_no_plaintext() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("dev");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stdout = temp.path().join("stdout.log");
    let stderr = temp.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["dev", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        // Debug logging: the most the node ever says.
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&stdout).unwrap_or_default().contains("ready") {
        if started.elapsed() > Duration::from_secs(180) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("dev node did not get ready: {}", std::fs::read_to_string(&stderr).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let access events flush, then stop.
    std::thread::sleep(Duration::from_secs(1));
    let _ = child.kill();
    let _ = child.wait();

    // The plaintext the demo wrote: the same seed the dev command uses.
    let patients = medledger_synth::Generator::new(2026).patients(12);
    let mut needles: Vec<Vec<u8>> =
        vec![b"\"resourceType\":\"Observation\"".to_vec(), b"\"resourceType\":\"Patient\"".to_vec()];
    let mut written = 0;
    for patient in &patients {
        for resource in patient.resources.iter().take(12) {
            written += 1;
            let json: serde_json::Value = serde_json::from_slice(&resource.json).unwrap();
            if let Some(family) = json["name"][0]["family"].as_str() {
                needles.push(family.as_bytes().to_vec());
            }
            if let Some(line) = json["address"][0]["line"][0].as_str() {
                needles.push(line.as_bytes().to_vec());
            }
            // Resource ids embed no PHI but are unique to the plaintext.
            needles.push(format!("\"id\":\"{}\"", resource.id).into_bytes());
        }
    }
    assert!(written > 100 && needles.len() > 150, "{written} resources, {} needles", needles.len());
    let mut scanned = 0;
    let mut places: Vec<PathBuf> = files(&dir);
    places.push(stdout);
    places.push(stderr);
    for file in places {
        let bytes = std::fs::read(&file).unwrap();
        scanned += bytes.len();
        for needle in &needles {
            assert!(
                !contains(&bytes, needle),
                "plaintext {:?} found in {}",
                String::from_utf8_lossy(needle),
                file.display()
            );
        }
    }
    assert!(scanned > 100_000, "scanned only {scanned} bytes");
    // The demo really stored encrypted records (so the absence above means something).
    let credentials: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dev-credentials.json")).unwrap()).unwrap();
    assert!(credentials["records"].as_array().unwrap().len() > 100);
    // Ready SMART bearer tokens for every identity that may hold one, so the file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("dev-credentials.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    for identity in credentials["identities"].as_array().unwrap() {
        let expected = match identity["role"].as_str().unwrap() {
            "patient" => Some("patient/*.cruds"),
            "practitioner" => Some("user/*.cruds"),
            "organisation" | "system-client" => Some("system/*.cruds"),
            _ => None,
        };
        assert_eq!(identity["bearer_scope"].as_str(), expected, "{identity}");
        assert_eq!(identity["bearer_token"].as_str().map(str::len), expected.map(|_| 43), "{identity}");
    }
    let segments: Vec<_> =
        files(&dir.join("blobs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    let stored: u64 = segments.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(stored > 100 * 200, "only {stored} bytes of ciphertext stored");

    // The stopped node's directory verifies offline, ciphertexts included; a flipped byte in
    // one ciphertext is found.
    let out = Command::new(BIN).args(["verify", "--data-dir"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("record ciphertexts verified"), "{text}");
    // The first entry of the first segment: a 16-byte segment header, a 48-byte entry header,
    // then the ciphertext (`docs/format.md`).
    let segment = segments.iter().min().unwrap();
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[16 + 48 + 10] ^= 1;
    std::fs::write(segment, bytes).unwrap();
    let out = Command::new(BIN).args(["verify", "--data-dir"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("does not match its hash"), "{text}");
}
