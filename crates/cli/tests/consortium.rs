//! A real 4-validator consortium: `medledger init`, four `medledger node` processes on
//! loopback, transactions submitted with the CLI to different nodes, and every node reporting
//! the same head. One node is then killed; the other three keep committing, and the restarted
//! node catches up to the same head. Between organisations, a record written at one hospital's
//! node is read at another's after a grant: that node fetches the ciphertext from its peer.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_medledger");

struct Node {
    child: Option<Child>,
    config: PathBuf,
    api: String,
    log: PathBuf,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,commonware=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start medledger node");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // A failed run shows what each node logged: the only record of why it failed.
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn free_port_block(n: u16) -> u16 {
    // Find `n` consecutive free loopback ports (best effort; the OS may reuse them later).
    'outer: for _ in 0..100 {
        let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 60000 {
            continue;
        }
        let mut held = Vec::new();
        for i in 0..n {
            match std::net::TcpListener::bind(("127.0.0.1", base + i)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'outer,
            }
        }
        return base;
    }
    panic!("no free port range");
}

fn get(api: &str, path: &str) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(&format!("{api}{path}")).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
}

fn cli(args: &[&str]) -> Value {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "medledger {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn register(dir: &Path, api: &str, org: &str, label: &str) -> String {
    let key = dir.join(format!("{label}.key"));
    cli(&["keygen", "--out", key.to_str().unwrap()]);
    let org_key = dir.join("organisations").join(format!("{org}.key"));
    let org_id = medledger_crypto::read_key_file(&org_key).unwrap().id().to_hex();
    let status = cli(&[
        "tx",
        "register",
        "--node",
        api,
        "--key",
        org_key.to_str().unwrap(),
        "--subject",
        key.to_str().unwrap(),
        "--role",
        "practitioner",
        "--name",
        label,
    ]);
    assert_eq!(status["status"], "committed", "{status}");
    // The signer sees its own transaction's details (the public status says only where it is).
    assert_eq!(
        (status["kind"].as_str(), status["signer"].as_str()),
        (Some("register-identity"), Some(org_id.as_str()))
    );
    status["tx_id"].as_str().unwrap().to_owned()
}

