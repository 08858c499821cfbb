//! The network a test runs against: a devnet chain opened by validator 0 in a tempdir, its
//! organisations, the staff and patients they registered (committed before the test starts),
//! an optional record service of organisation 0's node, and the API router over them, all
//! chosen with a [`WorldBuilder`]. Blocks are committed by hand ([`World::commit`]) unless the
//! world commits in the background ([`WorldBuilder::committing`]), as consensus would.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use medledger_api::{
    ExportLimits, HttpLimits, Services,
    auth::NonceLimits,
    smart::{TokenLimits, TokenStore},
};
use medledger_blobs::MemoryBlobStore;
use medledger_crypto::Keypair;
use medledger_ledger::{AccessEvent, Payload};
use medledger_node::{chain::Chain, devnet::Devnet};
use medledger_records::{RecordService, journal::AuditLimits};
use medledger_types::{IdentityId, OrganisationKind, Role, TxId};
use tokio::{sync::oneshot, task::JoinHandle};

use super::now_ms;

/// An identity registered by an organisation before the test starts.
struct Member {
    label: String,
    organisation: usize,
    role: Role,
    name: String,
}

/// What a [`World`] is made of. Defaults: one organisation (Hospital A), one validator, a
/// genesis a minute old, nobody registered, no record service, the API's default services.
pub struct WorldBuilder {
    chain_name: String,
    organisations: Vec<(String, OrganisationKind)>,
    validators: usize,
    genesis_age_ms: u64,
    staff: Vec<Member>,
    patients: Vec<String>,
    records: bool,
    audit: Option<AuditLimits>,
    patient_key_dir: bool,
    committing: bool,
    services: Services,
}

impl WorldBuilder {
    /// Founding organisations, all care providers (replaces the default Hospital A).
    pub fn organisations(mut self, names: &[&str]) -> Self {
        self.organisations = names.iter().map(|n| ((*n).to_owned(), OrganisationKind::CareProvider)).collect();
        self
    }

    /// Founding organisations with their kinds (replaces the default Hospital A).
    pub fn organisations_of_kinds(mut self, members: &[(&str, OrganisationKind)]) -> Self {
        self.organisations = members.iter().map(|(n, k)| ((*n).to_owned(), *k)).collect();
        self
    }

    /// Genesis validators; validator `i` is operated by organisation `i % organisations`.
    pub fn validators(mut self, count: usize) -> Self {
        self.validators = count;
        self
    }

    /// How long before now the chain began.
    pub fn genesis_age_ms(mut self, age_ms: u64) -> Self {
        self.genesis_age_ms = age_ms;
        self
    }

    /// A practitioner with keys from `label`, registered by organisation `organisation` as
    /// `name`. Staff are [`World::staff`] in the order added.
    pub fn practitioner(self, label: &str, organisation: usize, name: &str) -> Self {
        self.staff(label, organisation, Role::Practitioner, name)
    }

    /// A member of organisation `organisation`'s staff in `role` (a practitioner or a system
    /// client), registered by the organisation.
    pub fn staff(mut self, label: &str, organisation: usize, role: Role, name: &str) -> Self {
        self.staff.push(Member { label: label.to_owned(), organisation, role, name: name.to_owned() });
        self
    }

    /// Patients with keys from `labels`, registered by organisation 0 (never self-registered),
    /// after the staff. They are [`World::patients`] in this order.
    pub fn patients(mut self, labels: &[impl AsRef<str>]) -> Self {
        self.patients.extend(labels.iter().map(|l| l.as_ref().to_owned()));
        self
    }

    /// The record service of organisation 0's node (validator 0), blobs in memory.
    pub fn records(mut self) -> Self {
        self.records = true;
        self
    }

    /// The record service's audit trail bounded by `limits` (implies [`Self::records`]).
    pub fn audit_limits(mut self, limits: AuditLimits) -> Self {
        self.records = true;
        self.audit = Some(limits);
        self
    }

    /// Lets the record service register new patients, their keys held in a tempdir
    /// (implies [`Self::records`]).
    pub fn patient_key_dir(mut self) -> Self {
        self.records = true;
        self.patient_key_dir = true;
        self
    }

    /// Blocks commit in the background every few milliseconds from the start, so writes that
    /// wait for their commit get one.
    pub fn committing(mut self) -> Self {
        self.committing = true;
        self
    }

    /// How long FHIR writes wait for their commit (0: answer once submitted).
    pub fn commit_wait_ms(mut self, wait_ms: u64) -> Self {
        self.services.fhir_commit_wait_ms = wait_ms;
        self
    }

