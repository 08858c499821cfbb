//! `medledger fhir import`: loads FHIR data into a running node over its FHIR API, as a
//! hospital's integration engine would.
//!
//! Inputs are Bulk Data NDJSON files (`Type.000.ndjson`, one resource per line) and Bundle
//! files (`*.json`, posted as they are). NDJSON is sent as transaction Bundles, so each chunk is
//! all-or-nothing:
//! 1. directory resources first (Organization, Location, Practitioner, PractitionerRole), so
//!    the conditional references of later resources (`Practitioner?identifier=…`) resolve;
//! 2. then each patient with their resources (Patient, Encounters, then the rest), in chunks of
//!    at most `--chunk` entries.
//!
//! Within a chunk, relative references between resources (`Patient/<source id>`) resolve on
//! the server through the entries' `fullUrl`s (under an invented base, below). References to
//! resources of earlier chunks are rewritten here to the ids the server gave them; only those
//! reference strings change, every other byte is sent as read.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use medledger_crypto::Keypair;
use serde_json::Value;

/// The base of the `fullUrl`s given to NDJSON resources (the `.invalid` TLD never resolves):
/// entry `https://bulk-import.invalid/fhir/Patient/<id>` is what `Patient/<id>` means inside
/// the Bundle.
const IMPORT_BASE: &str = "https://bulk-import.invalid/fhir";
/// Directory types, in the order they are imported (later ones refer to earlier ones).
const DIRECTORY_ORDER: [&str; 4] = ["Organization", "Location", "Practitioner", "PractitionerRole"];
/// Largest Bundle of directory resources (their content goes on-chain; a batch transaction
/// holds at most 1 MiB).
const DIRECTORY_BUNDLE_BYTES_MAX: usize = 640 * 1024;
/// Largest Bundle of patient records sent (the server takes up to 16 MiB).
const RECORD_BUNDLE_BYTES_MAX: usize = 12 * 1024 * 1024;
/// Largest NDJSON input taken into memory.
const INPUT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Node API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub node: String,
    /// Key file of the importing identity: a practitioner or system client of the
    /// organisation operating the node.
    #[arg(long)]
    pub key: PathBuf,
    /// Most entries per transaction Bundle (at most 1000).
    #[arg(long, default_value_t = 500)]
    pub chunk: usize,
    /// Patients imported at the same time (each patient's Bundles go one after another).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// NDJSON files, Bundle files, or directories of them.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// One NDJSON resource.
struct Resource {
    resource_type: String,
    id: String,
    /// The patient it belongs to (`Patient/<id>` of its subject or patient), if any.
    patient: Option<String>,
    /// A conditional create by the resource's first identifier, so that importing again
    /// finds it instead of creating it twice.
    if_none_exist: Option<String>,
    line: String,
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Imported {
    pub resources: usize,
    pub bundles: usize,
    pub seconds: f64,
}

pub fn run(args: &ImportArgs) -> Result<Imported> {
    if args.chunk == 0 || args.chunk > 1000 {
        bail!("--chunk must be 1..=1000");
    }
    let keys = medledger_crypto::read_key_file(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let client = FhirClient::connect(&args.node, &keys)?;
    import_paths(&client, &args.inputs, args.chunk, args.parallel, true)
}

/// Imports `inputs` (files or directories) through `client`; with `verbose`, prints progress
/// after every Bundle.
pub fn import_paths(
    client: &FhirClient,
    inputs: &[PathBuf],
    chunk: usize,
    parallel: usize,
    verbose: bool,
) -> Result<Imported> {
    let mut ndjson = Vec::new();
    let mut bundles = Vec::new();
    for input in inputs {
        collect(input, &mut ndjson, &mut bundles)?;
    }
    let started = Instant::now();
    let mut imported = Imported::default();
    for path in &bundles {
        let body = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let answer = client.post_bundle(&body).with_context(|| format!("importing {}", path.display()))?;
        imported.resources += answer["entry"].as_array().map_or(0, Vec::len);
        imported.bundles += 1;
        progress(&imported, started, verbose);
    }
    if !ndjson.is_empty() {
        let resources = read_ndjson(&ndjson)?;
        import_ndjson(client, resources, chunk, &mut imported, started, verbose, parallel)?;
    }
    imported.seconds = started.elapsed().as_secs_f64();
    Ok(imported)
}

fn progress(imported: &Imported, started: Instant, verbose: bool) {
    if !verbose {
        return;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "imported {} resources in {} bundles ({:.1} s, {:.0} resources/s)",
        imported.resources,
        imported.bundles,
        seconds,
        imported.resources as f64 / seconds
    );
}

fn collect(input: &Path, ndjson: &mut Vec<PathBuf>, bundles: &mut Vec<PathBuf>) -> Result<()> {
    if input.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(input)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        entries.sort();
        for path in entries.into_iter().filter(|p| p.is_file()) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".ndjson") {
                ndjson.push(path);
            } else if name.ends_with(".json") {
                bundles.push(path);
            }
        }
        return Ok(());
    }
    let name = input.file_name().unwrap_or_default().to_string_lossy();
    match () {
        _ if name.ends_with(".ndjson") => ndjson.push(input.to_owned()),
        _ if name.ends_with(".json") => bundles.push(input.to_owned()),
        _ => bail!("{}: expected .ndjson or .json (a Bundle)", input.display()),
    }
    Ok(())
}

