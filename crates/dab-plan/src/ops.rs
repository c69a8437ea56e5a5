//! The operator registry: every op with its typed signature. The checks in
//! `pipeline.rs` read signatures from here, so adding an op is one entry plus
//! its semantic checks, never a new branch in the generic argument checker.

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

const RATE_LIMIT_NAMED: &[Param] = &[
    Param {
        name: "burst",
        ty: ParamType::Int,
        doc: "bucket size: events allowed at once (default: the rate, at least 1)",
    },
    Param {
        name: "on_limit",
        ty: ParamType::Choice(&["wait", "drop", "overflow"]),
        doc: "wait (default, back pressure), drop (counted), overflow (to `overflow`)",
    },
    Param {
        name: "overflow",
        ty: ParamType::Name,
        doc: "the queue or sink that takes the excess with `on_limit = overflow`",
    },
];

const RATE: Param = Param {
    name: "rate",
    ty: ParamType::Number,
    doc: "events per second, > 0 (0.5 is one event every two seconds)",
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
        name: "FilterType",
        class: OpClass::Stage,
        positional: &[Param {
            name: "type",
            ty: ParamType::TypeName,
            doc: "an event type",
        }],
        variadic: true,
        named: &[],
        other_named: None,
        doc: "Keep events whose `type` is one of those listed, byte for byte",
    },
    OpSpec {
        name: "Filter",
        class: OpClass::Stage,
        positional: &[Param {
            name: "condition",
            ty: ParamType::Condition,
            doc: "a boolean expression over event fields and tags",
        }],
        variadic: false,
        named: &[],
        other_named: None,
        doc: "Keep events for which the condition is true",
    },
    OpSpec {
        name: "Route",
        class: OpClass::Stage,
        positional: &[
            Param {
                name: "condition",
                ty: ParamType::Condition,
                doc: "a boolean expression over event fields and tags",
            },
            Param {
                name: "name",
                ty: ParamType::Name,
                doc: "the sink or queue that takes the events for which it holds",
            },
        ],
        variadic: false,
        named: &[],
        other_named: None,
        doc: "Send the events for which the condition holds to a sink or queue; the rest go on. Of chained routes, the first that matches takes the event",
    },
    OpSpec {
        name: "SetTag",
        class: OpClass::Stage,
        positional: &[],
        variadic: false,
        named: &[],
        other_named: Some(Param {
            name: "KEY",
            ty: ParamType::TagValue,
            doc: "the tag `KEY` takes this value: a literal, or a field (`host`, `tags.k`, `fields.x`) whose value it copies",
        }),
        doc: "Set tags on each event; a field with no value leaves its tag as it was",
    },
    OpSpec {
        name: "RemoveTag",
        class: OpClass::Stage,
        positional: &[Param {
            name: "key",
            ty: ParamType::TypeName,
            doc: "a tag key: a name, or a string such as \"k-1\"",
        }],
        variadic: true,
        named: &[],
        other_named: None,
        doc: "Remove tags from each event",
    },
    OpSpec {
        name: "WithSampleRate",
        class: OpClass::Modifier,
        positional: &[Param {
            name: "n",
            ty: ParamType::Int,
            doc: "keep 1 event in n, n >= 1",
        }],
        variadic: false,
        named: &[],
        other_named: None,
        doc: "Keep 1 event in n, by a fixed hash of the event UID",
    },
    OpSpec {
        name: "WithRateLimitPerSecond",
        class: OpClass::Modifier,
        positional: &[RATE],
        variadic: false,
        named: RATE_LIMIT_NAMED,
        other_named: None,
        doc: "At most `rate` events per second (token bucket)",
    },
    OpSpec {
        name: "WithRateLimit",
        class: OpClass::Modifier,
        positional: &[RATE],
        variadic: false,
        named: RATE_LIMIT_NAMED,
        other_named: None,
        doc: "Same as WithRateLimitPerSecond",
    },
    OpSpec {
        name: "VerifySignature",
        class: OpClass::Stage,
        positional: &[],
        variadic: false,
        named: &[Param {
            name: "key",
            ty: ParamType::Name,
            doc: "a key declared under `keys:` in the bindings file (required)",
        }],
        other_named: None,
        doc: "Keep events whose HMAC-SHA256 signature verifies; the others go to `OnError` or are dropped and counted",
    },
    OpSpec {
        name: "Dedup",
        class: OpClass::Stage,
        positional: &[],
        variadic: false,
        named: &[Param {
            name: "within",
            ty: ParamType::Duration,
            doc: "how long a UID is remembered (default 10m)",
        }],
        other_named: None,
        doc: "Drop events whose UID was seen within the window (redeliveries after retries)",
    },
    OpSpec {
        name: "Enrich",
        class: OpClass::Stage,
        positional: &[Param {
            name: "table",
            ty: ParamType::Name,
            doc: "a table bound under `tables:` in the bindings file",
        }],
        variadic: false,
        named: &[
            Param {
                name: "on",
                ty: ParamType::Field,
                doc: "the field whose value (a string, or a number's text) is looked up in the table's key column (required)",
            },
            Param {
                name: "into",
                ty: ParamType::Text,
                doc: "the payload key the row is added under (required)",
            },
            Param {
                name: "miss",
                ty: ParamType::Choice(&["keep", "drop", "error"]),
                doc: "an event with no row: keep (default: unchanged), drop (counted) or error (to `OnError`, else counted dropped)",
            },
        ],
        other_named: None,
        doc: "Add the table row whose key equals a field of the event to its JSON payload",
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

/// Every operator the language knows, in documentation order.
pub fn builtin_operators() -> &'static [OpSpec] {
    OPERATORS
}

pub fn find_op(name: &str) -> Option<&'static OpSpec> {
    OPERATORS.iter().find(|o| o.name == name)
}
