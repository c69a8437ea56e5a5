//! The blueprint language front end: `grammar/dab.pest` to an AST whose every
//! node has a span. pest types never leave this crate.

pub mod ast;
mod fast;
mod parse;
mod split;

pub use parse::{parse, parse_fast_only, parse_pest_only};
