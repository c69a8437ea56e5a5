//! Event encodings: NDJSON (`json`) and protobuf (`proto`), the error both
//! decoders report, and the filling of the fields an incoming event left
//! out (SPEC section 4).
//!
//! Both decoders keep the bytes the event arrived as (`Event::with_raw`) and
//! both encoders write them back unchanged while the event is untouched: a
//! pass-through pipeline never re-encodes.

mod filler;
mod intern;
pub mod json;
mod json_parse;
pub mod proto;
pub(crate) mod protowire;
pub mod reserved;
mod swar;
#[cfg(test)]
mod testing;

pub use filler::{Filler, MAX_TRACKED_SEQUENCES};
pub use intern::{
    with_budget, InternBudget, MAX_INTERNED_BYTES, MAX_INTERNED_LEN, SOURCE_INTERN_BYTES,
};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// An input that is not an event.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    /// `column` is the 1-based byte position in the line (or HTTP body)
    /// where decoding stopped, so a log line can point at it.
    #[error("invalid JSON event at column {column}: {reason}")]
    Json { column: usize, reason: String },
    #[error("invalid protobuf event: {reason}")]
    Protobuf { reason: String },
}

impl DecodeError {
    /// What went wrong, without the position.
    pub fn reason(&self) -> String {
        match self {
            DecodeError::Json { reason, .. } | DecodeError::Protobuf { reason } => reason.clone(),
        }
    }
}

/// Which of the fields that `Filler` can fill the input carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present {
    pub timestamp: bool,
    pub host: bool,
    pub offset: bool,
}

impl Present {
    pub const ALL: Present = Present {
        timestamp: true,
        host: true,
        offset: true,
    };
}

/// Standard alphabet. Writes padding; reads with or without it, because
/// producers differ and the bytes are the same either way.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
