//! `medledger patient-keys`: the keys a node holds in trust for patients it registered (a FHIR
//! create or import of someone new to the network), and their hand-over.
//!
//! Hand-over: `hand-over` copies the key file for the patient (mode 0600, never overwriting);
//! the patient then rotates to keys only they hold (`medledger keygen`, then `medledger tx
//! rotate-key`), after which the held copy signs for nothing; `forget` deletes it, and refuses
//! to while it is still the patient's valid key (unless `--force`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use medledger_crypto::Keypair;
use medledger_types::IdentityId;

use crate::{client::Client, run::PATIENT_KEYS_DIR};

#[derive(clap::Subcommand, Debug)]
pub enum PatientKeysCommand {
    /// List the patient keys this node holds, and (with --node) whether each is still the
    /// patient's valid key.
    List {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node: Option<String>,
    },
    /// Copy a patient's held key file for hand-over (the patient should then rotate).
    HandOver {
        #[arg(long)]
        data_dir: PathBuf,
        /// The patient's identity id (hex).
        #[arg(long)]
        patient: IdentityId,
        /// Where to write the copy (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete a held key once the patient has rotated to keys of their own.
    Forget {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        patient: IdentityId,
        /// Node API, to check the patient has rotated.
        #[arg(long)]
        node: String,
        /// Delete even though the held key is still the patient's valid key.
        #[arg(long)]
        force: bool,
    },
}

fn held_path(data_dir: &Path, patient: &IdentityId) -> PathBuf {
    data_dir.join(PATIENT_KEYS_DIR).join(format!("{patient}.key"))
}

fn held_keys(data_dir: &Path, patient: &IdentityId) -> Result<Keypair> {
    let path = held_path(data_dir, patient);
    let keys = medledger_crypto::read_key_file(&path)
        .with_context(|| format!("this node holds no key for patient {patient} ({})", path.display()))?;
    if keys.id() != *patient {
        bail!("{} holds the keys of {}, not of {patient}", path.display(), keys.id());
    }
    Ok(keys)
}

/// Whether the identity's on-chain signing key is still `keys`' (hex compare). Asked signed by
/// `keys` (a patient's identity is shown only to the patient and to members): once the patient
/// has rotated, that signature no longer verifies, which answers the question too.
fn still_valid(client: &Client, keys: &Keypair) -> Result<bool> {
    let (status, identity) = client.get_signed(keys, &format!("/v1/identities/{}", keys.id()))?;
    let message = identity.pointer("/error/message").and_then(serde_json::Value::as_str).unwrap_or_default();
    match status {
        200 => {
            let on_chain = identity["signing_key"].as_str().context("the node did not report a signing key")?;
            Ok(on_chain == hex::encode(keys.public_key().0))
        }
        401 if message == "signature does not verify" => Ok(false),
        s => bail!("node answered {s}: {message}"),
    }
}

pub fn run(command: PatientKeysCommand) -> Result<()> {
    match command {
        PatientKeysCommand::List { data_dir, node } => {
            let dir = data_dir.join(PATIENT_KEYS_DIR);
            let client = node.as_deref().map(Client::new);
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(read) => read.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(_) => Vec::new(),
            };
            entries.sort();
            for path in entries.iter().filter(|p| p.extension().is_some_and(|x| x == "key")) {
                let keys = medledger_crypto::read_key_file(path)?;
                let status = match &client {
                    None => String::new(),
                    Some(c) => match still_valid(c, &keys) {
                        Ok(true) => "  held key is the patient's valid key".into(),
                        Ok(false) => "  rotated by the patient: the held copy can be forgotten".into(),
                        Err(e) => format!("  unknown ({e})"),
                    },
                };
                println!("{}{status}", keys.id());
            }
            eprintln!("{} held patient keys in {}", entries.len(), dir.display());
        }
        PatientKeysCommand::HandOver { data_dir, patient, out } => {
            let keys = held_keys(&data_dir, &patient)?;
            medledger_crypto::write_key_file(&out, &keys).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the keys of patient {patient} to {} (mode 0600)", out.display());
            eprintln!(
                "give the file to the patient in person or over a secure channel. They should then rotate to keys \
                 only they hold:\n  medledger keygen --out NEW.key\n  medledger tx --node URL rotate-key --key {} \
                 --new-key NEW.key\nand this node's copy can be deleted:\n  medledger patient-keys forget --data-dir \
                 {} --patient {patient} --node URL",
                out.display(),
                data_dir.display()
            );
        }
        PatientKeysCommand::Forget { data_dir, patient, node, force } => {
            let keys = held_keys(&data_dir, &patient)?;
            if still_valid(&Client::new(&node), &keys)? && !force {
                bail!(
                    "the held key is still patient {patient}'s valid key: hand it over and let them rotate first \
                     (or --force to delete it anyway, leaving only the patient's copy)"
                );
            }
            let path = held_path(&data_dir, &patient);
            // Overwrite before removing, so the secret does not linger in the file's blocks.
            let len = std::fs::metadata(&path)?.len() as usize;
            std::fs::write(&path, vec![0u8; len])?;
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("forgot the held key of patient {patient}");
        }
    }
    Ok(())
}
