//! Immutable views of the finalized ledger, one per finalized height.
//!
//! Block application is the only writer: it clones the current [`Snapshot`] (cheap: the state's
//! maps, the Merkle log and the index are persistent structures that share everything already
//! there), applies the finalized blocks to the clone, and publishes it in one atomic pointer
//! swap. A reader takes an `Arc<Snapshot>` without waiting for anything and keeps a consistent
//! view (state and index at the same height) for as long as it holds it; the writer never
//! waits for readers either. Holding a snapshot across an `.await` is allowed — it pins memory
//! (the entries changed since), never a lock.

use std::{ops::Deref, sync::Arc};

use medledger_ledger::State;

use crate::index::PatientIndex;

/// The finalized state and the per-patient index, both at the same height.
#[derive(Clone, Debug)]
pub struct Snapshot {
    state: State,
    index: PatientIndex,
}

impl Snapshot {
    pub(crate) fn new(state: State, index: PatientIndex) -> Self {
        Self { state, index }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The per-patient index, at the state's height.
    pub fn index(&self) -> &PatientIndex {
        &self.index
    }

    pub(crate) fn parts_mut(&mut self) -> (&mut State, &mut PatientIndex) {
        (&mut self.state, &mut self.index)
    }
}

/// A snapshot reads as its state, so `chain.snapshot().next_nonce(..)` works.
impl Deref for Snapshot {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

/// A snapshot seen as its per-patient index (what [`crate::chain::Chain::patient_index`]
/// returns); keeps the whole snapshot alive, so it is consistent with the state it came with.
#[derive(Clone, Debug)]
pub struct IndexView(pub(crate) Arc<Snapshot>);

impl IndexView {
    /// The snapshot this index belongs to (the state at the same height).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.0
    }
}

impl Deref for IndexView {
    type Target = PatientIndex;

    fn deref(&self) -> &PatientIndex {
        &self.0.index
    }
}
