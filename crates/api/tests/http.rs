//! The HTTP API over real loopback sockets: a single-organisation devnet chain in a tempdir,
//! blocks proposed and finalized by hand (no consensus), and a minimal hand-written HTTP/1.1
//! client (`Connection: close`), so every request goes through hyper exactly as a client's would.

use std::{net::SocketAddr, ops::Deref, time::Duration};

use medledger_crypto::Keypair;
use medledger_ledger::{Block, Payload, Transaction, tx::sign};
use medledger_merkle::{
    checkpoint::{Checkpoint, parse_verifier_key, verify_note},
    verify_consistency, verify_inclusion,
};
use medledger_types::{Hash, IdentityId, Role, limits};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

mod common;

use common::{
    now_ms,
    world::{Served, World},
};

const CHAIN_NAME: &str = "medledger.api-test";
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A one-organisation chain an hour old, without record service, its API served on a
/// loopback socket.
struct Node {
    world: World,
    addr: SocketAddr,
    server: Served,
}

impl Deref for Node {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl Node {
    async fn start() -> Self {
        let world = World::builder(CHAIN_NAME).genesis_age_ms(3_600_000).build();
        let server = world.serve().await;
        Self { world, addr: server.addr, server }
    }

    fn org(&self) -> &Keypair {
        &self.net.organisations[0]
    }

    /// Organisation 0 registers practitioner `label` with `nonce`.
    fn register(&self, label: &str, nonce: u64) -> Transaction {
        let doc = Keypair::from_label(label);
        sign(
            self.org(),
            self.net.genesis.chain_id(),
            self.org().id(),
            nonce,
            Payload::register(Role::Practitioner, &doc, Some(self.org().id()), format!("Dr {label}")),
        )
    }

    /// Proposes a block from the mempool on the finalized head and finalizes it, a second
    /// after the head.
    fn commit(&self) -> Block {
        let head = self.chain.head();
        let parent = if head.height == 0 {
            Block { header: self.net.genesis.anchor_header(), txs: vec![] }
        } else {
            self.chain.block(head.height).unwrap().unwrap()
        };
        let block =
            self.chain.propose(&[parent], head.timestamp_ms + 1000, self.net.validators[0].id(), false).unwrap();
        self.chain.apply_finalized(std::slice::from_ref(&block), &[]).unwrap();
        assert_eq!(self.chain.head().hash, block.hash());
        block
    }

    /// Submits `txs` directly and commits them in one block.
    fn commit_txs(&self, txs: &[Transaction]) -> Block {
        for tx in txs {
            self.chain.submit(tx.bytes(), now_ms()).unwrap();
        }
        let block = self.commit();
        assert_eq!(block.txs.len(), txs.len());
        block
    }

    async fn get(&self, path: &str) -> Reply {
        http(self.addr, "GET", path, None, &[]).await
    }

    /// A GET signed by `keys` (`medledger_api::auth`).
    async fn get_signed(&self, keys: &Keypair, path: &str) -> Reply {
        let auth = medledger_api::auth::authorization(keys, &keys.id(), "GET", path, b"", now_ms());
        request(self.addr, "GET", path, None, Some(&auth), &[]).await
    }

    async fn post(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        http(self.addr, "POST", path, content_type, body).await
    }

    /// A POST whose headers declare a `content_length` body that is never sent.
    async fn headers_only(&self, path: &str, content_length: usize) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n",
                self.addr
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw).await;
            parse_response(&raw)
        };
        tokio::time::timeout(IO_TIMEOUT, exchange).await.expect("HTTP exchange timed out")
    }

    async fn stop(&mut self) {
        self.server.stop(IO_TIMEOUT).await;
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    fn json(&self) -> Value {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the error shape `{"error": {"code", "message"}}` with `status`; returns the message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let v = self.json();
        assert_eq!(v["error"]["code"], status, "{v}");
        let message = v["error"]["message"].as_str().expect("message is a string").to_owned();
        assert!(!message.is_empty());
        message
    }
}

/// One HTTP/1.1 request on a fresh connection. The request is written while the response is
/// read, so a server answering early (413) cannot deadlock the client.
async fn http(addr: SocketAddr, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    request(addr, method, path, content_type, None, body).await
}

