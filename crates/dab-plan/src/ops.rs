//! Ops: their typed signatures, and the validation half of a pluggable op.
//!
//! The ops the planner itself lays out (`In`, `Out`, `OnError`, `Window`,
//! `Aggregate`, `Join`) are listed here. Every other op is a
//! module that implements [`OpCheck`] (signature, semantic checks, lowering
//! to its own [`OpConfig`]) and reaches the check through [`Ops`], the list
//! a caller passes in [`crate::Options`] (`dab_runtime::ops` holds the
//! built-in list, each op's runtime half beside its check). The generic
//! checks in `pipeline.rs` read signatures from either place, so adding an
//! op never adds a branch to them.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

pub use dab_diag::{Code, Diagnostic, Span};
pub use dab_syntax::ast::{Expr, ExprKind, Ident, Op};

use crate::bindings::Bindings;
pub use crate::enrich::on_field;
pub use crate::expr::operand;
use crate::pipeline::{CheckedStatement, NameUse};
pub use crate::HelpOr;

/// Where an op may stand in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// `In`: first, exactly once.
    Input,
    /// `Out`: ends the stage chain.
    Output,
    /// Applies to the stream before `Out`; not allowed after it.
    Stage,
    /// `With*`: a stage before `Out`, a per-output modifier after it.
    Modifier,
    /// `OnError(Name)`: where events that fail a stage go; before or after `Out`.
    ErrorRoute,
}

/// The type an argument must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// A source, sink or queue name.
    Name,
    /// An event type: an identifier or a string.
    TypeName,
    Int,
    /// An integer or a float.
    Number,
    /// A boolean expression over event fields.
    Condition,
    /// One of these identifiers.
    Choice(&'static [&'static str]),
    /// A duration literal: `250ms`, `10s`, `10m`, `1h`.
    Duration,
    /// A field (`host`, `tags.team`, `fields.method`) or a list of them.
    Keys,
    /// An aggregate call: `Count()`, `Sum(fields.bytes)`, ...
    Aggregate,
    /// A tag's new value: a literal, or a field whose value becomes the tag.
    TagValue,
    /// A string literal.
    Text,
    /// One field of the event: `fields.x`, `tags.k`, `host`, ...
    Field,
}