fn read_ndjson(files: &[PathBuf]) -> Result<Vec<Resource>> {
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    if total > INPUT_BYTES_MAX {
        bail!(
            "{total} bytes of NDJSON is more than this importer holds in memory ({INPUT_BYTES_MAX}); split the input"
        );
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = || format!("{} line {}", file.display(), n + 1);
            let json: Value = serde_json::from_str(line).with_context(at)?;
            let resource_type = json["resourceType"].as_str().ok_or_else(|| anyhow!("{}: no resourceType", at()))?;
            let id = json["id"].as_str().ok_or_else(|| anyhow!("{}: no id (NDJSON resources need one)", at()))?;
            let patient = match resource_type {
                "Patient" => Some(format!("Patient/{id}")),
                _ => ["subject", "patient"]
                    .iter()
                    .find_map(|k| json[*k]["reference"].as_str())
                    .filter(|r| r.starts_with("Patient/"))
                    .map(str::to_owned),
            };
            let if_none_exist = json["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|i| Some((i["system"].as_str()?, i["value"].as_str()?)))
                .map(|(system, value)| format!("identifier={}|{}", query_escape(system), query_escape(value)));
            out.push(Resource {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                patient,
                if_none_exist,
                line: line.to_owned(),
            });
        }
    }
    Ok(out)
}

fn import_ndjson(
    client: &FhirClient,
    resources: Vec<Resource>,
    chunk: usize,
    imported: &mut Imported,
    started: Instant,
    verbose: bool,
    parallel: usize,
) -> Result<()> {
    // Source `Type/id` → the server's `Type/id`, for references across chunks.
    let mut server_ids: HashMap<String, String> = HashMap::new();
    let (directory, records): (Vec<Resource>, Vec<Resource>) =
        resources.into_iter().partition(|r| DIRECTORY_ORDER.contains(&r.resource_type.as_str()));
    for resource_type in DIRECTORY_ORDER {
        let of_type: Vec<&Resource> = directory.iter().filter(|r| r.resource_type == resource_type).collect();
        for group in chunks(&of_type, chunk, DIRECTORY_BUNDLE_BYTES_MAX) {
            send(client, &group, &mut server_ids, imported)?;
            progress(imported, started, verbose);
        }
    }
    // Each patient's resources together: the Patient, its Encounters, then the rest.
    let mut by_patient: Vec<(String, Vec<&Resource>)> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut orphans = Vec::new();
    for r in &records {
        match &r.patient {
            Some(p) => {
                let at = *position.entry(p.as_str()).or_insert_with(|| {
                    by_patient.push((p.clone(), Vec::new()));
                    by_patient.len() - 1
                });
                by_patient[at].1.push(r);
            }
            None => orphans.push(r),
        }
    }
    if !orphans.is_empty() {
        bail!(
            "{} resources (e.g. {}/{}) name no patient: medledger stores patient records under their patient",
            orphans.len(),
            orphans[0].resource_type,
            orphans[0].id
        );
    }
    let rank = |r: &Resource| match r.resource_type.as_str() {
        "Patient" => 0,
        "Encounter" => 1,
        _ => 2,
    };
    for (patient, group) in &mut by_patient {
        group.sort_by_key(|r| rank(r));
        if group.first().is_none_or(|r| r.resource_type != "Patient") {
            bail!("the input has resources of {patient} but not the Patient itself");
        }
    }
    // Patients are independent of each other: `parallel` streams take them in turn; each
    // patient's chunks go in order, each after the one before it committed.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
    let shared = std::sync::Mutex::new(std::mem::take(imported));
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= by_patient.len() || failed.lock().expect("lock").is_some() {
                        return;
                    }
                    let (patient, group) = &by_patient[n];
                    // References across this patient's chunks, over the directory's.
                    let mut ids = server_ids.clone();
                    for part in chunks(group, chunk, RECORD_BUNDLE_BYTES_MAX) {
                        let mut counted = Imported::default();
                        if let Err(e) = send(client, &part, &mut ids, &mut counted) {
                            failed.lock().expect("lock").get_or_insert(e.context(format!("importing {patient}")));
                            return;
                        }
                        let mut total = shared.lock().expect("lock");
                        total.resources += counted.resources;
                        total.bundles += counted.bundles;
                        progress(&total, started, verbose);
                    }
                }
            });
        }
    });
    *imported = shared.into_inner().expect("lock");
    match failed.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `items` in runs of at most `count` entries and about `bytes_max` bytes.