/// The block hash at `height` on every node, if all have it.
fn hashes_at(nodes: &[&Node], height: u64) -> Option<Vec<String>> {
    nodes
        .iter()
        .map(|n| get(&n.api, &format!("/v1/blocks/{height}")).map(|b| b["hash"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn four_node_processes_agree() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    // One block for both, so that no API port can collide with a peer-to-peer port.
    let p2p = free_port_block(8);
    let api = p2p + 4;
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--validators", "4", "--p2p-base-port", &p2p.to_string(), "--api-base-port", &api.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut nodes: Vec<Node> = (0..4)
        .map(|i| Node {
            child: None,
            config: dir.join(format!("node-{i}/node.toml")),
            api: format!("http://127.0.0.1:{}", api + i as u16),
            log: dir.join(format!("node-{i}.log")),
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let all = |nodes: &[Node]| nodes.iter().all(|n| get(&n.api, "/v1/health").is_some());
    let start = Instant::now();
    while !all(&nodes) {
        if start.elapsed() > Duration::from_secs(60) {
            panic!("nodes did not come up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Healthy means the API answers; consensus is live once every node has finalized blocks
    // (idle leaders propose empty ones), so every node is connected to a quorum.
    wait_until("every node finalizes blocks", Duration::from_secs(60), || {
        nodes.iter().all(|n| get(&n.api, "/v1/head").is_some_and(|h| h["height"].as_u64().unwrap_or(0) >= 2))
    });

    // Transactions submitted to different nodes, each by a different organisation.
    let orgs =
        ["st-mary-s-hospital", "city-general-hospital", "acme-health-insurance", "northbridge-research-institute"];
    let mut txs = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        txs.push(register(dir, &nodes[i].api, org, &format!("practitioner-{i}")));
    }
    // Every node has every transaction committed, at the same place, and the same head.
    for tx in &txs {
        let mut seen = Vec::new();
        for n in &nodes {
            wait_until("tx committed everywhere", Duration::from_secs(30), || {
                get(&n.api, &format!("/v1/transactions/{tx}")).is_some_and(|s| s["status"] == "committed")
            });
            let s = get(&n.api, &format!("/v1/transactions/{tx}")).unwrap();
            seen.push((s["height"].clone(), s["log_index"].clone()));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "tx {tx} placed differently: {seen:?}");
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let min_height = nodes.iter().map(|n| get(&n.api, "/v1/head").unwrap()["height"].as_u64().unwrap()).min().unwrap();
    let hashes = hashes_at(&refs, min_height).expect("every node has the block");
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "heads differ at height {min_height}: {hashes:?}");
    let log_sizes: Vec<u64> =
        nodes.iter().map(|n| get(&n.api, "/v1/head").unwrap()["log_size"].as_u64().unwrap()).collect();
    assert!(log_sizes.iter().all(|&s| s == 4), "log sizes {log_sizes:?}");

    replicate_between_organisations(dir, &nodes);

    // Crash node 3: the remaining 3 of 4 keep committing.
    nodes[3].kill();
    let tx = register(dir, &nodes[0].api, orgs[0], "practitioner-after-crash");
    for n in &nodes[..3] {
        wait_until("commit without node 3", Duration::from_secs(30), || {
            get(&n.api, &format!("/v1/transactions/{tx}")).is_some_and(|s| s["status"] == "committed")
        });
    }
    // Restarted, it re-verifies its store and catches up to the same chain.
    nodes[3].start();
    let target = get(&nodes[0].api, &format!("/v1/transactions/{tx}")).unwrap()["height"].as_u64().unwrap();
    let caught_up = Instant::now();
    while !get(&nodes[3].api, &format!("/v1/transactions/{tx}")).is_some_and(|s| s["status"] == "committed") {
        if caught_up.elapsed() > Duration::from_secs(60) {
            panic!("node 3 did not catch up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let hashes = hashes_at(&refs, target).expect("every node has the block");
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "chains differ at height {target}: {hashes:?}");

    // Stopped, every node's data directory verifies offline, finalization certificates included.
    for n in &mut nodes {
        n.kill();
    }
    for i in 0..4 {
        let out =
            Command::new(BIN).args(["verify", "--data-dir"]).arg(dir.join(format!("node-{i}/data"))).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "node {i}: {text}{}", String::from_utf8_lossy(&out.stderr));
        let certified: u64 = text
            .split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .find(|(_, next)| *next == "finalization")
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0);
        assert!(certified > 0, "node {i} stored no verified certificate: {text}");
    }
}

/// A record written through St Mary's node (node 0) and granted to City General is read by a
/// City General practitioner through City General's own node (node 1). Node 1 never stored the
/// ciphertext: it fetches it from its peer, checks it against the chain and decrypts it with
/// City General's key.
fn replicate_between_organisations(dir: &Path, nodes: &[Node]) {
    let patient_key = dir.join("patient.key");
    let patient = cli(&["keygen", "--out", patient_key.to_str().unwrap()])["id"].as_str().unwrap().to_owned();
    let key = patient_key.to_str().unwrap();
    // St Mary's registers the patient with the patient's own keys (never self-registered).
    let st_marys = dir.join("organisations/st-mary-s-hospital.key");
    let status = cli(&[
        "tx",
        "register",
        "--node",
        &nodes[0].api,
        "--key",
        st_marys.to_str().unwrap(),
        "--subject",
        key,
        "--role",
        "patient",
    ]);
    assert_eq!(status["status"], "committed", "{status}");
    let resource = dir.join("lab.json");
    let content = r#"{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"text":"synthetic replication probe"},"subject":{"reference":"Patient/probe"},"valueQuantity":{"value":5.40,"unit":"mmol/L"}}"#;
    std::fs::write(&resource, content).unwrap();
    let author = dir.join("practitioner-0.key");
    let written = cli(&[
        "record",
        "put",
        "--node",
        &nodes[0].api,
        "--key",
        author.to_str().unwrap(),
        "--patient",
        &patient,
        resource.to_str().unwrap(),
    ]);
    let (record, tx) =
        (written["record_id"].as_str().unwrap().to_owned(), written["tx_id"].as_str().unwrap().to_owned());
    wait_until("record committed at node 1", Duration::from_secs(30), || {
        get(&nodes[1].api, &format!("/v1/transactions/{tx}")).is_some_and(|s| s["status"] == "committed")
    });
    let reader = dir.join("practitioner-1.key");
    let read_at_node_1 = || {
        Command::new(BIN)
            .args(["record", "get", "--node", &nodes[1].api, "--key", reader.to_str().unwrap(), &record])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    // No grant yet: refused (as if the record did not exist), and nothing fetched.
    let refused = read_at_node_1();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("404"), "{}", String::from_utf8_lossy(&refused.stderr));
    // Node 1 logs each ciphertext it replicates (the record id, never contents).
    let replicated_at_node_1 = || {
        std::fs::read_to_string(&nodes[1].log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("ciphertext replicated from peer") && l.contains(record.as_str()))
    };
    assert!(!replicated_at_node_1());

    let city_general =
        medledger_crypto::read_key_file(&dir.join("organisations/city-general-hospital.key")).unwrap().id().to_hex();
    let grant = cli(&[
        "consent",
        "grant",
        "--node",
        &nodes[0].api,
        "--key",
        key,
        "--grantee",
        &city_general,
        "--scope",
        "categories:labs",
    ]);
    assert_eq!(grant["status"], "committed", "{grant}");
    // St Mary's node wraps the labs key for City General within about a second; then the read
    // at node 1 replicates the ciphertext and returns the exact bytes written.
    wait_until("City General reads through its own node", Duration::from_secs(30), || {
        let out = read_at_node_1();
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim_end() == content
    });
    assert!(replicated_at_node_1(), "node 1 serves the record from a replicated ciphertext");
}
