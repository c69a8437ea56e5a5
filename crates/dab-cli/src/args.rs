//! Command-line arguments (SPEC section 6).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "dab", version, about = "DAB: blueprints for event pipelines")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check blueprints and bindings; exit 0 valid, 1 invalid, 2 usage or I/O error
    Validate(ValidateArgs),
    /// Print the pipeline DAG as Graphviz dot or Mermaid
    Graph(GraphArgs),
    /// Run a blueprint set until its sources end or a signal stops it
    #[command(after_help = RUN_EXIT_CODES)]
    Run(RunArgs),
    /// Print the reliability (REP) score table of an NDJSON file or a running dab
    Inspect(InspectArgs),
    /// Payload schemas: check them against the registry (schemas/ beside the bindings)
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run one pipeline whose input is a Kafka source or queue over a past
    /// time range (the broker's offsets-for-times), write its sinks, and end
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Blueprint files or directories
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The id of the pipeline to run (`service` or `service/name`)
    #[arg(long, value_name = "ID")]
    pub pipeline: String,
    /// Start of the range, RFC 3339 (`2024-01-01T00:00:00Z`), inclusive:
    /// the Kafka timestamps of the messages
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the range, RFC 3339, exclusive
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// No progress bar (a line per 10% instead)
    #[arg(long)]
    pub quiet: bool,
    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Check every registered version and every type of the bindings against
    /// the registry, full-transitively (E020-E025); exit 0 compatible, 1 not
    Check(SchemaCheckArgs),
}

#[derive(Debug, Args)]
pub struct SchemaCheckArgs {
    /// Blueprint files or directories; the bindings are found beside the first
    #[arg(value_name = "PATH", default_value = ".")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// NDJSON event files to score offline
    #[arg(value_name = "FILE", required_unless_present = "url")]
    pub files: Vec<PathBuf>,
    /// The admin address of a running `dab run --metrics ADDR`, e.g. 127.0.0.1:9598
    #[arg(long, value_name = "ADDR", conflicts_with = "files")]
    pub url: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `dab run`'s exit statuses (docs/runtime.md, "Exit status").
pub const RUN_EXIT_CODES: &str = "\
Exit status:
  0  stopped cleanly: every source ended, or SIGTERM/Ctrl-C drained
     everything read (delivered, or dropped on purpose and counted)
  1  the blueprint set is invalid, or a source failed (a port in use)
  2  usage or I/O error, or a connector that cannot be built
  3  events were abandoned: a forced stop (a second signal, or the
     --shutdown-timeout deadline) failed events still in flight, or
     tasks did not end after it; their sources heard \"failed\", and
     dab_abandoned_events_total counts them
  141  the reader of stdout went away (`dab run ... | head`): dab ends
     quietly, as SIGPIPE ends a Unix tool; what was in flight was never
     acknowledged to its sources";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Blueprint files or directories
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run only this service's pipelines
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Serve Prometheus metrics, /healthz and /readyz on this address
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Log format on stderr (the level comes from RUST_LOG, default info)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds to drain after SIGTERM/Ctrl-C before giving up on what is left
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Refuse new work above this resident memory, in MiB. Default: half
    /// the memory the process may use (the machine's, or its cgroup's
    /// limit when lower), at least 512 MiB; 0 turns the limit off
    #[arg(long, value_name = "MIB")]
    pub max_memory_mb: Option<u64>,
    /// Capacity of each channel between tasks, in batches
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub channel_batches: u16,
    /// Track the reliability (REP) score of what the sinks write: the
    /// `dab_reliability_score` metric and `dab inspect --url`
    #[arg(long)]
    pub reliability: bool,
    /// Reload when a blueprint or the bindings file changes (SIGHUP always
    /// reloads). An invalid set is reported and the running one kept.
    #[arg(long)]
    pub watch: bool,
    /// Where windows keep their state (default: $XDG_STATE_HOME/dab, else
    /// ~/.local/state/dab). Opened only when a pipeline has a window; one
    /// dab process per directory
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often window state is checkpointed (500ms, 1s, 2m): an event a
    /// window absorbed is acknowledged once a checkpoint holding it is
    /// durable
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub checkpoint_interval: std::time::Duration,
    /// A window reading Kafka keeps its state per input partition and
    /// mirrors it to the compacted topic `dab.changelog.<pipeline>`, so
    /// that several processes of one consumer group share the partitions
    /// and a partition's state moves with it (key the input by the group
    /// key). Without it, run one process per group
    #[arg(long)]
    pub partition_state: bool,
}

/// `500ms`, `1s`, `2m`: a positive duration.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 1s or 2m"))?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" | "" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{s}`: the unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err("the checkpoint interval must be more than 0".to_owned());
    }
    Ok(d)
}

/// Where the bindings and environment come from.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// Bindings file (default: dab.yaml beside the first blueprint path)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use no bindings file, even if a dab.yaml is there
    #[arg(long, conflicts_with = "config")]
    pub no_config: bool,
    /// Read environment variables from a KEY=VALUE file (repeatable)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Set an environment variable for interpolation (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Blueprint files or directories (all *.dab below them)
    #[arg(value_name = "PATH", required_unless_present = "diff")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Fail (exit 1) on warnings too
    #[arg(long)]
    pub deny_warnings: bool,
    /// Check as if only this service's pipelines ran in this process
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Print the reload plan from OLD to NEW (each a file or directory)
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with = "paths")]
    pub diff: Option<Vec<PathBuf>>,
    /// Bindings for OLD with --diff
    #[arg(long, value_name = "FILE", requires = "diff")]
    pub old_config: Option<PathBuf>,
    /// Bindings for NEW with --diff
    #[arg(long, value_name = "FILE", requires = "diff")]
    pub new_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Blueprint files or directories
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}
