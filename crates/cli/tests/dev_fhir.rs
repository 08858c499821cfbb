//! The demo over FHIR: `medledger dev`'s records are valid R4 resources served at
//! `/fhir/{type}/{record id}` with the bearer tokens it writes, and their references to the
//! patient and encounter resolve on the same server; and `medledger fhir import` loads the bulk
//! NDJSON set into it.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_medledger");

fn get(url: &str, token: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent.get(url).header("authorization", &format!("Bearer {token}")).call().unwrap();
    (response.status().as_u16(), response.body_mut().read_to_vec().unwrap())
}

/// Starts `medledger dev` under `temp` on a free port and waits until it is ready: the child,
/// its data directory, its port, Dr Alice's bearer token and the demo credentials.
fn start_dev(temp: &std::path::Path) -> (std::process::Child, std::path::PathBuf, u16, String, Value) {
    let dir = temp.join("dev");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stdout = temp.join("stdout.log");
    let mut child = Command::new(BIN)
        .args(["dev", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&stdout).unwrap_or_default().contains("ready") {
        if started.elapsed() > Duration::from_secs(180) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("dev node did not get ready");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let credentials: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dev-credentials.json")).unwrap()).unwrap();
    let alice = credentials["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == "dr-alice-st-marys")
        .and_then(|i| i["bearer_token"].as_str())
        .unwrap()
        .to_owned();
    (child, dir, port, alice, credentials)
}

#[test]
fn demo_records_are_valid_fhir_whose_references_resolve() {
    let temp = tempfile::tempdir().unwrap();
    let (mut child, _, port, alice, credentials) = start_dev(temp.path());
    let base = format!("http://127.0.0.1:{port}/fhir");
    let mut checked = 0;
    let mut references = 0;
    for record in credentials["records"].as_array().unwrap().iter().filter(|r| r["patient"] == "patient-01") {
        let (resource_type, id) = (record["resource_type"].as_str().unwrap(), record["record_id"].as_str().unwrap());
        let (status, body) = get(&format!("{base}/{resource_type}/{id}"), &alice);
        assert_eq!(status, 200, "{resource_type}/{id}: {}", String::from_utf8_lossy(&body));
        let validated = medledger_fhir::validate(&body)
            .unwrap_or_else(|issues| panic!("{resource_type}/{id} is not valid R4: {issues:?}"));
        assert_eq!(validated.id.as_deref(), Some(id));
        for site in &validated.references {
            let target = &site.reference;
            if target.starts_with("Patient/") || target.starts_with("Encounter/") {
                let (status, _) = get(&format!("{base}/{target}"), &alice);
                assert_eq!(status, 200, "{resource_type}/{id} refers to {target}, which does not resolve");
                references += 1;
            }
        }
        checked += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(checked >= 10, "only {checked} records checked");
    assert!(references >= checked - 1, "only {references} references followed");
}

#[test]
fn bulk_ndjson_imports_with_its_conditional_references_resolved() {
    let temp = tempfile::tempdir().unwrap();
    let (mut child, dir, port, alice, _) = start_dev(temp.path());
    let bulk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fhir/bulk-ndjson-10-patients");
    let import = Command::new(BIN)
        .args(["fhir", "import", "--node", &format!("http://127.0.0.1:{port}"), "--key"])
        .arg(dir.join("keys").join("dr-alice-st-marys.key"))
        .arg(&bulk)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&import.stdout).into_owned();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let total = |query: &str| -> u64 {
        let (status, body) = get(&format!("{base}/{query}"), &alice);
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Value>(&body).unwrap()["total"].as_u64().unwrap()
    };
    let checks = || {
        assert!(import.status.success(), "import failed: {said} {}", String::from_utf8_lossy(&import.stderr));
        assert!(said.contains("imported 7160 resources"), "{said}");
        assert!(String::from_utf8_lossy(&import.stderr).contains("resources/s"), "no progress shown");
        // Every resource of the set is there (the demo adds no directory entries or devices).
        assert_eq!(total("Location?_summary=count"), 44);
        assert_eq!(total("Practitioner?_summary=count"), 43);
        assert_eq!(total("Device?_summary=count"), 16);
        assert_eq!(total("Procedure?_summary=count"), 2056);
        // An imported Encounter names its practitioner, location and organisation by server id,
        // and each resolves.
        let (status, body) = get(&format!("{base}/Encounter?_count=100"), &alice);
        assert_eq!(status, 200);
        let page: Value = serde_json::from_slice(&body).unwrap();
        let encounter = page["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .find(|r| r["participant"][0]["individual"]["reference"].is_string())
            .expect("an imported Encounter");
        for reference in [
            &encounter["subject"]["reference"],
            &encounter["participant"][0]["individual"]["reference"],
            &encounter["location"][0]["location"]["reference"],
            &encounter["serviceProvider"]["reference"],
        ] {
            let reference = reference.as_str().unwrap();
            assert!(!reference.contains('?') && !reference.contains('-'), "unresolved {reference}");
            assert_eq!(get(&format!("{base}/{reference}"), &alice).0, 200, "{reference}");
        }
        // Importing again finds what has an identifier (conditional creates) instead of
        // duplicating it: the directory, the patients, the encounters.
        let (patients, encounters) = (total("Patient?_summary=count"), total("Encounter?_summary=count"));
        let again = Command::new(BIN)
            .args(["fhir", "import", "--node", &format!("http://127.0.0.1:{port}"), "--key"])
            .arg(dir.join("keys").join("dr-alice-st-marys.key"))
            .arg(&bulk)
            .output()
            .unwrap();
        assert!(again.status.success(), "second import failed: {}", String::from_utf8_lossy(&again.stderr));
        assert_eq!(total("Location?_summary=count"), 44);
        assert_eq!(total("Practitioner?_summary=count"), 43);
        assert_eq!(total("Patient?_summary=count"), patients);
        assert_eq!(total("Encounter?_summary=count"), encounters);
    };
    // The import registered its patients with keys the node holds; hand one over: the patient
    // rotates to keys of their own, the node forgets its copy, the new keys sign for them.
    let node = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let hand_over = || {
        let held = dir.join("patient-keys");
        let first = std::fs::read_dir(&held)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "key"))
            .unwrap();
        let patient = first.file_stem().unwrap().to_string_lossy().into_owned();
        let data = dir.to_string_lossy().into_owned();
        let (given, new) = (temp.path().join("given.key"), temp.path().join("new.key"));
        let (given, new) = (given.to_string_lossy().into_owned(), new.to_string_lossy().into_owned());
        let (ok, said) = cli(&["patient-keys", "forget", "--data-dir", &data, "--patient", &patient, "--node", &node]);
        assert!(!ok && said.contains("still"), "forgot a key still in use: {said}");
        let (ok, said) =
            cli(&["patient-keys", "hand-over", "--data-dir", &data, "--patient", &patient, "--out", &given]);
        assert!(ok, "{said}");
        assert!(cli(&["keygen", "--out", &new]).0);
        let (ok, said) = cli(&["tx", "--node", &node, "rotate-key", "--key", &given, "--new-key", &new]);
        assert!(ok, "{said}");
        let (ok, said) = cli(&["patient-keys", "forget", "--data-dir", &data, "--patient", &patient, "--node", &node]);
        assert!(ok, "{said}");
        assert!(!first.exists(), "the held copy is gone");
        // The rotated keys sign for the patient's identity: their access log opens.
        let (ok, said) = cli(&["access-log", "--node", &node, "--key", &new]);
        assert!(ok, "the rotated keys cannot act for the patient: {said}");
        let (ok, _) = cli(&["access-log", "--node", &node, "--key", &given]);
        assert!(!ok, "the replaced keys still act for the patient");
    };
    let outcome = std::panic::catch_unwind(checks).and_then(|()| std::panic::catch_unwind(hand_over));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
