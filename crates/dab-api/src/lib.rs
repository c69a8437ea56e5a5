//! The interface between the engine and connectors.
