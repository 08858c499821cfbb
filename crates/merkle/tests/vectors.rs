//! Conformance against external vectors (copied under `testdata/vectors`, see SOURCE files):
//! every transparency-dev/merkle inclusion and consistency probe, the RFC 6962 known answers,
//! the C2SP signed-note example, and a whole signed tessera tiled log.

use std::{fs, path::PathBuf};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use medledger_crypto::PublicKey;
use medledger_merkle::{
    Hash, MerkleLog, checkpoint, leaf_hash, node_hash, root_from_leaf_hashes, verify_consistency,
    verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes,
};
use serde_json::Value;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

fn json_files(dir: PathBuf) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Go's encoder omits zero values, so a missing field is empty / zero.
fn b64(v: &Value) -> Vec<u8> {
    v.as_str().map(|s| B64.decode(s).unwrap()).unwrap_or_default()
}

fn int(v: &Value) -> u64 {
    if v.is_null() { 0 } else { v.as_u64().expect("sizes and indices are uint64") }
}

fn b64_list(v: &Value) -> Vec<Vec<u8>> {
    match v {
        Value::Null => vec![],
        Value::Array(items) => items.iter().map(b64).collect(),
        _ => panic!("proof must be null or an array"),
    }
}

#[test]
fn all_inclusion_probes() {
    let files = json_files(vectors().join("merkle/testdata/inclusion"));
    assert!(files.len() >= 90, "expected the full probe set, found {}", files.len());
    let (mut ok, mut err) = (0, 0);
    for file in &files {
        let probe: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
        let want_err = probe["wantErr"].as_bool().unwrap();
        let proof = b64_list(&probe["proof"]);
        let result = verify_inclusion_bytes(
            int(&probe["leafIdx"]),
            int(&probe["treeSize"]),
            &b64(&probe["leafHash"]),
            &proof,
            &b64(&probe["root"]),
        );
        assert_eq!(result.is_err(), want_err, "{}: {} => {result:?}", file.display(), probe["desc"]);
        if want_err { err += 1 } else { ok += 1 }
    }
    assert!(ok > 0 && err > 0);
}

#[test]
fn all_consistency_probes() {
    let files = json_files(vectors().join("merkle/testdata/consistency"));
    assert!(files.len() >= 90, "expected the full probe set, found {}", files.len());
    let (mut ok, mut err) = (0, 0);
    for file in &files {
        let probe: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
        let want_err = probe["wantErr"].as_bool().unwrap();
        let proof = b64_list(&probe["proof"]);
        let result = verify_consistency_bytes(
            int(&probe["size1"]),
            int(&probe["size2"]),
            &b64(&probe["root1"]),
            &b64(&probe["root2"]),
            &proof,
        );
        assert_eq!(result.is_err(), want_err, "{}: {} => {result:?}", file.display(), probe["desc"]);
        if want_err { err += 1 } else { ok += 1 }
    }
    assert!(ok > 0 && err > 0);
}

fn hex32(v: &Value) -> Hash {
    Hash(hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap())
}

