//! One module per subcommand.

pub mod backfill;
pub mod graph;
pub mod inspect;
pub mod run;
pub mod schema;
pub mod validate;