    /// A base URL the API is reached at; the first is the one it writes URLs under.
    pub fn public_base(mut self, base: &str) -> Self {
        self.services.public_bases.push(base.to_owned());
        self
    }

    /// The HTTP server's timeouts and per-client limits (for [`World::serve`]).
    pub fn http_limits(mut self, limits: HttpLimits) -> Self {
        self.services.http = limits;
        self
    }

    /// The quotas of signed requests' nonces.
    pub fn nonce_limits(mut self, limits: NonceLimits) -> Self {
        self.services.nonces = limits;
        self
    }

    /// The quotas of Bulk Data export jobs.
    pub fn export_limits(mut self, limits: ExportLimits) -> Self {
        self.services.exports = limits;
        self
    }

    /// A token store with these quotas (instead of the default one).
    pub fn token_limits(mut self, limits: TokenLimits) -> Self {
        self.services.tokens = Arc::new(TokenStore::new(limits));
        self
    }

    /// Opens the chain, registers and commits everyone, builds the service and the router.
    pub fn build(self) -> World {
        let members: Vec<(&str, OrganisationKind)> = self.organisations.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        let net =
            Devnet::with_kinds(&self.chain_name, now_ms() - self.genesis_age_ms, &members, self.validators, &mut |l| {
                Keypair::from_label(l)
            });
        let dir = tempfile::tempdir().unwrap();
        let (chain, _) = Chain::open(dir.path(), &net.genesis, net.validators[0].clone(), &mut |_, _| {}).unwrap();
        let chain = Arc::new(chain);
        let t = now_ms();
        let mut staff = Vec::new();
        for member in &self.staff {
            let keys = Keypair::from_label(&member.label);
            let org = &net.organisations[member.organisation];
            chain
                .submit_as(org, Payload::register(member.role, &keys, Some(org.id()), member.name.as_str()), t)
                .unwrap();
            staff.push(keys);
        }
        let mut patients = Vec::new();
        for label in &self.patients {
            let keys = Keypair::from_label(label);
            chain.submit_as(&net.organisations[0], Payload::register(Role::Patient, &keys, None, ""), t).unwrap();
            patients.push(keys);
        }
        let mut services = self.services;
        let mut patient_keys = None;
        if self.records {
            let mut service = record_service(&chain, &net, 0);
            if let Some(limits) = self.audit {
                service = service.with_audit_limits(limits);
            }
            if self.patient_key_dir {
                let keys_dir = tempfile::tempdir().unwrap();
                service.set_patient_key_dir(keys_dir.path().to_owned());
                patient_keys = Some(keys_dir);
            }
            services.records = Some(Arc::new(service));
        }
        let router = medledger_api::router_for(chain.clone(), services.clone());
        let mut world = World {
            tokens: services.tokens.clone(),
            service: services.records.clone(),
            net,
            chain,
            router,
            services,
            staff,
            patients,
            patient_keys,
            _committer: None,
            _dir: dir,
        };
        world.commit();
        if self.committing {
            world._committer = Some(world.committer());
        }
        world
    }
}

/// A chain, who is on it, and the API over it.
pub struct World {
    pub net: Devnet,
    pub chain: Arc<Chain>,
    /// The record service of organisation 0's node, if built with one.
    pub service: Option<Arc<RecordService>>,
    /// The bearer tokens the router honours (issue some with [`World::token`]).
    pub tokens: Arc<TokenStore>,
    pub router: axum::Router,
    /// What the router was built with (see [`World::reroute`]).
    pub services: Services,
    /// Organisations' staff, in the order the builder added them.
    pub staff: Vec<Keypair>,
    /// Patients registered by organisation 0, in the order the builder added them.
    pub patients: Vec<Keypair>,
    /// Where the record service keeps the keys of patients it registers, if it may.
    pub patient_keys: Option<tempfile::TempDir>,
    _committer: Option<Committer>,
    _dir: tempfile::TempDir,
}

impl World {
    /// A world on a chain called `chain_name`; see [`WorldBuilder`] for the defaults.
    pub fn builder(chain_name: &str) -> WorldBuilder {
        WorldBuilder {
            chain_name: chain_name.to_owned(),
            organisations: vec![("Hospital A".to_owned(), OrganisationKind::CareProvider)],
            validators: 1,
            genesis_age_ms: 60_000,
            staff: Vec::new(),
            patients: Vec::new(),
            records: false,
            audit: None,
            patient_key_dir: false,
            committing: false,
            services: Services::default(),
        }
    }

    /// [`World::builder`] for the network most tests need: Hospital A and Clinic B, each
    /// running a validator (validator 0, whose node the world is, is Hospital A's).
    pub fn hospital_and_clinic(chain_name: &str) -> WorldBuilder {
        Self::builder(chain_name).organisations(&["Hospital A", "Clinic B"]).validators(2)
    }