#[test]
fn known_answers() {
    let ka: Value =
        serde_json::from_str(&fs::read_to_string(vectors().join("merkle/known_answers.json")).unwrap()).unwrap();
    let leaves: Vec<Vec<u8>> =
        ka["leaf_inputs"].as_array().unwrap().iter().map(|v| hex::decode(v.as_str().unwrap()).unwrap()).collect();
    let mut log = MerkleLog::new();
    for leaf in &leaves {
        log.push(leaf_hash(leaf));
    }
    assert_eq!(log.root_at(0).unwrap(), hex32(&ka["empty_tree_root"]));
    let leaf_hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
    for (size, root) in ka["roots"].as_array().unwrap().iter().enumerate() {
        assert_eq!(log.root_at(size as u64).unwrap(), hex32(root), "root of size {size}");
        assert_eq!(root_from_leaf_hashes(&leaf_hashes[..size]), hex32(root));
    }
    for p in ka["inclusion_proofs"].as_array().unwrap() {
        let (index, size) = (p["index"].as_u64().unwrap(), p["size"].as_u64().unwrap());
        let want: Vec<Hash> = p["proof"].as_array().unwrap().iter().map(hex32).collect();
        assert_eq!(log.inclusion_proof(index, size).unwrap(), want, "inclusion {index}/{size}");
        verify_inclusion(index, size, &leaf_hashes[index as usize], &want, &log.root_at(size).unwrap()).unwrap();
    }
    for p in ka["consistency_proofs"].as_array().unwrap() {
        let (from, to) = (p["size1"].as_u64().unwrap(), p["size2"].as_u64().unwrap());
        let want: Vec<Hash> = p["proof"].as_array().unwrap().iter().map(hex32).collect();
        assert_eq!(log.consistency_proof(from, to).unwrap(), want, "consistency {from}->{to}");
        verify_consistency(from, to, &log.root_at(from).unwrap(), &log.root_at(to).unwrap(), &want).unwrap();
    }
    for h in ka["hasher"].as_array().unwrap() {
        if let Some(data) = h.get("leaf_data_utf8") {
            assert_eq!(leaf_hash(data.as_str().unwrap().as_bytes()), hex32(&h["leaf_hash"]));
        } else {
            let c = h["children_utf8"].as_array().unwrap();
            // The reference hashes raw child bytes, which need not be 32 bytes long.
            let mut data = vec![1u8];
            data.extend_from_slice(c[0].as_str().unwrap().as_bytes());
            data.extend_from_slice(c[1].as_str().unwrap().as_bytes());
            assert_eq!(medledger_crypto::sha256(&data), hex32(&h["node_hash"]));
        }
    }
    // node_hash is the same function on 32-byte children.
    assert_eq!(node_hash(&leaf_hashes[0], &leaf_hashes[1]), hex32(&ka["roots"][2]));
}

fn vkey(path: &str) -> (String, PublicKey) {
    checkpoint::parse_verifier_key(path).unwrap()
}

#[test]
fn c2sp_signed_note_example() {
    let dir = vectors().join("c2sp");
    let (name, key) = vkey(&fs::read_to_string(dir.join("signed-note-example.vkey")).unwrap());
    let note = fs::read_to_string(dir.join("signed-note-example.note")).unwrap();
    let body = checkpoint::verify_note(&note, &name, &key).unwrap();
    assert_eq!(body, "This is an example message.\n");
    assert!(checkpoint::verify_note(&note.replace("example message", "exemplary message"), &name, &key).is_err());
}

#[test]
fn tessera_tiled_log_checkpoints_match_our_roots() {
    let dir = vectors().join("tessera-log");
    let source = fs::read_to_string(dir.join("SOURCE.txt")).unwrap();
    let vkey_text = source.split("vkey ").nth(1).unwrap().trim_end_matches([')', '\n', ' ']);
    let (name, key) = vkey(vkey_text);
    let log_dir = dir.join("testdata/log");
    let mut checked = 0;
    for size in 0..=15u64 {
        let note = fs::read_to_string(log_dir.join(format!("checkpoint.{size}"))).unwrap();
        let body = checkpoint::verify_note(&note, &name, &key).unwrap();
        let cp = checkpoint::Checkpoint::parse(body).unwrap();
        assert_eq!(cp.size, size);
        assert_eq!(cp.origin, "example.com/log/testdata");
        // Rebuild the tree from the entry bundle (uint16 big-endian length || entry, repeated).
        let mut log = MerkleLog::new();
        if size > 0 {
            let bundle = fs::read(log_dir.join(format!("tile/entries/000.p/{size}"))).unwrap();
            let mut rest = bundle.as_slice();
            while !rest.is_empty() {
                let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                log.push(leaf_hash(&rest[2..2 + len]));
                rest = &rest[2 + len..];
            }
        }
        assert_eq!(log.size(), size);
        assert_eq!(log.root(), cp.root, "root of size {size}");
        checked += 1;
    }
    assert_eq!(checked, 16);
}
