//! DAB's embedded state store (SPEC section 9, issue 13 item 3).
//!
//! State belongs to an *owner* (a namespace: one operator of one pipeline,
//! e.g. `api_stats/2`) and to an *input partition* (a label such as
//! `kafka:orders:3`, or [`GLOBAL`] for a source that is not partitioned).
//! Each input partition is one fjall partition on disk, so everything that
//! must move when a Kafka partition moves to another worker (its operators'
//! state, its source positions, its bookkeeping) can be listed, exported,
//! imported or cleared on its own.
//!
//! Writes go through a [`Checkpoint`]: it gathers state changes, source
//! positions and opaque bookkeeping (window watermarks and the like), and
//! [`Checkpoint::commit`] writes all of it as ONE fjall batch, which the
//! journal applies whole or not at all. After a crash the store shows the
//! last checkpoint the journal kept, never part of one. A committed
//! checkpoint was handed to the operating system before `commit` returned,
//! so it survives a killed process; one committed with `durable = true` was
//! also fsynced, so it survives a power loss. Reads see committed
//! checkpoints only.
//!
//! Architecture invariant: this crate depends on no other DAB crate and
//! knows nothing of events, tokio or the runtime; it stores bytes.

mod checkpoint;
mod layout;
mod store;

pub use checkpoint::Checkpoint;
pub use store::{Entry, OwnedEntry, PartitionImage, StateStore};

/// The input partition of state that belongs to no input partition.
pub const GLOBAL: &str = "";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded store failed (I/O, corruption, or an earlier failed
    /// fsync that poisoned it).
    #[error("state store: {0}")]
    Store(#[from] fjall::Error),
    /// An input partition label too long to name a store partition.
    #[error("input partition label of {len} bytes is longer than {max} bytes")]
    PartitionLabel { len: usize, max: usize },
    /// A namespace longer than the key layout allows.
    #[error("namespace of {len} bytes is longer than {max} bytes")]
    Namespace { len: usize, max: usize },
    /// Bytes on disk that do not follow this crate's layout.
    #[error("state store holds a malformed {what}")]
    Malformed { what: &'static str },
}

impl Error {
    /// Whether the store refuses every write from now on: an earlier
    /// write or fsync failed (a full disk), and only reopening the store
    /// (restarting `dab run`) recovers what is durable.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Store(fjall::Error::Poisoned))
    }
}

/// Result of the state store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
