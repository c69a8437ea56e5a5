//! The checked plan as the runtime will consume it: span-free configs with
//! derived `PartialEq`, so a reload diff compares configs, not text.

use std::collections::BTreeMap;

use dab_diag::Span;

use crate::bindings::ConfigValue;

/// A checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `service` or `service/name`.
    pub id: String,
    pub service: String,
    /// `service.NewPipeline(...)`.
    pub span: Span,
    pub config: PipelineConfig,
}

/// Everything that decides how a pipeline behaves, without positions.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub input: String,
    /// `In(Name, when_full = ...)`: what the input does when this
    /// pipeline's buffer is full.
    pub input_when_full: WhenFull,
    pub stages: Vec<Stage>,
    pub outputs: Vec<Output>,
    pub when_full: WhenFull,
    /// `Out(..., by = key)`: each event goes to the one output rendezvous
    /// hashing of this key picks (empty: every output gets every event).
    pub by: Vec<Operand>,
    /// `OnError(Name)`: where events that fail a stage go.
    pub on_error: Option<String>,
}

impl PipelineConfig {
    /// Every name this pipeline reads: its `In`, then the stream of its
    /// `Join`, if any.
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.input.as_str())
            .chain(self.stages.iter().filter_map(Stage::join_stream))
    }

    /// The pipeline's `Join`, if it has one (at most one).
    pub fn join(&self) -> Option<&Join> {
        self.stages.iter().find_map(|s| match s {
            Stage::Join(j) => Some(&**j),
            _ => None,
        })
    }

    /// Every name this pipeline writes to: outputs, overflow targets and the
    /// `OnError` target.
    pub fn writes(&self) -> impl Iterator<Item = &str> {
        let overflow = self
            .stages
            .iter()
            .chain(self.outputs.iter().flat_map(|o| o.modifiers.iter()))
            .filter_map(Stage::overflow_target);
        self.outputs
            .iter()
            .map(|o| o.target.as_str())
            .chain(overflow)
            .chain(self.on_error.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub target: String,
    /// `With*` ops written after `Out`, applied to this output on its own.
    pub modifiers: Vec<Stage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    #[default]
    Block,
    DropNewest,
}

/// A signing key's bytes, read from the host when the set is checked
/// (SPEC section 3: what `run` would refuse, `validate` refuses first).
/// Compared by content, so that a reload after a key file was rotated
/// rebuilds the pipelines that use it; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<[u8]>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// A pluggable op (`crate::ops::OpCheck`): `FilterType`, `Filter`,
    /// `Route`, ... each with its own config.
    Op(crate::ops::OpStage),
    /// `Window(...)` directly followed by `Aggregate(...)` (SPEC section 9):
    /// one stateful stage.
    Aggregate(Box<Windowed>),
    /// `Join(Stream, on = ..., within = D, into = "...", miss = ...)`
    /// (SPEC section 9): a stateful stage with a second input.
    Join(Box<Join>),
}

/// A checked `Join(...)`: each event of the pipeline's input (the left
/// side) is joined with the events of `stream` (the right side) whose `on`
/// value is equal and whose timestamp is within `within` of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The source or queue whose events are the right side.
    pub stream: String,
    pub on: Operand,
    pub within: std::time::Duration,
    /// The payload key a match puts the right event's payload under.
    pub into: String,
    /// `Keep`: a left event with no match goes on unchanged; `Drop`:
    /// counted dropped (`join_miss`). Never `Error`.
    pub miss: Miss,
    /// The disorder tolerated within each side: an event is held until
    /// the other side's largest timestamp minus `lateness` passes its
    /// timestamp plus `within` (default: `within`).
    pub lateness: std::time::Duration,
    /// Events buffered per side at most; more are not buffered (counted
    /// `dab_join_overflow_total`).
    pub max_buffered: u64,
    /// A side silent this long (arrival time) stops holding the other
    /// side's events back.
    pub idle: std::time::Duration,
}

/// Default bound on the events a `Join` buffers per side.
pub const DEFAULT_JOIN_MAX_BUFFERED: u64 = 100_000;

/// A table bound under `tables:`. Part of the stage, so a changed binding
/// rebuilds the pipelines that enrich from it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub name: String,
    pub source: TableSource,
}

/// Where a table's rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TableSource {
    /// `kind: file`: read at start, reloaded when the file changes.
    File {
        /// As written in the bindings file: relative to the working
        /// directory, like every path there.
        path: String,
        /// The column rows are found by.
        key: String,
        format: crate::table::TableFormat,
    },
    /// Kept current by a connector's feed (`kind: kafka`, a compacted
    /// topic): the binding's kind and fields.
    Feed {
        kind: String,
        fields: BTreeMap<String, ConfigValue>,
    },
}

/// What `Enrich` does with an event no row matches (or whose payload is
/// not a JSON object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// It goes on unchanged (the default).
    Keep,
    /// Dropped, counted (`enrich_miss`).
    Drop,
    /// To `OnError` with the reason in `dab.error`, or counted dropped
    /// (`enrich_error`) without one.
    Error,
}