impl ParamType {
    pub fn describe(self) -> String {
        match self {
            ParamType::Name => "a name".to_owned(),
            ParamType::TypeName => "an event type (a name or a string)".to_owned(),
            ParamType::Int => "an integer".to_owned(),
            ParamType::Number => "a number".to_owned(),
            ParamType::Condition => "a condition".to_owned(),
            ParamType::Choice(c) => format!("one of {}", c.join(", ")),
            ParamType::Duration => "a duration such as `10m`".to_owned(),
            ParamType::Keys => {
                "a field or a list of fields such as `[tags.team, fields.method]`".to_owned()
            }
            ParamType::Aggregate => {
                "an aggregate such as `Count()` or `Sum(fields.bytes)`".to_owned()
            }
            ParamType::TagValue => {
                "a value or a field such as `\"prod\"` or `fields.team`".to_owned()
            }
            ParamType::Text => "a string such as `\"team\"`".to_owned(),
            ParamType::Field => {
                "a field such as `fields.user_id`, `tags.team` or `host`".to_owned()
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    pub doc: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    pub name: &'static str,
    pub class: OpClass,
    /// Positional parameters, in order.
    pub positional: &'static [Param],
    /// The last positional parameter repeats (one or more).
    pub variadic: bool,
    /// Optional `key = value` parameters.
    pub named: &'static [Param],
    /// Any other `key = value` is a value of this parameter, named by its
    /// key (`Aggregate`'s `calls = Count()`); `None`: unknown keys are E008.
    pub other_named: Option<Param>,
    pub doc: &'static str,
}

impl OpSpec {
    /// "1 argument", "1 or more arguments".
    pub fn arity_text(&self) -> String {
        let n = self.positional.len();
        let plural = if n == 1 && !self.variadic { "" } else { "s" };
        if self.variadic {
            format!("{n} or more argument{plural}")
        } else {
            format!("{n} argument{plural}")
        }
    }
}

const NAME: Param = Param {
    name: "name",
    ty: ParamType::Name,
    doc: "a source, sink or queue",
};

static OPERATORS: &[OpSpec] = &[
    OpSpec {
        name: "In",
        class: OpClass::Input,
        positional: &[NAME],
        variadic: false,
        named: &[Param {
            name: "when_full",
            ty: ParamType::Choice(&["block", "drop_newest"]),
            doc: "when this pipeline's input buffer is full: block (default: the input waits, and so do its other readers) or drop_newest (this pipeline's copy is dropped, counted, and the other readers go on)",
        }],
        other_named: None,
        doc: "Read from a source or a queue",
    },
    OpSpec {
        name: "Out",
        class: OpClass::Output,
        positional: &[NAME],
        variadic: true,
        named: &[
            Param {
                name: "when_full",
                ty: ParamType::Choice(&["block", "drop_newest"]),
                doc: "what a full output buffer does: block (default) or drop_newest (counted)",
            },
            Param {
                name: "by",
                ty: ParamType::Keys,
                doc: "a field or a list of fields: each event goes to one output only, by rendezvous hashing of this key",
            },
        ],
        other_named: None,
        doc: "Write to sinks and/or queues; each output gets every event, or with `by` exactly one",
    },
    OpSpec {
        name: "Join",
        class: OpClass::Stage,
        positional: &[Param {
            name: "stream",
            ty: ParamType::Name,
            doc: "the source or queue whose events are joined with this pipeline's input",
        }],
        variadic: false,
        named: &[
            Param {
                name: "on",
                ty: ParamType::Field,
                doc: "the field read from events of both sides; equal values match (required)",
            },
            Param {
                name: "within",
                ty: ParamType::Duration,
                doc: "how far apart the timestamps of a matching pair may be, > 0 (required)",
            },
            Param {
                name: "into",
                ty: ParamType::Text,
                doc: "the payload key the matching event's payload is added under (required)",
            },
            Param {
                name: "miss",
                ty: ParamType::Choice(&["keep", "drop"]),
                doc: "an input event with no match once its bound passed: keep (default: unchanged) or drop (counted, `join_miss`)",
            },
            Param {
                name: "lateness",
                ty: ParamType::Duration,
                doc: "how far out of time order the events of each side may come: an event is held until the other side's latest timestamp minus this passes its own plus `within` (default: `within`)",
            },
            Param {
                name: "max_buffered",
                ty: ParamType::Int,
                doc: "events held per side at most, >= 1; more are not held (counted) (default 100000)",
            },
            Param {
                name: "idle",
                ty: ParamType::Duration,
                doc: "a side silent this long stops holding the other side's events back (default 30s)",
            },
        ],
        other_named: None,
        doc: "Join each event with the events of a second stream whose key is equal and whose timestamp is within a bound; one event per match",
    },
    OpSpec {
        name: "Window",
        class: OpClass::Stage,
        positional: &[],
        variadic: false,
        named: &[
            Param { name: "tumbling", ty: ParamType::Duration, doc: "back-to-back windows of this size" },
            Param { name: "sliding", ty: ParamType::Duration, doc: "windows of this size, one starting every `every`" },
            Param { name: "every", ty: ParamType::Duration, doc: "with `sliding`: how often a window starts (the size is a multiple of it)" },
            Param { name: "session", ty: ParamType::Duration, doc: "per group, a window that lasts while events come within this gap" },
            Param { name: "time", ty: ParamType::Choice(&["event", "arrival"]), doc: "event: the `timestamp` field (default); arrival: when DAB received it" },
            Param { name: "lateness", ty: ParamType::Duration, doc: "how long after its end a window still takes events (default 0s)" },
            Param { name: "late", ty: ParamType::Name, doc: "where events go that arrive after their window closed (default: counted dropped, `late`)" },
            Param { name: "early", ty: ParamType::Duration, doc: "emit partial results of open windows this often, marked not final" },
            Param { name: "max_groups", ty: ParamType::Int, doc: "open (window, group) entries at most; events that would open more are counted dropped (default 100000)" },
            Param { name: "idle", ty: ParamType::Duration, doc: "an input partition or host silent this long stops holding the watermark back (default 30s)" },
        ],
        other_named: None,
        doc: "Cut the stream into windows of time; must be followed by `Aggregate`",
    },
    OpSpec {
        name: "Aggregate",
        class: OpClass::Stage,
        positional: &[],
        variadic: false,
        named: &[
            Param { name: "by", ty: ParamType::Keys, doc: "the group key: a field or a list of fields (default: one group)" },
            Param { name: "as", ty: ParamType::TypeName, doc: "the type of the result events (required)" },
        ],
        other_named: Some(Param {
            name: "NAME",
            ty: ParamType::Aggregate,
            doc: "a result field: Count(), Count(cond), Sum(x), Min(x), Max(x), Avg(x), First(x), Last(x), Distinct(x), Percentile(x, p, ...)",
        }),
        doc: "One result event per window and group, holding the window's bounds, the key and each aggregate",
    },
    OpSpec {
        name: "OnError",
        class: OpClass::ErrorRoute,
        positional: &[NAME],
        variadic: false,
        named: &[],
        other_named: None,
        doc: "Send events that fail a stage (a bad signature) to this queue or sink",
    },
];

/// The ops the planner lays out itself, in documentation order.
pub fn builtin_operators() -> &'static [OpSpec] {
    OPERATORS
}

pub fn find_op(name: &str) -> Option<&'static OpSpec> {
    OPERATORS.iter().find(|o| o.name == name)
}

/// A checked argument value, in the order of the signature (positional
/// first, then named), handed to [`OpCheck::check`].
#[derive(Debug)]
pub enum ArgValue {
    Name(Ident),
    Type(String, Span),
    Int(i64, Span),
    Number(f64, Span),
    Condition(crate::model::Predicate),
    Choice(String),
    Duration(std::time::Duration, Span),
    Text(String, Span),
    /// Checked by the op's own checks, which read the AST.
    Deferred,
}

/// The validation half of a pluggable op: its signature, and what it
/// checks beyond it. The generic checks (place in the pipeline, arity,
/// argument types) have passed when `check` is called.
pub trait OpCheck: Send + Sync {
    fn spec(&self) -> &'static OpSpec;