/// [`http`] with an `Authorization` header.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
) -> Reply {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(auth) = authorization {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        // Hands the write half back so it is not dropped (half-closing the socket) too early.
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&request).await;
            wr
        });
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after an early answer: keep what arrived.
                Err(_) => break,
            }
        }
        drop(writer.await);
        parse_response(&raw)
    };
    tokio::time::timeout(IO_TIMEOUT, exchange).await.expect("HTTP exchange timed out")
}

fn parse_response(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("incomplete response: {:?}", String::from_utf8_lossy(raw));
    });
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        let len: usize = len.parse().unwrap();
        assert!(body.len() >= len, "truncated body");
        body.truncate(len);
    }
    Reply { status, headers, body }
}

fn hash(v: &Value) -> Hash {
    Hash::from_hex(v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))).unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(hash).collect()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a u64"))
}

#[tokio::test]
async fn health_and_head_report_the_finalized_chain() {
    let mut node = Node::start().await;
    let health = node.get("/v1/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok", "height": 0}));

    let head = node.get("/v1/head").await;
    assert_eq!(head.status, 200);
    let v = head.json();
    assert_eq!(hash(&v["chain_id"]), node.net.genesis.chain_id());
    assert_eq!(v["height"], 0);
    assert_eq!(v["log_size"], 0);
    assert_eq!(hash(&v["block_hash"]), node.chain.head().hash);
    assert_eq!(hash(&v["log_root"]), medledger_merkle::empty_root());

    let block = node.commit_txs(&[node.register("a", 0)]);
    let v = node.get("/v1/head").await.json();
    assert_eq!(v["height"], 1);
    assert_eq!(hash(&v["block_hash"]), block.hash());
    assert_eq!(v["timestamp_ms"], block.header.timestamp_ms);
    assert_eq!(v["log_size"], 1);
    assert_eq!(hash(&v["log_root"]), block.header.log_root);
    assert_eq!(node.get("/v1/health").await.json()["height"], 1);
    node.stop().await;
}

#[tokio::test]
async fn submitted_transaction_commits_and_reports_status() {
    let mut node = Node::start().await;
    let first = node.register("a", 0);
    let reply = node.post("/v1/transactions", Some("application/octet-stream"), first.bytes()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = first.id().to_hex();
    assert_eq!(reply.json(), serde_json::json!({"tx_id": id, "status": "pending"}));
    assert_eq!(reply.header("location"), Some(format!("/v1/transactions/{id}").as_str()));

    let status = node.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json(), serde_json::json!({"tx_id": id, "status": "pending"}));

    // The same transaction format as JSON hex.
    let second = node.register("b", 1);
    let body = serde_json::json!({"tx": hex::encode(second.bytes())}).to_string();
    let reply = node.post("/v1/transactions", Some("application/json; charset=utf-8"), body.as_bytes()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.json()["tx_id"], second.id().to_hex());
    assert_eq!(node.chain.mempool_len(), 2);

    let block = node.commit();
    assert_eq!(block.txs.len(), 2);
    for (i, tx) in [&first, &second].into_iter().enumerate() {
        // Anyone learns where it is; what it is and who signed it only its signer and members
        // (here both) do.
        let path = format!("/v1/transactions/{}", tx.id());
        let public = serde_json::json!({
            "tx_id": tx.id().to_hex(),
            "status": "committed",
            "height": 1,
            "index": i,
            "log_index": i,
        });
        let reply = node.get(&path).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json(), public);
        let mut detailed = public;
        detailed["kind"] = "register-identity".into();
        detailed["signer"] = node.org().id().to_hex().into();
        assert_eq!(node.get_signed(node.org(), &path).await.json(), detailed);
    }
    // Upper-case hex names the same transaction.
    let upper = node.get(&format!("/v1/transactions/{}", first.id().to_hex().to_uppercase())).await;
    assert_eq!(upper.json()["status"], "committed");
    node.stop().await;
}