impl Miss {
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::Keep => "keep",
            Miss::Drop => "drop",
            Miss::Error => "error",
        }
    }
}

/// A checked `Window(...).Aggregate(...)` pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Windowed {
    pub window: WindowSpec,
    pub aggregate: AggregateSpec,
}

/// `Window(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub time: TimeBase,
    /// How long after its end a window still takes events (default 0).
    pub lateness: std::time::Duration,
    /// Where events arriving after their window closed go; without it
    /// they are counted dropped (`late`).
    pub late: Option<String>,
    /// Partial results of open windows this often, marked not final.
    pub early: Option<std::time::Duration>,
    /// Open (window, group) entries at most; more are counted dropped.
    pub max_groups: u64,
    /// An input partition or host silent this long stops holding the
    /// watermark back.
    pub idle: std::time::Duration,
}

/// Default bound on open (window, group) entries.
pub const DEFAULT_MAX_GROUPS: u64 = 100_000;
/// Default silence after which an input stops holding the watermark back.
pub const DEFAULT_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling {
        size: std::time::Duration,
    },
    /// Windows of `size` starting every `every` (`size` a multiple of it).
    Sliding {
        size: std::time::Duration,
        every: std::time::Duration,
    },
    /// Per group, a window that lasts while events come within `gap`.
    Session {
        gap: std::time::Duration,
    },
}

/// Which time places an event in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBase {
    /// The event's `timestamp` (the default).
    Event,
    /// When DAB received it.
    Arrival,
}

/// `Aggregate(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSpec {
    /// `by = [...]`: the group key, each with its name in the result.
    pub by: Vec<(String, Operand)>,
    /// `as = "Type"`: the type of the result events.
    pub result_type: String,
    /// `name = Fn(...)`, in the order written.
    pub aggregates: Vec<(String, AggFn)>,
}

/// An aggregate function and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum AggFn {
    /// `Count()`, or `Count(cond)`: the events for which `cond` holds.
    Count(Option<Predicate>),
    Sum(Operand),
    Min(Operand),
    Max(Operand),
    Avg(Operand),
    First(Operand),
    Last(Operand),
    Distinct(Operand),
    /// `Percentile(x, p, ...)`, each `p` in [0, 1].
    Percentile(Operand, Vec<f64>),
}

impl AggFn {
    /// Every function: its name, and whether its value argument must be
    /// a number.
    pub const NAMES: &'static [&'static str] = &[
        "Count",
        "Sum",
        "Min",
        "Max",
        "Avg",
        "First",
        "Last",
        "Distinct",
        "Percentile",
    ];
}

impl std::fmt::Display for AggFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AggFn::Count(None) => write!(f, "Count()"),
            AggFn::Count(Some(p)) => write!(f, "Count({p})"),
            AggFn::Sum(x) => write!(f, "Sum({x})"),
            AggFn::Min(x) => write!(f, "Min({x})"),
            AggFn::Max(x) => write!(f, "Max({x})"),
            AggFn::Avg(x) => write!(f, "Avg({x})"),
            AggFn::First(x) => write!(f, "First({x})"),
            AggFn::Last(x) => write!(f, "Last({x})"),
            AggFn::Distinct(x) => write!(f, "Distinct({x})"),
            AggFn::Percentile(x, ps) => {
                write!(f, "Percentile({x}")?;
                for p in ps {
                    write!(f, ", {p}")?;
                }
                write!(f, ")")
            }
        }
    }
}

impl Stage {
    pub fn overflow_target(&self) -> Option<&str> {
        match self {
            Stage::Op(o) => o.config().side_output().map(|s| s.target),
            Stage::Aggregate(w) => w.window.late.as_deref(),
            _ => None,
        }
    }

    /// A table the stage reads rows from.
    pub fn table(&self) -> Option<&str> {
        match self {
            Stage::Op(o) => o.config().table(),
            _ => None,
        }
    }

    /// The second input of a `Join`.
    pub fn join_stream(&self) -> Option<&str> {
        match self {
            Stage::Join(j) => Some(&j.stream),
            _ => None,
        }
    }

    /// A pluggable op's config as its own type, if it is one.
    pub fn op_config<T: crate::ops::OpConfig>(&self) -> Option<&T> {
        match self {
            Stage::Op(o) => o.get(),
            _ => None,
        }
    }

    /// A short label for graphs and logs.
    pub fn label(&self) -> String {
        match self {
            Stage::Op(o) => o.config().label(),
            Stage::Join(j) => format!(
                "Join({}, on = {}, within = {:?}, into = {:?}, miss = {})",
                j.stream,
                j.on,
                j.within,
                j.into,
                j.miss.as_str()
            ),
            Stage::Aggregate(w) => {
                let window = match w.window.kind {
                    WindowKind::Tumbling { size } => format!("tumbling = {size:?}"),
                    WindowKind::Sliding { size, every } => {
                        format!("sliding = {size:?}, every = {every:?}")
                    }
                    WindowKind::Session { gap } => format!("session = {gap:?}"),
                };
                let by: Vec<String> = w.aggregate.by.iter().map(|(_, o)| o.to_string()).collect();
                let calls: Vec<String> = w
                    .aggregate
                    .aggregates
                    .iter()
                    .map(|(n, a)| format!("{n} = {a}"))
                    .collect();
                format!(
                    "Window({window}).Aggregate(by = [{}], as = {:?}, {})",
                    by.join(", "),
                    w.aggregate.result_type,
                    calls.join(", ")
                )
            }
        }
    }
}