fn chunks<'r>(items: &[&'r Resource], count: usize, bytes_max: usize) -> Vec<Vec<&'r Resource>> {
    let mut out = Vec::new();
    let mut current: Vec<&Resource> = Vec::new();
    let mut bytes = 0;
    for item in items {
        if !current.is_empty() && (current.len() >= count || bytes + item.line.len() > bytes_max) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += item.line.len();
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Posts one chunk as a transaction and records the ids the server gave.
fn send(
    client: &FhirClient,
    group: &[&Resource],
    server_ids: &mut HashMap<String, String>,
    imported: &mut Imported,
) -> Result<()> {
    let mut body = String::from(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (i, r) in group.iter().enumerate() {
        let line = if server_ids.is_empty() {
            r.line.clone().into_bytes()
        } else {
            medledger_fhir::splice::replace_references(r.line.as_bytes(), server_ids)
                .map_err(|e| anyhow!("{}/{}: {e}", r.resource_type, r.id))?
        };
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(r#"{{"fullUrl":"{IMPORT_BASE}/{}/{}","resource":"#, r.resource_type, r.id));
        body.push_str(std::str::from_utf8(&line)?);
        match &r.if_none_exist {
            Some(query) => body.push_str(&format!(
                r#","request":{{"method":"POST","url":"{}","ifNoneExist":{}}}}}"#,
                r.resource_type,
                serde_json::Value::String(query.clone())
            )),
            None => body.push_str(&format!(r#","request":{{"method":"POST","url":"{}"}}}}"#, r.resource_type)),
        }
    }
    body.push_str("]}");
    let answer = client.post_bundle(&body)?;
    let entries = answer["entry"].as_array().ok_or_else(|| anyhow!("the node's answer has no entries"))?;
    if entries.len() != group.len() {
        bail!("the node answered {} entries for {}", entries.len(), group.len());
    }
    for (r, entry) in group.iter().zip(entries) {
        let location = entry["response"]["location"].as_str().ok_or_else(|| anyhow!("an entry has no location"))?;
        let server = location.split("/_history").next().unwrap_or(location);
        server_ids.insert(format!("{}/{}", r.resource_type, r.id), server.to_owned());
    }
    imported.resources += group.len();
    imported.bundles += 1;
    Ok(())
}

/// `text` with the characters that would end a query parameter percent-encoded.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | '&' | '=' | '#' | '+' | ' ' | '|' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A FHIR client holding a SMART backend-services token of the importing identity.
pub struct FhirClient {
    base: String,
    agent: ureq::Agent,
    /// The token and when it was obtained.
    token: std::sync::Mutex<(String, Instant)>,
    /// With a key, a token about to expire is renewed (tokens last 5 minutes).
    keys: Option<Keypair>,
}

/// Renew a token this old (the node's tokens last 5 minutes).
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(240);

impl FhirClient {
    /// Gets a token for `keys` from the node's `/auth/token` with an EdDSA client assertion.
    pub fn connect(node: &str, keys: &Keypair) -> Result<Self> {
        let mut client = Self::with_token(node, "");
        client.keys = Some(keys.clone());
        let token = client.fetch_token(keys)?;
        *client.token.lock().expect("token lock") = (token, Instant::now());
        Ok(client)
    }

    fn fetch_token(&self, keys: &Keypair) -> Result<String> {
        let (base, agent) = (&self.base, &self.agent);
        let identity: Value = serde_json::from_slice(
            &agent
                .get(format!("{base}/v1/identities/{}", keys.id()))
                .call()
                .context("asking the node who the key is")?
                .body_mut()
                .read_to_vec()?,
        )?;
        let context = match identity["role"].as_str() {
            Some("practitioner") => "user",
            Some("system-client") => "system",
            other => bail!(
                "the key's identity ({}) cannot import: use a practitioner's or a system client's key",
                other.unwrap_or("unknown")
            ),
        };
        let token_url = format!("{base}/auth/token");
        let assertion = client_assertion(keys, &token_url)?;
        let scope = format!("{context}/*.cruds");
        let mut response = agent
            .post(&token_url)
            .send_form([
                ("grant_type", "client_credentials"),
                ("scope", scope.as_str()),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", assertion.as_str()),
            ])
            .context("asking the node for a token")?;
        let status = response.status().as_u16();
        let answer: Value = serde_json::from_slice(&response.body_mut().read_to_vec()?).unwrap_or(Value::Null);
        if status != 200 {
            bail!("the node refused a token ({status}): {answer}");
        }
        Ok(answer["access_token"].as_str().ok_or_else(|| anyhow!("no access_token in {answer}"))?.to_owned())
    }

    /// The token to use now, renewed first if it is about to expire.
    fn current_token(&self) -> Result<String> {
        let mut token = self.token.lock().expect("token lock");
        if let Some(keys) = &self.keys
            && token.1.elapsed() >= TOKEN_RENEW_AFTER
        {
            *token = (self.fetch_token(keys)?, Instant::now());
        }
        Ok(token.0.clone())
    }

    /// A client using `token` (already issued) at `node`.
    pub fn with_token(node: &str, token: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Self {
            base: node.trim_end_matches('/').to_owned(),
            agent,
            token: std::sync::Mutex::new((token.to_owned(), Instant::now())),
            keys: None,
        }
    }

    /// Posts a transaction Bundle; its transaction-response, or why it failed.
    pub fn post_bundle(&self, body: &str) -> Result<Value> {
        let mut response = self
            .agent
            .post(format!("{}/fhir", self.base))
            .header("authorization", &format!("Bearer {}", self.current_token()?))
            .header("content-type", "application/fhir+json")
            .send(body)
            .context("posting a Bundle")?;
        let status = response.status().as_u16();
        let bytes = response.body_mut().with_config().limit(64 << 20).read_to_vec()?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match status {
            200 => Ok(answer),
            202 => bail!("the node accepted a Bundle but did not commit it in time; check its progress"),
            _ => bail!("the node refused a Bundle ({status}): {}", outcome_text(&answer)),
        }
    }
}

/// The diagnostics of an OperationOutcome, for error messages.
fn outcome_text(outcome: &Value) -> String {
    let issues: Vec<String> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let at = i["expression"][0].as_str().map(|e| format!(" at {e}")).unwrap_or_default();
            format!("{}{at}: {}", i["code"].as_str().unwrap_or("?"), i["diagnostics"].as_str().unwrap_or(""))
        })
        .collect();
    if issues.is_empty() { outcome.to_string() } else { issues.join("; ") }
}

/// An EdDSA-signed JWT client assertion (SMART backend services) for `audience`.
fn client_assertion(keys: &Keypair, audience: &str) -> Result<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let id = keys.id().to_hex();
    let mut jti = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut jti);
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT"});
    let claims = serde_json::json!({"iss": id, "sub": id, "aud": audience, "exp": now + 240, "iat": now, "jti": hex::encode(jti)});
    let signing_input = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
    let signature = keys.sign(signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", b64.encode(signature.0)))
}
