//! AST + bindings to a checked petgraph DAG.

pub mod bindings;
