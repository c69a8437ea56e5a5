//! The interface between the engine and connectors.

pub mod schema;
