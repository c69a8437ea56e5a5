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

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Validate(a) => cmd::validate::run(a),
        args::Command::Graph(a) => cmd::graph::run(a),
        args::Command::Run(a) => cmd::run::run(a),
        args::Command::Inspect(a) => cmd::inspect::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dab: {e:#}");
            ExitCode::from(2)
        }
    }
}