    /// The first staff member: by convention a practitioner of organisation 0 (Hospital A).
    pub fn doc_a(&self) -> &Keypair {
        &self.staff[0]
    }

    /// The second staff member: by convention a practitioner of organisation 1 (Clinic B).
    pub fn doc_b(&self) -> &Keypair {
        &self.staff[1]
    }

    /// The first patient.
    pub fn patient(&self) -> &Keypair {
        &self.patients[0]
    }

    /// The second patient: registered, but holding no consent of the first.
    pub fn other_patient(&self) -> &Keypair {
        &self.patients[1]
    }

    /// The record service; panics if the world was built without one.
    pub fn service(&self) -> &Arc<RecordService> {
        self.service.as_ref().expect("this world has no record service")
    }

    /// A record service of organisation `organisation`'s node (validator `organisation`),
    /// blobs in memory: another node of the network writing to the same chain.
    pub fn record_service(&self, organisation: usize) -> RecordService {
        record_service(&self.chain, &self.net, organisation)
    }

    /// Finalizes whatever is pending, proposed by validator 0.
    pub fn commit(&self) {
        medledger_node::devnet::commit_pending(&self.chain, self.net.validators[0].id(), now_ms()).unwrap();
    }

    /// Commits the record service's queued access events.
    pub fn flush_events(&self) {
        self.service().flush_events(now_ms()).unwrap();
        self.commit();
    }

    /// Commits blocks in the background until the returned guard is dropped.
    pub fn committer(&self) -> Committer {
        Committer::start(self.chain.clone(), self.net.validators[0].id())
    }

    /// Rebuilds the router with this world's services changed by `change`.
    pub fn reroute(&mut self, change: impl FnOnce(&mut Services)) {
        change(&mut self.services);
        self.tokens = self.services.tokens.clone();
        self.router = medledger_api::router_for(self.chain.clone(), self.services.clone());
    }

    /// Leaves in the transparency log.
    pub fn log_size(&self) -> u64 {
        self.chain.snapshot().log().size()
    }

    /// How many patients' keys the record service holds for hand-over.
    pub fn held_patient_keys(&self) -> usize {
        let dir = self.patient_keys.as_ref().expect("this world registers no patients");
        std::fs::read_dir(dir.path()).unwrap().count()
    }

    /// Every committed access event on `patient`'s trail, oldest first.
    pub fn access_events(&self, patient: &IdentityId) -> Vec<AccessEvent> {
        let index = self.chain.patient_index();
        index.patient(patient).map_or_else(Vec::new, |p| p.access.iter().map(|a| a.event.clone()).collect())
    }

    /// Waits until transaction `tx` is committed and applied to the state (its status says
    /// committed once its block is durable, a moment before the state shows it).
    pub fn wait_committed(&self, tx: &TxId) {
        use medledger_node::chain::TxStatus;
        let started = std::time::Instant::now();
        loop {
            match self.chain.tx_status(tx).unwrap() {
                TxStatus::Committed { log_index, .. } if self.log_size() > log_index => return,
                TxStatus::Rejected { reason } => panic!("write refused at commit: {reason}"),
                _ if started.elapsed() > Duration::from_secs(20) => panic!("not committed in 20 s"),
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Serves the router's API on a loopback socket (as the node does) until stopped.
    pub async fn serve(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server =
            tokio::spawn(medledger_api::serve_for(listener, self.chain.clone(), self.services.clone(), async move {
                let _ = rx.await;
            }));
        Served { addr, shutdown: Some(tx), server: Some(server) }
    }
}

fn record_service(chain: &Arc<Chain>, net: &Devnet, organisation: usize) -> RecordService {
    RecordService::new(
        chain.clone(),
        net.validators[organisation].clone(),
        net.organisations[organisation].clone(),
        Arc::new(MemoryBlobStore::default()),
    )
}

/// The API served over a socket by [`World::serve`].
pub struct Served {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Served {
    /// Shuts the server down and checks that it finishes within `within`.
    pub async fn stop(&mut self, within: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(within, server).await.expect("server stops").unwrap().unwrap();
        }
    }
}

/// Finalizes whatever is pending every few milliseconds, as a one-validator chain would, until
/// dropped: writes that wait for their commit then get one. A commit that fails fails the test
/// when the committer is dropped.
pub struct Committer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    pub fn start(chain: Arc<Chain>, proposer: IdentityId) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                medledger_node::devnet::commit_pending(&chain, proposer, now_ms()).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}
