//! The portal at `/`: served static, byte for byte, with its hardening headers; reads only
//! public endpoints; and its in-browser RFC 6962 verifier (`portal/rfc6962.js`, run under
//! Node.js) passes the project's vectors and accepts the proofs a real node serves.
//!
//! Node.js is required: without it the verifier tests fail with instructions rather than pass
//! unchecked. `MEDLEDGER_NODE_JS` names the binary if it is not `node` on the PATH.

use std::{
    ops::Deref,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{Request, header},
};
use medledger_crypto::Keypair;
use medledger_ledger::{Payload, Purpose, Scope, actions, tx::sign};
use medledger_types::Role;
use serde_json::json;

mod common;

use common::{now_ms, world::World};

const INDEX_HTML: &str = include_str!("../portal/index.html");
const APP_JS: &str = include_str!("../portal/app.js");
const RFC6962_JS: &str = include_str!("../portal/rfc6962.js");
const STYLE_CSS: &str = include_str!("../portal/style.css");

const CHAIN_NAME: &str = "medledger.portal-test";
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// A one-organisation chain an hour old, without record service, whose blocks the tests
/// make one at a time, each a second after the last.
struct Portal {
    world: World,
    nonce: u64,
    time_ms: u64,
}

impl Deref for Portal {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl Portal {
    fn new() -> Self {
        let world = World::builder(CHAIN_NAME).genesis_age_ms(3_600_000).build();
        let time_ms = world.net.genesis.genesis_time_ms;
        Self { world, nonce: 0, time_ms }
    }

    /// Commits one block of `count` practitioner registrations by the organisation.
    fn block_of(&mut self, count: usize) {
        let org = &self.world.net.organisations[0];
        for _ in 0..count {
            let doc = Keypair::from_label(&format!("practitioner {}", self.nonce));
            let payload = Payload::register(Role::Practitioner, &doc, Some(org.id()), format!("Dr {}", self.nonce));
            let tx = sign(org, self.world.net.genesis.chain_id(), org.id(), self.nonce, payload);
            self.world.chain.submit(tx.bytes(), now_ms()).unwrap();
            self.nonce += 1;
        }
        self.time_ms += 1000;
        let made =
            medledger_node::devnet::commit_pending(&self.world.chain, self.world.net.validators[0].id(), self.time_ms);
        assert_eq!(made.unwrap(), 1, "one block per call");
    }