#[tokio::test]
async fn rejected_transactions_report_their_reason() {
    let mut node = Node::start().await;
    // The second registers the same key again: admitted behind the first (only its signature
    // is checked then), dropped as invalid when a block is built.
    let first = node.register("dup", 0);
    let second = node.register("dup", 1);
    for tx in [&first, &second] {
        let reply = node.post("/v1/transactions", Some("application/octet-stream"), tx.bytes()).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    node.commit();
    let v = node.get(&format!("/v1/transactions/{}", second.id())).await.json();
    assert_eq!(v["status"], "rejected");
    assert!(v["reason"].as_str().unwrap().contains("already registered"), "{v}");
    assert!(v.get("height").is_none());
    node.stop().await;
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_verify() {
    let mut node = Node::start().await;
    let mut nonce = 0;
    let mut txs = Vec::new();
    let mut blocks = Vec::new();
    for n in 1..=3 {
        let batch: Vec<Transaction> = (0..n)
            .map(|_| {
                nonce += 1;
                node.register(&format!("p{nonce}"), nonce - 1)
            })
            .collect();
        blocks.push(node.commit_txs(&batch));
        txs.extend(batch);
    }
    let head = node.chain.head();
    assert_eq!(head.log_size, 6);

    for (index, tx) in txs.iter().enumerate() {
        let reply = node.get(&format!("/v1/proofs/inclusion?index={index}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let v = reply.json();
        assert_eq!(v["index"], index);
        assert_eq!(v["size"], head.log_size);
        let (leaf, root, proof) = (hash(&v["leaf_hash"]), hash(&v["root"]), hashes(&v["proof"]));
        assert_eq!(leaf.0, tx.id().0, "the leaf hash is the transaction id");
        assert_eq!(leaf, medledger_merkle::leaf_hash(tx.bytes()));
        assert_eq!(root, head.log_root, "the root is the head's log root");
        verify_inclusion(index as u64, head.log_size, &leaf, &proof, &root).unwrap();
        // The transaction status names the same log position.
        let status = node.get(&format!("/v1/transactions/{}", tx.id())).await.json();
        assert_eq!(status["log_index"], index);
    }
    // At a historical size: the root of block 2's log.
    let v = node.get("/v1/proofs/inclusion?index=1&size=3").await.json();
    assert_eq!(v["size"], 3);
    let root = hash(&v["root"]);
    assert_eq!(root, blocks[1].header.log_root);
    verify_inclusion(1, 3, &hash(&v["leaf_hash"]), &hashes(&v["proof"]), &root).unwrap();

    for from in 1..=head.log_size {
        let v = node.get(&format!("/v1/proofs/consistency?from={from}")).await.json();
        assert_eq!((u64_of(&v["from"]), u64_of(&v["to"])), (from, head.log_size));
        let (root_from, root_to) = (hash(&v["root_from"]), hash(&v["root_to"]));
        assert_eq!(root_to, head.log_root);
        verify_consistency(from, head.log_size, &root_from, &root_to, &hashes(&v["proof"])).unwrap();
    }
    let v = node.get("/v1/proofs/consistency?from=1&to=3").await.json();
    let (root_from, root_to) = (hash(&v["root_from"]), hash(&v["root_to"]));
    assert_eq!(root_from, blocks[0].header.log_root);
    assert_eq!(root_to, blocks[1].header.log_root);
    verify_consistency(1, 3, &root_from, &root_to, &hashes(&v["proof"])).unwrap();
    node.stop().await;
}

#[tokio::test]
async fn checkpoint_verifies_with_the_published_key() {
    let mut node = Node::start().await;
    node.commit_txs(&[node.register("a", 0), node.register("b", 1)]);
    let key = node.get("/v1/checkpoint/key").await;
    assert_eq!(key.status, 200);
    assert_eq!(key.header("content-type"), Some("text/plain; charset=utf-8"));
    let (name, public_key) = parse_verifier_key(&key.text()).unwrap();
    assert_eq!(name, CHAIN_NAME);
    assert_eq!(public_key, node.net.validators[0].public_key());

    let note = node.get("/v1/checkpoint").await;
    assert_eq!(note.status, 200);
    assert_eq!(note.header("content-type"), Some("text/plain; charset=utf-8"));
    let text = note.text();
    let body = verify_note(&text, &name, &public_key).unwrap();
    let checkpoint = Checkpoint::parse(body).unwrap();
    let head = node.chain.head();
    assert_eq!(checkpoint, Checkpoint { origin: CHAIN_NAME.into(), size: head.log_size, root: head.log_root });
    let v = node.get("/v1/head").await.json();
    assert_eq!((u64_of(&v["log_size"]), hash(&v["log_root"])), (checkpoint.size, checkpoint.root));
    node.stop().await;
}

#[tokio::test]
async fn blocks_by_height_json_and_raw_agree() {
    let mut node = Node::start().await;
    let txs = [node.register("a", 0), node.register("b", 1)];
    let first = node.commit_txs(&txs);
    let second = node.commit();

    let v = node.get("/v1/blocks/1").await.json();
    assert_eq!(v["height"], 1);
    assert_eq!(hash(&v["hash"]), first.hash());
    assert_eq!(hash(&v["parent"]), node.net.genesis.anchor_header().hash());
    assert_eq!(v["timestamp_ms"], first.header.timestamp_ms);
    assert_eq!(IdentityId::from_hex(v["proposer"].as_str().unwrap()).unwrap(), node.net.validators[0].id());
    assert_eq!(v["tx_count"], 2);
    assert_eq!(hash(&v["txs_root"]), first.header.txs_root);
    assert_eq!(v["log_size"], 2);
    assert_eq!(hash(&v["log_root"]), first.header.log_root);
    // The public view lists transaction ids; a member sees what each is, who signed it, its nonce.
    let listed = v["transactions"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (entry, tx) in listed.iter().zip(&txs) {
        assert_eq!(entry, &serde_json::json!({"tx_id": tx.id().to_hex()}));
    }
    let v = node.get_signed(node.org(), "/v1/blocks/1").await.json();
    for (entry, tx) in v["transactions"].as_array().unwrap().iter().zip(&txs) {
        assert_eq!(
            entry,
            &serde_json::json!({
                "tx_id": tx.id().to_hex(),
                "kind": "register-identity",
                "signer": node.org().id().to_hex(),
                "nonce": tx.body().nonce,
            })
        );
    }

    for (height, block) in [(1, &first), (2, &second)] {
        let json = node.get(&format!("/v1/blocks/{height}")).await.json();
        // Raw blocks are for members only.
        node.get(&format!("/v1/blocks/{height}/raw")).await.error(401);
        let raw = node.get_signed(&node.net.validators[0], &format!("/v1/blocks/{height}/raw")).await;
        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
        let decoded = Block::decode(&raw.body).unwrap();
        assert_eq!(&decoded, block);
        assert_eq!(decoded.hash(), hash(&json["hash"]));
    }
    let v = node.get("/v1/blocks/2").await.json();
    assert_eq!(hash(&v["parent"]), first.hash());
    assert_eq!(v["tx_count"], 0);
    assert_eq!(v["transactions"], serde_json::json!([]));
    node.stop().await;
}

#[tokio::test]
async fn identities_are_looked_up_by_id() {
    let mut node = Node::start().await;
    let doc = Keypair::from_label("a");
    let patient = Keypair::from_label("patient");
    let patient_tx = sign(
        node.org(),
        node.net.genesis.chain_id(),
        node.org().id(),
        1,
        Payload::register(Role::Patient, &patient, None, ""),
    );
    node.commit_txs(&[node.register("a", 0), patient_tx]);
    let org = node.org().id().to_hex();

    let v = node.get(&format!("/v1/identities/{}", doc.id())).await.json();
    assert_eq!(
        v,
        serde_json::json!({
            "id": doc.id().to_hex(),
            "role": "practitioner",
            "name": "Dr a",
            "organisation": org,
            "signing_key": hex::encode(doc.public_key().0),
            "encryption_key": hex::encode(doc.encryption_public_key().0),
            "next_nonce": 0,
            "registered_at": 1,
        })
    );

    // A patient's identity is the patient's and the members' business only.
    let path = format!("/v1/identities/{}", patient.id());
    let message = node.get(&path).await.error(404);
    assert_eq!(message, format!("no identity {}", patient.id()));
    for keys in [&patient, node.org()] {
        let v = node.get_signed(keys, &path).await.json();
        assert_eq!(v["role"], "patient");
        assert_eq!(v["name"], "", "patient names never go on-chain");
        assert!(v.get("organisation").is_none());
        assert_eq!(v["next_nonce"], 0, "registered by its organisation: it has signed nothing yet");
    }

    let v = node.get(&format!("/v1/identities/{org}")).await.json();
    assert_eq!((v["role"].as_str(), v["name"].as_str()), (Some("organisation"), Some("Hospital A")));
    assert_eq!((v["next_nonce"].as_u64(), v["registered_at"].as_u64()), (Some(2), Some(0)));
    assert!(v.get("organisation").is_none());
    assert_eq!(v["kind"], "care-provider");

    let v = node.get(&format!("/v1/identities/{}", node.net.validators[0].id())).await.json();
    assert_eq!((v["role"].as_str(), v["organisation"].as_str()), (Some("validator"), Some(org.as_str())));

    node.get(&format!("/v1/identities/{}", Keypair::from_label("nobody").id())).await.error(404);
    node.get("/v1/identities/1234").await.error(400);
    node.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let mut node = Node::start().await;
    node.commit_txs(&[node.register("a", 0)]);
    node.post("/v1/transactions", Some("application/octet-stream"), node.register("b", 1).bytes()).await;
    let reply = node.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"), "{reply:?}");
    let text = reply.text();
    assert!(text.lines().any(|l| l == "medledger_height 1"), "{text}");
    assert!(text.lines().any(|l| l == "medledger_log_size 1"), "{text}");
    assert!(text.lines().any(|l| l == "medledger_mempool_txs 1"), "{text}");
    assert!(text.contains("# TYPE medledger_txs_submitted_total counter"), "{text}");
    node.stop().await;
}

#[tokio::test]
async fn halted_node_reports_unavailable() {
    let mut node = Node::start().await;
    node.chain.halt("finalized block 7 failed verification".into());
    let reply = node.get("/v1/health").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "halted", "reason": "finalized block 7 failed verification"})
    );
    // Queries still answer: the finalized data stays valid.
    assert_eq!(node.get("/v1/head").await.status, 200);
    node.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_json_errors_and_changes_nothing() {
    let mut node = Node::start().await;
    let committed = node.register("a", 0);
    node.commit_txs(std::slice::from_ref(&committed));
    let before = node.chain.head();
    let head_json = node.get("/v1/head").await.json();
    let octets = Some("application/octet-stream");

    // Transactions.
    let message = node.post("/v1/transactions", octets, b"garbage").await.error(400);
    assert!(message.contains("malformed"), "{message}");
    node.post("/v1/transactions", octets, b"").await.error(400);
    let mut forged = node.register("b", 1).bytes().to_vec();
    *forged.last_mut().unwrap() ^= 1;
    let message = node.post("/v1/transactions", octets, &forged).await.error(400);
    assert!(message.contains("signature"), "{message}");
    let message = node.post("/v1/transactions", octets, committed.bytes()).await.error(409);
    assert!(message.contains("already committed"), "{message}");
    let replay_json = serde_json::json!({"tx": hex::encode(committed.bytes())}).to_string();
    node.post("/v1/transactions", Some("application/json"), replay_json.as_bytes()).await.error(409);
    // Same signer and used nonce, different transaction: a replay refused as invalid.
    let message = node.post("/v1/transactions", octets, node.register("c", 0).bytes()).await.error(400);
    assert!(message.contains("replayed"), "{message}");
    let oversize = vec![0u8; limits::HTTP_BODY_BYTES_MAX + 1];
    let message = node.post("/v1/transactions", octets, &oversize).await.error(413);
    assert!(message.contains(&limits::HTTP_BODY_BYTES_MAX.to_string()), "{message}");
    node.post("/v1/transactions", Some("application/json"), &oversize).await.error(413);
    // A body declared larger than any route takes is refused before a byte of it is read, in
    // the route's error format.
    let declared = 64 * 1024 * 1024;
    node.headers_only("/v1/transactions", declared).await.error(413);
    let fhir = node.headers_only("/fhir/Observation", declared).await;
    assert_eq!(fhir.status, 413);
    assert!(fhir.header("content-type").is_some_and(|t| t.starts_with("application/fhir+json")), "{fhir:?}");
    // Within the body limit but over the transaction limit: malformed.
    node.post("/v1/transactions", octets, &vec![1u8; limits::TX_BYTES_MAX + 1]).await.error(400);
    node.post("/v1/transactions", Some("text/plain"), committed.bytes()).await.error(415);
    node.post("/v1/transactions", None, committed.bytes()).await.error(415);
    node.post("/v1/transactions", Some("application/json"), b"{not json").await.error(400);
    node.post("/v1/transactions", Some("application/json"), br#"{"tx": "zz"}"#).await.error(400);
    node.post("/v1/transactions", Some("application/json"), br#"{"tx": "0102"}"#).await.error(400);
    node.post("/v1/transactions", Some("application/json"), br#"["tx"]"#).await.error(400);

    // Transaction ids.
    node.get("/v1/transactions/abc").await.error(400);
    node.get(&format!("/v1/transactions/{}", "zz".repeat(32))).await.error(400);
    node.get(&format!("/v1/transactions/{}", "00".repeat(33))).await.error(400);
    let unknown = node.get(&format!("/v1/transactions/{}", "00".repeat(32))).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json(), serde_json::json!({"tx_id": "00".repeat(32), "status": "unknown"}));

    // Proofs.
    for path in [
        "/v1/proofs/inclusion?index=1",
        "/v1/proofs/inclusion?index=0&size=2",
        "/v1/proofs/inclusion?index=5&size=1",
        "/v1/proofs/inclusion?index=0&size=0",
        "/v1/proofs/inclusion",
        "/v1/proofs/inclusion?index=abc",
        "/v1/proofs/inclusion?index=-1",
        "/v1/proofs/inclusion?index=0&size=18446744073709551616",
        "/v1/proofs/inclusion?index=18446744073709551615&size=18446744073709551615",
        "/v1/proofs/consistency?from=0",
        "/v1/proofs/consistency?from=2&to=1",
        "/v1/proofs/consistency?from=1&to=2",
        "/v1/proofs/consistency",
        "/v1/proofs/consistency?from=x",
        "/v1/proofs/consistency?from=1&to=%ff",
    ] {
        let message = node.get(path).await.error(400);
        assert!(!message.contains("panick"), "{path}: {message}");
    }

    // Blocks.
    node.get("/v1/blocks/999").await.error(404);
    node.get("/v1/blocks/999/raw").await.error(401);
    node.get_signed(node.org(), "/v1/blocks/999/raw").await.error(404);
    node.get("/v1/blocks/0").await.error(404);
    node.get("/v1/blocks/one").await.error(400);
    node.get("/v1/blocks/99999999999999999999").await.error(400);
    node.get("/v1/blocks/-1/raw").await.error(400);

    // Routes and methods.
    node.get("/nope").await.error(404);
    node.get("/v1").await.error(404);
    node.get("/v1/blocks/1/raw/extra").await.error(404);
    let reply = node.post("/v1/head", octets, b"").await;
    reply.error(405);
    assert_eq!(reply.header("allow"), Some("GET,HEAD"));
    node.get("/v1/transactions").await.error(405);
    http(node.addr, "DELETE", "/v1/blocks/1", None, &[]).await.error(405);

    // Nothing changed, and the server is still healthy.
    assert_eq!(node.get("/v1/health").await.status, 200);
    assert_eq!(node.chain.head(), before);
    assert_eq!(node.get("/v1/head").await.json(), head_json);
    assert_eq!(node.chain.mempool_len(), 0);
    assert_eq!(node.chain.metrics.txs_submitted.get(), 1);
    node.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_stops_the_server() {
    let mut node = Node::start().await;
    assert_eq!(node.get("/v1/health").await.status, 200);
    node.stop().await;
    assert!(TcpStream::connect(node.addr).await.is_err(), "listener is closed after shutdown");
}