    /// The op's own checks (diagnostics through `cx`) and its lowered
    /// config; `None` when it has errors.
    fn check(&self, cx: &mut CheckCx<'_>, op: &Op, args: Vec<ArgValue>) -> Option<OpStage>;
}

/// What an op's check may read and report: the bindings, the op's place,
/// the diagnostics of its statement, and the names it writes to.
#[derive(Debug)]
pub struct CheckCx<'a> {
    pub bindings: &'a Bindings,
    /// The op's position in its statement.
    pub index: usize,
    pub diags: &'a mut Vec<Diagnostic>,
    pub(crate) out: &'a mut CheckedStatement,
}

impl CheckCx<'_> {
    /// `name` is a sink or queue the op sends events to: resolved and
    /// cycle-checked with the pipeline's outputs.
    pub fn writes_to(&mut self, name: &Ident) {
        self.out.uses.push(NameUse {
            name: name.name.clone(),
            span: name.span,
            write: true,
        });
    }

    /// `ty` is an event type the op names, checked against `types:` (E014).
    pub fn names_type(&mut self, ty: &str, span: Span) {
        self.out.types.push((ty.to_owned(), span));
    }

    /// `table` is a table bound under `tables:` the op reads (no W003).
    pub fn reads_table(&mut self, table: &str) {
        self.out.tables.push(table.to_owned());
    }

    /// The op cannot be made from what the bindings hold, and that was
    /// reported where it is declared: the pipeline is never planned.
    pub fn unavailable(&mut self) {
        self.out.missing_stage = true;
    }
}

/// An op's lowered config: span-free, compared by value (a reload keeps
/// an op whose config is equal, and its state).
pub trait OpConfig: DynEq + Any + Debug + Send + Sync {
    /// A short label for graphs, logs and metrics.
    fn label(&self) -> String;

    /// A table bound under `tables:` the op reads rows from (a graph draws
    /// it).
    fn table(&self) -> Option<&str> {
        None
    }

    /// A sink or queue that takes some events beside the stream.
    fn side_output(&self) -> Option<SideOutput<'_>> {
        None
    }
}

/// Where an op sends events beside the stream.
#[derive(Debug)]
pub struct SideOutput<'a> {
    pub target: &'a str,
    /// The condition that picks them, for a graph's edge (a route); `None`
    /// for an overflow.
    pub condition: Option<String>,
}

/// Equality across `dyn OpConfig`: equal when of the same type and equal.
pub trait DynEq {
    fn dyn_eq(&self, other: &dyn Any) -> bool;
}

impl<T: PartialEq + Any> DynEq for T {
    fn dyn_eq(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>().is_some_and(|o| self == o)
    }
}

/// A pluggable op in a checked pipeline: its name (its key in [`Ops`]) and
/// its config.
#[derive(Clone)]
pub struct OpStage {
    op: &'static str,
    config: Arc<dyn OpConfig>,
}

impl OpStage {
    pub fn new(op: &'static str, config: impl OpConfig) -> OpStage {
        OpStage {
            op,
            config: Arc::new(config),
        }
    }

    pub fn op(&self) -> &'static str {
        self.op
    }

    pub fn config(&self) -> &dyn OpConfig {
        &*self.config
    }

    /// The config as the op's own type.
    pub fn get<T: OpConfig>(&self) -> Option<&T> {
        (&*self.config as &dyn Any).downcast_ref()
    }
}

impl PartialEq for OpStage {
    fn eq(&self, other: &OpStage) -> bool {
        self.op == other.op && self.config.dyn_eq(&*other.config as &dyn Any)
    }
}

impl Debug for OpStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple(self.op).field(&self.config).finish()
    }
}

/// The pluggable ops a check knows, looked up by name.
#[derive(Clone, Default)]
pub struct Ops(Vec<&'static dyn OpCheck>);

impl Ops {
    pub fn new(ops: impl IntoIterator<Item = &'static dyn OpCheck>) -> Ops {
        Ops(ops.into_iter().collect())
    }

    pub fn find(&self, name: &str) -> Option<&'static dyn OpCheck> {
        self.0.iter().copied().find(|o| o.spec().name == name)
    }

    /// Every op's signature: the planner's own, then these.
    pub fn specs(&self) -> impl Iterator<Item = &'static OpSpec> + '_ {
        OPERATORS.iter().chain(self.0.iter().map(|o| o.spec()))
    }
}

impl Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|o| o.spec().name))
            .finish()
    }
}