    /// Commits one block of a patient's registration by the organisation and the patient's
    /// research grant to it: transactions whose kind and signer say something about the
    /// patient's care.
    fn patient_activity(&mut self) {
        let org = self.world.net.organisations[0].clone();
        let patient = Keypair::from_label(&format!("patient {}", self.nonce));
        let register = Payload::register(Role::Patient, &patient, None, "");
        let tx = sign(&org, self.world.net.genesis.chain_id(), org.id(), self.nonce, register);
        self.world.chain.submit(tx.bytes(), now_ms()).unwrap();
        self.nonce += 1;
        self.time_ms += 1000;
        medledger_node::devnet::commit_pending(&self.world.chain, self.world.net.validators[0].id(), self.time_ms)
            .unwrap();
        let grant = Payload::ConsentGrant {
            patient: patient.id(),
            grantee: org.id(),
            scope: Scope::All,
            actions: actions::READ,
            purpose: Purpose::Research,
            valid_from_ms: self.time_ms,
            valid_until_ms: self.time_ms + 86_400_000,
        };
        self.world.chain.submit_as(&patient, grant, now_ms()).unwrap();
        self.time_ms += 1000;
        medledger_node::devnet::commit_pending(&self.world.chain, self.world.net.validators[0].id(), self.time_ms)
            .unwrap();
    }
}

fn header(headers: &axum::http::HeaderMap, name: header::HeaderName) -> &str {
    headers.get(&name).unwrap_or_else(|| panic!("missing {name}")).to_str().unwrap()
}

fn assert_hardened(path: &str, headers: &axum::http::HeaderMap) {
    let csp = header(headers, header::CONTENT_SECURITY_POLICY);
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
        assert!(csp.contains(directive), "{path}: CSP {csp:?} lacks {directive:?}");
    }
    assert!(!csp.contains("unsafe"), "{path}: CSP {csp:?} allows unsafe sources");
    assert_eq!(header(headers, header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
    assert_eq!(header(headers, header::REFERRER_POLICY), "no-referrer", "{path}");
    assert_eq!(header(headers, header::CACHE_CONTROL), "no-store", "{path}");
}

#[tokio::test]
async fn index_is_static_html_with_security_headers() {
    let mut world = Portal::new();
    let page = world.get_anonymous("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(header(&page.headers, header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert_hardened("/", &page.headers);
    let before = page.body;
    assert_eq!(before, INDEX_HTML.as_bytes(), "the page is the file, byte for byte");

    // Nothing about the chain finds its way into the page, before or after it changes.
    world.block_of(2);
    let after = world.get_anonymous("/").await.body;
    assert_eq!(after, before);
    let head = world.get_json("/v1/head", None).await;
    let page = String::from_utf8(after).unwrap();
    for value in [&head["chain_id"], &head["block_hash"], &head["log_root"]] {
        assert!(!page.contains(value.as_str().unwrap()), "page contains {value}");
    }
    assert!(!page.contains(CHAIN_NAME));
}

#[tokio::test]
async fn assets_are_served_with_their_types() {
    let world = Portal::new();
    let assets = [
        ("/portal/app.js", "text/javascript; charset=utf-8", APP_JS),
        ("/portal/rfc6962.js", "text/javascript; charset=utf-8", RFC6962_JS),
        ("/portal/style.css", "text/css; charset=utf-8", STYLE_CSS),
    ];
    for (path, content_type, file) in assets {
        let asset = world.get_anonymous(path).await;
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(header(&asset.headers, header::CONTENT_TYPE), content_type, "{path}");
        assert_hardened(path, &asset.headers);
        assert_eq!(asset.body, file.as_bytes(), "{path}");
    }
}

#[tokio::test]
async fn portal_path_redirects_to_the_page() {
    let world = Portal::new();
    for path in ["/portal", "/portal/"] {
        let redirect = world.get_anonymous(path).await;
        assert_eq!(redirect.status, 307, "{path}");
        assert_eq!(header(&redirect.headers, header::LOCATION), "/", "{path}");
    }
}

#[tokio::test]
async fn unknown_portal_paths_are_json_404s() {
    let world = Portal::new();
    for path in [
        "/portal/index.html",
        "/portal/nope.js",
        "/portal/app.js/extra",
        "/portal/rfc6962.test.mjs",
        "/portal/../Cargo.toml",
        "/portal/%2e%2e/src/lib.rs",
        "/index.html",
    ] {
        let answer = world.get_anonymous(path).await;
        assert_eq!(answer.status, 404, "{path}");
        let error = answer.json();
        assert_eq!(error["error"]["code"], 404, "{path}");
    }
}

/// The page references only its own assets and the public, unsigned endpoints; it loads
/// nothing from elsewhere (the machine it runs on may have no network, and a CDN would see
/// every visitor) and has no inline code for the CSP to refuse.
#[tokio::test]
async fn page_uses_only_its_assets_and_public_endpoints() {
    let world = Portal::new();
    for text in [INDEX_HTML, APP_JS, RFC6962_JS, STYLE_CSS] {
        assert!(!text.contains("http://") && !text.contains("https://"), "external URL in a portal asset");
        assert!(!text.contains("@import") && !text.contains("url("), "stylesheet loads something");
        for signed in ["/v1/records", "/v1/patients", "/v1/break-glass", "authorization", "Medledger-Ed25519"] {
            assert!(!text.to_ascii_lowercase().contains(&signed.to_ascii_lowercase()), "portal uses {signed}");
        }
        assert!(!text.contains("innerHTML") && !text.contains("insertAdjacentHTML") && !text.contains("eval("));
    }
    // Every script tag loads a file, every stylesheet is this one, no inline handlers or styles.
    assert_eq!(INDEX_HTML.matches("<script").count(), 1);
    assert!(INDEX_HTML.contains(r#"<script type="module" src="/portal/app.js"></script>"#));
    assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/portal/style.css">"#));
    assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains(" style="));
    assert!(!INDEX_HTML.contains(" onclick=") && !INDEX_HTML.contains(" onsubmit="));
    assert!(APP_JS.contains(r#"from "./rfc6962.js""#));

    // Each endpoint the page calls exists and is public (answers without a signature).
    let public = ["/v1/head", "/v1/health", "/v1/checkpoint", "/v1/checkpoint/key"];
    for path in public {
        assert!(APP_JS.contains(&format!("\"{path}\"")), "app.js no longer calls {path}");
        assert_eq!(world.get_anonymous(path).await.status, 200, "{path}");
    }
    let allowed =
        [&public[..], &["/v1/blocks/", "/v1/transactions/", "/v1/proofs/inclusion", "/v1/proofs/consistency"]].concat();
    for text in [INDEX_HTML, APP_JS] {
        for (at, _) in text.match_indices("/v1/") {
            let path: String =
                text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '/' || *c == '-').collect();
            assert!(allowed.contains(&path.as_str()), "the portal mentions {path}, not known to be public");
        }
    }
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let world = Portal::new();
    let answer = world.send(Request::builder().method("HEAD").uri("/").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, 200);
    assert_hardened("HEAD /", &answer.headers);
    assert!(answer.body.is_empty());
}

// ---- the verifier under Node.js ----

fn portal_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("portal")
}

fn node_binary() -> PathBuf {
    let name = std::env::var_os("MEDLEDGER_NODE_JS").unwrap_or_else(|| "node".into());
    let found = Command::new(&name).arg("--version").stdout(Stdio::piped()).stderr(Stdio::null()).output();
    match found {
        Ok(out) if out.status.success() => PathBuf::from(name),
        _ => panic!(
            "Node.js ({:?}) is needed to test the portal's proof verifier (crates/api/portal/rfc6962.js) and was \
             not found or did not run. Install Node.js 20 or newer (for example `apt-get install nodejs`) or set \
             MEDLEDGER_NODE_JS to its path. This test does not pass without checking the verifier.",
            name
        ),
    }
}

/// Runs `node rfc6962.test.mjs ARGS`, killing it past [`NODE_TIMEOUT`] (a verifier bug can loop).
fn run_node_test(args: &[&std::ffi::OsStr]) -> String {
    let script = portal_dir().join("rfc6962.test.mjs");
    let mut child = Command::new(node_binary())
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > NODE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish within {NODE_TIMEOUT:?}", script.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The outputs are small (one summary line, or one line per failure), so reading them
    // after exit cannot deadlock on a full pipe in practice; a flood of failures would show
    // up as the timeout above.
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "{} failed ({status}):\n{stdout}\n{stderr}", script.display());
    println!("{stdout}");
    stdout.into_owned()
}

#[test]
fn rfc6962_js_passes_the_vectors() {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors");
    let out = run_node_test(&[vectors.as_os_str()]);
    assert!(out.contains("inclusion refused") && out.contains("consistency refused"), "{out}");
}

/// The proofs this API serves, for every leaf and every pair of sizes a block left the log
/// at, verify in the portal's verifier with leaves taken from the blocks' transaction ids and
/// roots from their headers, exactly as the page checks them.
#[tokio::test]
async fn rfc6962_js_verifies_the_proofs_the_api_serves() {
    let mut world = Portal::new();
    for count in [1, 3, 2, 1, 4, 5] {
        world.block_of(count);
    }
    verify_served_proofs(&world).await;
}

/// The page reads blocks and looks transactions up without signing: it gets ids and
/// positions, not what a transaction does or who signed it (health metadata about patients,
/// for consortium members only), and that is all it needs to check every proof.
#[tokio::test]
async fn portal_proves_inclusion_with_public_block_data_only() {
    let mut world = Portal::new();
    world.block_of(2);
    world.patient_activity();
    world.block_of(1);
    let height = world.get_json("/v1/head", None).await["height"].as_u64().unwrap();
    for h in 1..=height {
        let block = world.get_json(&format!("/v1/blocks/{h}"), None).await;
        for (i, tx) in block["transactions"].as_array().unwrap().iter().enumerate() {
            let fields: Vec<&String> = tx.as_object().unwrap().keys().collect();
            assert_eq!(fields, ["tx_id"], "block {h} tells the public more than transaction ids");
            let id = tx["tx_id"].as_str().unwrap();
            let looked_up = world.get_json(&format!("/v1/transactions/{id}"), None).await;
            let fields: Vec<&String> = looked_up.as_object().unwrap().keys().collect();
            assert_eq!(fields, ["height", "index", "log_index", "status", "tx_id"], "{looked_up}");
            assert_eq!((looked_up["height"].as_u64(), looked_up["index"].as_u64()), (Some(h), Some(i as u64)));
        }
    }
    verify_served_proofs(&world).await;
}

/// Feeds every block (as the public gets it), and the inclusion proof of every leaf and the
/// consistency proof of every pair of sizes a block left the log at, to the portal's verifier.
async fn verify_served_proofs(world: &World) {
    let head = world.get_json("/v1/head", None).await;
    let height = head["height"].as_u64().unwrap();
    let mut blocks = Vec::new();
    for h in 1..=height {
        blocks.push(world.get_json(&format!("/v1/blocks/{h}"), None).await);
    }
    let sizes: Vec<u64> = blocks.iter().map(|b| b["log_size"].as_u64().unwrap()).collect();
    let (mut inclusion, mut consistency) = (Vec::new(), Vec::new());
    for &size in &sizes {
        for index in 0..size {
            inclusion.push(world.get_json(&format!("/v1/proofs/inclusion?index={index}&size={size}"), None).await);
        }
        for &from in sizes.iter().filter(|&&from| from <= size) {
            consistency.push(world.get_json(&format!("/v1/proofs/consistency?from={from}&to={size}"), None).await);
        }
    }
    let want =
        format!("{} served inclusion verified, {} served consistency verified", inclusion.len(), consistency.len());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("served.json");
    let served = json!({ "blocks": blocks, "inclusion": inclusion, "consistency": consistency });
    std::fs::write(&file, serde_json::to_vec(&served).unwrap()).unwrap();
    // The Node.js process is waited for off the async runtime's workers.
    let out = tokio::task::spawn_blocking(move || run_node_test(&["--api".as_ref(), file.as_os_str()])).await.unwrap();
    assert!(out.contains(&want), "{out}");
}