/// A checked `Filter` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    Const(bool),
    Not(Box<Predicate>),
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Compare {
        lhs: Operand,
        op: CmpOp,
        rhs: Operand,
    },
    In {
        lhs: Operand,
        set: Vec<Value>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Field(Field),
    Tag(String),
    /// `fields.a.b` / `fields["k-1"]`: the keys into the JSON payload
    /// (SPEC section 7).
    Payload(Vec<String>),
    Value(Value),
}

/// The event fields an expression may read (SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Timestamp,
    Host,
    Type,
    Offset,
    Pid,
    Message,
}

impl Field {
    pub const ALL: &'static [(&'static str, Field)] = &[
        ("timestamp", Field::Timestamp),
        ("host", Field::Host),
        ("type", Field::Type),
        ("offset", Field::Offset),
        ("pid", Field::Pid),
        ("message", Field::Message),
    ];

    pub fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    pub fn value_type(self) -> ValueType {
        match self {
            Field::Host | Field::Type | Field::Message => ValueType::Str,
            Field::Timestamp | Field::Offset | Field::Pid => ValueType::Int,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Int(_) => ValueType::Int,
            Value::Float(_) => ValueType::Float,
            Value::Str(_) => ValueType::Str,
            Value::Bool(_) => ValueType::Bool,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Int,
    Float,
    Str,
    Bool,
    /// A payload field without a schema: whatever the JSON holds, so it
    /// compares with any value (numbers as numbers).
    Dynamic,
}

impl ValueType {
    pub fn describe(self) -> &'static str {
        match self {
            ValueType::Int => "an integer",
            ValueType::Float => "a float",
            ValueType::Str => "a string",
            ValueType::Bool => "a boolean",
            ValueType::Dynamic => "a payload field",
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl std::fmt::Display for Operand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operand::Field(field) => f.write_str(field.name()),
            Operand::Tag(t) if t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                write!(f, "tags.{t}")
            }
            Operand::Tag(t) => write!(f, "tags[{t:?}]"),
            Operand::Payload(keys) => {
                f.write_str("fields")?;
                for k in keys {
                    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        write!(f, ".{k}")?;
                    } else {
                        write!(f, "[{k:?}]")?;
                    }
                }
                Ok(())
            }
            Operand::Value(v) => write!(f, "{v}"),
        }
    }
}

impl std::fmt::Display for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Predicate::Const(b) => write!(f, "{b}"),
            Predicate::Not(p) => write!(f, "!({p})"),
            Predicate::And(a, b) => write!(f, "({a} && {b})"),
            Predicate::Or(a, b) => write!(f, "({a} || {b})"),
            Predicate::Compare { lhs, op, rhs } => write!(f, "{lhs} {} {rhs}", op.as_str()),
            Predicate::In { lhs, set } => {
                let items: Vec<String> = set.iter().map(ToString::to_string).collect();
                write!(f, "{lhs} in [{}]", items.join(", "))
            }
        }
    }
}

/// What a name in a blueprint stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `Stdin`, `Stdout`, `Blackhole`, `Generator`.
    Builtin { role: Role },
    /// Bound in the bindings file.
    Bound {
        role: Role,
        kind: String,
        fields: BTreeMap<String, ConfigValue>,
        /// The payload schema of the type its `type` field names, when
        /// that type declares `fields` (a `parquet` sink's columns). Part
        /// of the endpoint, so a changed schema rebuilds the sink.
        schema: Option<dab_schema::Schema>,
    },
    /// Written and read by pipelines, bound nowhere: an in-memory queue.
    ImplicitQueue,
}

impl Endpoint {
    pub fn role(&self) -> Role {
        match self {
            Endpoint::Builtin { role } | Endpoint::Bound { role, .. } => *role,
            Endpoint::ImplicitQueue => Role::Queue,
        }
    }

    /// True for queues kept in this process's memory.
    pub fn is_memory_queue(&self) -> bool {
        match self {
            Endpoint::ImplicitQueue => true,
            Endpoint::Bound {
                role: Role::Queue,
                kind,
                ..
            } => kind == "memory",
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Source,
    Sink,
    Queue,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
            Role::Queue => "queue",
        }
    }
}

/// Names that work with no bindings at all (SPEC section 2).
pub const BUILTIN_NAMES: &[(&str, Role)] = &[
    ("Stdin", Role::Source),
    ("Generator", Role::Source),
    ("Stdout", Role::Sink),
    ("Blackhole", Role::Sink),
];

pub fn builtin_role(name: &str) -> Option<Role> {
    BUILTIN_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
}
