//! The `dab` binary: argument parsing and dispatch. The work is in the
//! library crates; this is glue (ripgrep's `crates/core` habit).

use std::process::ExitCode;

use clap::Parser;

mod admin;
mod args;
mod cmd;
mod env;
mod input;
mod reload;
mod render;

/// Standard output was closed by its reader (`dab ... | head`): the status
/// a shell shows for a tool ended by SIGPIPE (128 + 13), with no message.
pub const EXIT_STDOUT_CLOSED: u8 = 141;

/// Whether an error comes from writing to a pipe whose reader is gone.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Validate(a) => cmd::validate::run(a),
        args::Command::Graph(a) => cmd::graph::run(a),
        args::Command::Run(a) => cmd::run::run(a),
        args::Command::Inspect(a) => cmd::inspect::run(a),
        args::Command::Schema(args::SchemaCommand::Check(a)) => cmd::schema::check(a),
        args::Command::Backfill(a) => cmd::backfill::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_STDOUT_CLOSED),
        Err(e) => {
            eprintln!("dab: {e:#}");
            ExitCode::from(2)
        }
    }
}
