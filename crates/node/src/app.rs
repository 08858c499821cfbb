//! The consensus application: builds proposals from the mempool, verifies proposals by
//! executing them against the ledger rules, and applies finalized blocks in order.
//!
//! It implements marshal's `Application`; `marshal::standard::Inline` wraps it into the
//! automaton, relay and reporter that Simplex drives. Marshal disseminates blocks, fetches
//! missing ones and delivers finalized blocks in height order without gaps.

use std::{sync::Arc, time::Duration, time::UNIX_EPOCH};

use commonware_actor::Feedback;
use commonware_consensus::{
    Application, Reporter,
    marshal::{Update, ancestry::Ancestry, core::Mailbox, standard::Standard},
    simplex::{scheme::ed25519, types::Context},
    types::Height,
};
use commonware_cryptography::{Digested, Digestible, ed25519::PublicKey, sha256::Digest};
use commonware_runtime::Clock;
use commonware_utils::{Acknowledgement, acknowledgement::Exact};
use futures::{StreamExt, channel::mpsc};
use medledger_ledger::Block;
use medledger_types::{IdentityId, TimestampMs, limits};

use crate::{block::ChainBlock, chain::ANCESTORS_MAX, chain::Chain};

/// How far ahead of our clock a proposal's timestamp may be before we stop waiting for our
/// clock to catch up and refuse it outright.
const FUTURE_WAIT_MAX_MS: u64 = 60_000;
/// How long a leader with an empty mempool waits for transactions before proposing an empty
/// block. Bounds idle block production (block time still advances, so expiries work) and
/// must stay well under the leader timeout.
const IDLE_PROPOSAL_WAIT_MS: u64 = 500;
/// How often an idle leader looks at the mempool.
const IDLE_POLL_MS: u64 = 5;
/// Most finalized blocks written to storage in one durable transaction.
const FINALIZED_BATCH_MAX: usize = 64;

pub fn now_ms(clock: &impl Clock) -> TimestampMs {
    clock.current().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Misbehaviour a validator can be told to show, to test that honest validators contain it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProposalFault {
    #[default]
    None,
    /// Propose blocks whose first transaction carries a forged signature, with correct roots,
    /// so that only signature verification can catch it.
    ForgedSignature,
}

#[derive(Clone)]
pub struct LedgerApp {
    chain: Arc<Chain>,
    proposer: IdentityId,
    fault: ProposalFault,
}

impl LedgerApp {
    pub fn new(chain: Arc<Chain>, proposer: IdentityId, fault: ProposalFault) -> Self {
        Self { chain, proposer, fault }
    }

    /// Pulls ancestors (newest first) until the finalized head, bounded.
    async fn collect(&self, ancestry: &mut impl Ancestry<ChainBlock>, first: Option<Block>) -> Vec<Block> {
        let finalized = self.chain.head().height;
        let mut out: Vec<Block> = first.into_iter().collect();
        if out.last().is_some_and(|b| b.height() <= finalized) {
            return out;
        }
        while out.len() < ANCESTORS_MAX {
            let Some(next) = ancestry.next().await else { break };
            let block = next.inner().block().clone();
            let done = block.height() <= finalized;
            out.push(block);
            if done {
                break;
            }
        }
        out
    }
}

impl<E: Clock> Application<E> for LedgerApp {
    type SigningScheme = ed25519::Scheme;
    type Context = Context<Digest, PublicKey>;
    type Block = ChainBlock;
    type Input = ();

    async fn propose(
        &mut self,
        (clock, _ctx): (E, Self::Context),
        mut ancestry: impl Ancestry<ChainBlock>,
        _input: (),
    ) -> Option<Digested<ChainBlock>> {
        let parent = ancestry.next().await?.inner().block().clone();
        let mut waited_ms = 0;
        while self.chain.mempool_len() == 0 && waited_ms < IDLE_PROPOSAL_WAIT_MS {
            clock.sleep(Duration::from_millis(IDLE_POLL_MS)).await;
            waited_ms += IDLE_POLL_MS;
        }
        let chain = self.collect(&mut ancestry, Some(parent)).await;
        let forge = self.fault == ProposalFault::ForgedSignature;
        let block = self.chain.propose(&chain, now_ms(&clock), self.proposer, forge)?;
        tracing::debug!(height = block.height(), txs = block.txs.len(), "proposed");
        let block = ChainBlock::new(block);
        let digest = block.digest();
        Some(Digested::precomputed(block, digest))
    }

    async fn verify(&mut self, (clock, _ctx): (E, Self::Context), mut ancestry: impl Ancestry<ChainBlock>) -> bool {
        let Some(candidate) = ancestry.next().await else { return false };
        let candidate = candidate.inner().block().clone();
        let Some(parent) = ancestry.next().await else { return false };
        let parent = parent.inner().block().clone();
        // A timestamp ahead of our clock is a temporary condition: wait for the clock (bounded)
        // rather than vote no. Far-future timestamps are refused.
        let now = now_ms(&clock);
        let ahead_ms = candidate.header.timestamp_ms.saturating_sub(now.saturating_add(limits::BLOCK_FUTURE_DRIFT_MS));
        if ahead_ms > FUTURE_WAIT_MAX_MS {
            tracing::warn!(height = candidate.height(), ahead_ms, "refusing block timestamped far in the future");
            return false;
        }
        if ahead_ms > 0 {
            clock.sleep(Duration::from_millis(ahead_ms)).await;
        }
        let chain = self.collect(&mut ancestry, Some(parent)).await;
        match self.chain.verify(&candidate, &chain, Some(now_ms(&clock))) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(height = candidate.height(), %error, "refusing invalid block");
                false
            }
        }
    }
}

