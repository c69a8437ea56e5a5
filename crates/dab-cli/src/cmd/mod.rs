//! One module per subcommand.

pub mod graph;
pub mod run;
pub mod validate;