/// A finalized block with the acknowledgement marshal waits for.
pub struct Finalized {
    pub block: Digested<ChainBlock>,
    pub ack: Exact,
}

/// Receives marshal's finalized blocks (in height order, at least once) and forwards them to
/// the executor. Unbounded is safe: marshal keeps at most `max_pending_acks` unacknowledged.
#[derive(Clone)]
pub struct FinalizedReporter {
    tx: mpsc::UnboundedSender<Finalized>,
}

impl FinalizedReporter {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Finalized>) {
        let (tx, rx) = mpsc::unbounded();
        (Self { tx }, rx)
    }
}

impl Reporter for FinalizedReporter {
    type Activity = Update<ChainBlock>;

    fn report(&mut self, activity: Update<ChainBlock>) -> Feedback {
        match activity {
            Update::Block(block, ack) => match self.tx.unbounded_send(Finalized { block, ack }) {
                Ok(()) => Feedback::Ok,
                Err(_) => Feedback::Closed,
            },
            Update::Tip(..) => Feedback::Ok,
        }
    }
}

/// Applies finalized blocks to the chain, durably, then acknowledges them. Batches whatever
/// has arrived (group commit: one fsync for many blocks). Stops, without acknowledging, if a
/// finalized block fails verification: the node must not serve a state it cannot justify.
pub async fn run_executor(
    mut rx: mpsc::UnboundedReceiver<Finalized>,
    chain: Arc<Chain>,
    marshal: Mailbox<ed25519::Scheme, Standard<ChainBlock>>,
) {
    while let Some(first) = rx.next().await {
        let mut batch = vec![first];
        while batch.len() < FINALIZED_BATCH_MAX {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                _ => break,
            }
        }
        let blocks: Vec<Block> = batch
            .iter()
            .filter(|f| f.block.inner().block().height() > 0)
            .map(|f| f.block.inner().block().clone())
            .collect();
        // Certificates exist for blocks finalized in their own view; an ancestor finalized
        // through a descendant has none and is covered by the hash links to that descendant.
        let mut certificates = Vec::with_capacity(blocks.len());
        for block in &blocks {
            let finalization = marshal.get_finalization(Height::new(block.height())).await;
            certificates.push(finalization.map(|f| crate::certificate::encode(&f)));
        }
        if let Err(error) = chain.apply_finalized(&blocks, &certificates) {
            tracing::error!(%error, "cannot apply finalized blocks; this node stops following the chain");
            chain.halt(error.to_string());
            return;
        }
        for f in batch {
            f.ack.acknowledge();
        }
    }
}
