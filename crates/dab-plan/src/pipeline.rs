//! Checks one statement: op order (E002-E006), arguments against the op's
//! signature (E007-E009), no-effect ops (W002). Names are only collected here;
//! `names.rs` resolves them once every pipeline of the set is known.

use dab_diag::{Code, Diagnostic, Span};
use dab_syntax::ast::{Arg, Expr, ExprKind, Ident, Op, Statement};

use crate::bindings::{Bindings, KeyDecl};
use crate::expr::check_condition;
use crate::model::{
    OnLimit, Operand, Output, PipelineConfig, Predicate, Stage, WhenFull, WindowSpec, Windowed,
};
use crate::ops::{builtin_operators, find_op, OpClass, OpSpec, ParamType};
use crate::window;

/// One mention of a source, sink or queue name.
#[derive(Debug, Clone)]
pub(crate) struct NameUse {
    pub name: String,
    pub span: Span,
    pub write: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CheckedStatement {
    /// `None` when the statement has errors.
    pub config: Option<PipelineConfig>,
    pub uses: Vec<NameUse>,
    /// `FilterType` arguments, for the E014 check against declared types.
    pub types: Vec<(String, Span)>,
    /// Tables `Enrich` reads, for W003 (a table bound but never used).
    pub tables: Vec<String>,
    /// A stage could not be made from what the bindings hold (a key that
    /// could not be read, reported where it is declared). The pipeline
    /// must never be planned without it: it would skip the check.
    pub missing_stage: bool,
}

/// A checked argument value.
pub(crate) enum ArgValue {
    Name(Ident),
    Type(String, Span),
    Int(i64, Span),
    Number(f64, Span),
    Condition(Predicate),
    Choice(String),
    Duration(std::time::Duration, Span),
    Text(String, Span),
    /// Checked by the op's own checks (`window.rs`), which read the AST.
    Deferred,
}

/// Checks one statement; its diagnostics go to `diags`, which holds only
/// this statement's (the caller gives each statement its own).
pub(crate) fn check_statement(
    st: &Statement,
    bindings: &Bindings,
    diags: &mut Vec<Diagnostic>,
) -> CheckedStatement {
    debug_assert!(
        diags.is_empty(),
        "each statement is checked into its own list"
    );
    let mut out = CheckedStatement::default();
    let id = st.id();
    let mut input: Option<(&Op, Option<Ident>)> = None;
    let mut input_when_full = WhenFull::Block;
    let mut outputs: Option<(Vec<String>, WhenFull)> = None;
    let mut by: Vec<Operand> = Vec::new();
    let mut stages = Vec::new();
    let mut modifiers = Vec::new();
    let mut on_error: Option<(&Op, String)> = None;
    // A `Window` waiting for its `Aggregate`, and its spec when it checked.
    let mut open_window: Option<(&Op, Option<WindowSpec>)> = None;
    // The pipeline's `Window` or `Join`: one stateful stage at most.
    let mut stateful: Option<&Op> = None;

    for (index, op) in st.ops.iter().enumerate() {
        if let Some((window, _)) = open_window.as_ref().filter(|_| op.name.name != "Aggregate") {
            diags.push(window_alone(window));
            open_window = None;
        }
        let Some(spec) = find_op(&op.name.name) else {
            diags.push(
                Diagnostic::new(
                    Code::E006,
                    op.name.span,
                    format!("unknown operator `{}`", op.name.name),
                )
                .with_label_here("not an operator")
                .with_suggestion(&op.name.name, builtin_operators().iter().map(|o| o.name)),
            );
            continue;
        };
        let after_out = outputs.is_some();
        match spec.class {
            OpClass::Input => {
                if let Some((first, _)) = input {
                    diags.push(
                        Diagnostic::new(
                            Code::E003,
                            op.span,
                            format!("pipeline `{id}` has more than one `In`"),
                        )
                        .with_label_here("second `In`")
                        .with_label(first.span, "first `In` here")
                        .with_help("a pipeline reads one source or queue; use another pipeline for a second input"),
                    );
                    continue;
                }
                if index != 0 {
                    diags.push(
                        Diagnostic::new(Code::E002, op.span, "`In` must be the first op")
                            .with_label_here("not first")
                            .with_help(format!(
                                "move `{}` to the front of the pipeline",
                                op_text(op)
                            )),
                    );
                }
                let args = check_args(spec, op, diags);
                let name = args.and_then(|a| {
                    let mut name = None;
                    for v in a {
                        match v {
                            ArgValue::Name(n) => name = Some(n),
                            ArgValue::Choice(c) if c == "drop_newest" => {
                                input_when_full = WhenFull::DropNewest;
                            }
                            _ => {}
                        }
                    }
                    name
                });
                if let Some(n) = &name {
                    out.uses.push(NameUse {
                        name: n.name.clone(),
                        span: n.span,
                        write: false,
                    });
                }
                input = Some((op, name));
            }
            OpClass::Output => {
                if after_out {
                    diags.push(stage_after_out(op));
                    continue;
                }
                let mut targets = Vec::new();
                let mut when_full = WhenFull::Block;
                for a in check_args(spec, op, diags).unwrap_or_default() {
                    match a {
                        ArgValue::Name(n) if targets.contains(&n.name) => {
                            diags.push(
                                Diagnostic::new(
                                    Code::W002,
                                    n.span,
                                    format!("`{}` is listed twice in `Out`", n.name),
                                )
                                .with_label_here("already an output")
                                .with_help("each output gets every event once; remove the repeat"),
                            );
                        }
                        ArgValue::Name(n) => {
                            out.uses.push(NameUse {
                                name: n.name.clone(),
                                span: n.span,
                                write: true,
                            });
                            targets.push(n.name);
                        }
                        ArgValue::Choice(c) if c == "drop_newest" => {
                            when_full = WhenFull::DropNewest
                        }
                        _ => {}
                    }
                }
                if let Some(a) = op.named("by") {
                    by = window::keys(&a.value, diags)
                        .into_iter()
                        .map(|(_, o, _)| o)
                        .collect();
                    if targets.len() == 1 && !by.is_empty() {
                        diags.push(
                            Diagnostic::new(
                                Code::W002,
                                a.span,
                                "`by` with one output sends every event to it",
                            )
                            .with_label_here("no effect")
                            .with_help(
                                "list the outputs to spread the events over, or remove `by`",
                            ),
                        );
                    }
                }
                outputs = Some((targets, when_full));
            }
            OpClass::ErrorRoute => {
                if let Some((first, _)) = &on_error {
                    diags.push(
                        Diagnostic::new(Code::E007, op.span, "only one `OnError` per pipeline")
                            .with_label_here("second `OnError`")
                            .with_label(first.span, "first `OnError` here"),
                    );
                    continue;
                }
                if let Some(ArgValue::Name(n)) =
                    check_args(spec, op, diags).and_then(|mut a| a.pop())
                {
                    out.uses.push(NameUse {
                        name: n.name.clone(),
                        span: n.span,
                        write: true,
                    });
                    on_error = Some((op, n.name));
                }
            }
            OpClass::Stage if after_out => diags.push(stage_after_out(op)),
            OpClass::Stage if spec.name == "Window" || spec.name == "Join" => {
                if let Some(first) =
                    stateful.filter(|f| f.name.name == "Join" || spec.name == "Join")
                {
                    diags.push(crate::join::one_stateful_stage(op, first));
                    if spec.name == "Window" {
                        // Its `Aggregate` is not reported as alone.
                        open_window = Some((op, None));
                    }
                    continue;
                }
                stateful = stateful.or(Some(op));
                if spec.name == "Join" {
                    if let Some((_, Some(input))) = &input {
                        crate::join::self_join(&input.name, op, diags);
                    }
                    let Some(args) = check_args(spec, op, diags) else {
                        continue;
                    };
                    if let Some(stage) = crate::join::check(op, args, &mut out, diags) {
                        stages.push(stage);
                    }
                    continue;
                }
                let checked = check_args(spec, op, diags)
                    .and_then(|_| window::check_window(op, &mut out, diags));
                open_window = Some((op, checked));
            }
            OpClass::Stage if spec.name == "Aggregate" => {
                let Some((_, window)) = open_window.take() else {
                    diags.push(
                        Diagnostic::new(
                            Code::E026,
                            op.span,
                            "`Aggregate` needs a `Window` right before it",
                        )
                        .with_label_here("no window")
                        .with_help("for example `.Window(tumbling = 1m).Aggregate(as = \"Stats\", calls = Count())`"),
                    );
                    continue;
                };
                let aggregate =
                    check_args(spec, op, diags).and_then(|_| window::check_aggregate(op, diags));
                if let (Some(window), Some(aggregate)) = (window, aggregate) {
                    stages.push(Stage::Aggregate(Box::new(Windowed { window, aggregate })));
                }
            }
            OpClass::Stage | OpClass::Modifier => {
                let Some(args) = check_args(spec, op, diags) else {
                    continue;
                };
                if let Some(stage) = build_stage(spec, op, index, args, bindings, &mut out, diags) {
                    if after_out {
                        modifiers.push(stage);
                    } else {
                        stages.push(stage);
                    }
                }
            }
        }
    }

    if let Some((window, _)) = open_window {
        diags.push(window_alone(window));
    }
    if input.is_none() {
        diags.push(
            Diagnostic::new(
                Code::E002,
                st.head_span,
                format!("pipeline `{id}` has no `In`"),
            )
            .with_label_here("no input")
            .with_help("start the pipeline with `.In(Source)`, e.g. `.In(Stdin)`"),
        );
    }
    if outputs.is_none() {
        diags.push(
            Diagnostic::new(
                Code::E004,
                st.head_span,
                format!("pipeline `{id}` has no `Out`"),
            )
            .with_label_here("no output")
            .with_help("end the pipeline with `.Out(Sink)`, e.g. `.Out(Stdout)`"),
        );
    }

    if !diags.iter().any(Diagnostic::is_error) && !out.missing_stage {
        if let (Some((_, Some(input))), Some((targets, when_full))) = (input, outputs) {
            out.config = Some(PipelineConfig {
                input: input.name,
                input_when_full,
                stages,
                outputs: targets
                    .into_iter()
                    .map(|target| Output {
                        target,
                        modifiers: modifiers.clone(),
                    })
                    .collect(),
                when_full,
                by,
                on_error: on_error.map(|(_, name)| name),
            });
        }
    }
    out
}

fn window_alone(window: &Op) -> Diagnostic {
    Diagnostic::new(
        Code::E026,
        window.span,
        "`Window` must be followed directly by `Aggregate`",
    )
    .with_label_here("a window with nothing to compute")
    .with_help("for example `.Window(tumbling = 1m).Aggregate(as = \"Stats\", calls = Count())`")
}

fn op_text(op: &Op) -> String {
    format!("{}(...)", op.name.name)
}

fn stage_after_out(op: &Op) -> Diagnostic {
    Diagnostic::new(
        Code::E005,
        op.span,
        format!("`{}` after `Out`", op.name.name),
    )
    .with_label_here("after the outputs")
    .with_help(format!(
        "only `With*` modifiers and `OnError` may follow `Out`; move `{}` before `Out`",
        op_text(op)
    ))
}

/// Checks arity, named arguments and types against the signature. Returns the
/// values in order (positional first, then named) when all are well formed.
fn check_args(spec: &OpSpec, op: &Op, diags: &mut Vec<Diagnostic>) -> Option<Vec<ArgValue>> {
    let mut ok = true;
    let positional: Vec<&Arg> = op.positional().collect();
    let want = spec.positional.len();
    let arity_ok = if spec.variadic {
        positional.len() >= want
    } else {
        positional.len() == want
    };
    if !arity_ok {
        ok = false;
        let span = positional.get(want).map_or(op.span, |a| a.span);
        diags.push(
            Diagnostic::new(
                Code::E007,
                span,
                format!(
                    "`{}` takes {}, found {}",
                    spec.name,
                    spec.arity_text(),
                    positional.len()
                ),
            )
            .with_label_here(if positional.len() > want {
                "extra argument"
            } else {
                "missing argument"
            })
            .with_help(signature_help(spec)),
        );
    }
    let mut values = Vec::new();
    for (i, arg) in positional.iter().enumerate() {
        let Some(param) = spec.positional.get(i).or(if spec.variadic {
            spec.positional.last()
        } else {
            None
        }) else {
            continue;
        };
        match check_value(param.ty, &arg.value, diags) {
            Some(v) => values.push(v),
            None => ok = false,
        }
    }
    let mut seen: Vec<&Ident> = Vec::new();
    for arg in &op.args {
        let Some(key) = &arg.key else { continue };
        if let Some(first) = seen.iter().find(|k| k.name == key.name) {
            ok = false;
            diags.push(
                Diagnostic::new(
                    Code::E008,
                    key.span,
                    format!("`{}` is given twice", key.name),
                )
                .with_label(first.span, "first given here"),
            );
            continue;
        }
        seen.push(key);
        let Some(param) = spec
            .named
            .iter()
            .find(|p| p.name == key.name)
            .or(spec.other_named.as_ref())
        else {
            ok = false;
            let mut d = Diagnostic::new(
                Code::E008,
                key.span,
                format!("unknown named argument `{}` for `{}`", key.name, spec.name),
            )
            .with_label_here("unknown argument");
            d = if spec.named.is_empty() {
                d.with_help(format!("`{}` takes no named arguments", spec.name))
            } else {
                d.with_suggestion(&key.name, spec.named.iter().map(|p| p.name))
            };
            if d.help.is_none() {
                d = d.with_help(signature_help(spec));
            }
            diags.push(d);
            continue;
        };
        match check_value(param.ty, &arg.value, diags) {
            Some(v) => values.push(v),
            None => ok = false,
        }
    }
    ok.then_some(values)
}

fn signature_help(spec: &OpSpec) -> String {
    let mut parts: Vec<String> = spec.positional.iter().map(|p| p.name.to_owned()).collect();
    if spec.variadic {
        parts.push("...".to_owned());
    }
    parts.extend(spec.named.iter().map(|p| format!("{} = ...", p.name)));
    format!("usage: {}({})", spec.name, parts.join(", "))
}

fn wrong_type(expected: &str, e: &Expr) -> Diagnostic {
    let found = match &e.kind {
        ExprKind::Int(v) => format!("an integer `{v}`"),
        ExprKind::Float(v) => format!("a float `{v}`"),
        ExprKind::Str(s) => format!("a string `{s:?}`"),
        _ => e.describe().to_owned(),
    };
    Diagnostic::new(
        Code::E008,
        e.span,
        format!("expected {expected}, found {found}"),
    )
    .with_label_here(format!("expected {expected}"))
}

fn check_value(ty: ParamType, e: &Expr, diags: &mut Vec<Diagnostic>) -> Option<ArgValue> {
    let value = match (ty, &e.kind) {
        (ParamType::Name, _) => e.as_name().cloned().map(ArgValue::Name),
        (ParamType::TypeName, ExprKind::Str(s)) => Some(ArgValue::Type(s.clone(), e.span)),
        (ParamType::TypeName, _) => e.as_name().map(|n| ArgValue::Type(n.name.clone(), n.span)),
        (ParamType::Int, ExprKind::Int(v)) => Some(ArgValue::Int(*v, e.span)),
        (ParamType::Number, ExprKind::Int(v)) => Some(ArgValue::Number(*v as f64, e.span)),
        (ParamType::Number, ExprKind::Float(v)) => Some(ArgValue::Number(*v, e.span)),
        (ParamType::Condition, _) => return check_condition(e, diags).map(ArgValue::Condition),
        (ParamType::Duration, ExprKind::Duration(d)) => Some(ArgValue::Duration(*d, e.span)),
        (ParamType::Keys | ParamType::Aggregate | ParamType::TagValue | ParamType::Field, _) => {
            Some(ArgValue::Deferred)
        }
        (ParamType::Text, ExprKind::Str(s)) => Some(ArgValue::Text(s.clone(), e.span)),
        (ParamType::Choice(choices), _) => match e.as_name() {
            Some(n) if choices.contains(&n.name.as_str()) => Some(ArgValue::Choice(n.name.clone())),
            Some(n) => {
                diags.push(
                    Diagnostic::new(
                        Code::E009,
                        n.span,
                        format!("`{}` is not one of {}", n.name, choices.join(", ")),
                    )
                    .with_label_here("not allowed here")
                    .with_suggestion(&n.name, choices.iter().copied()),
                );
                return None;
            }
            None => None,
        },
        _ => None,
    };
    if value.is_none() {
        let mut d = wrong_type(&ty.describe(), e);
        if ty == ParamType::Int && matches!(e.kind, ExprKind::Float(_)) {
            d = d.with_help("write a whole number");
        } else if ty == ParamType::Name && matches!(e.kind, ExprKind::Str(_)) {
            d = d.with_help("names are written without quotes");
        }
        diags.push(d);
    }
    value
}

fn build_stage(
    spec: &OpSpec,
    op: &Op,
    index: usize,
    args: Vec<ArgValue>,
    bindings: &Bindings,
    out: &mut CheckedStatement,
    diags: &mut Vec<Diagnostic>,
) -> Option<Stage> {
    let keys: &[KeyDecl] = &bindings.keys;
    match spec.name {
        "Enrich" => crate::enrich::check(op, args, bindings, out, diags),
        "VerifySignature" => {
            let Some(ArgValue::Name(key)) = args.into_iter().next() else {
                diags.push(
                    Diagnostic::new(Code::E007, op.span, "`VerifySignature` needs `key = Name`")
                        .with_label_here("missing `key`")
                        .with_help("name a key declared under `keys:` in the bindings file; keys are never written in blueprints"),
                );
                return None;
            };
            let Some(decl) = keys.iter().find(|k| k.name == key.name) else {
                diags.push(
                    Diagnostic::new(Code::E010, key.span, format!("unknown key `{}`", key.name))
                        .with_label_here("not under `keys:`")
                        .with_suggestion(&key.name, keys.iter().map(|k| k.name.as_str()))
                        .with_help_or_default(format!(
                            "declare it in the bindings file: `keys: {{ {}: {{ env: VARIABLE }} }}`",
                            key.name
                        )),
                );
                return None;
            };
            // A key that could not be read was reported where it is
            // declared; the set has an error and never runs.
            let Some(secret) = decl.secret.clone() else {
                out.missing_stage = true;
                return None;
            };
            Some(Stage::VerifySignature {
                key: key.name,
                secret,
            })
        }
        "Dedup" => {
            let within = match args.into_iter().next() {
                Some(ArgValue::Duration(d, span)) => {
                    if d.is_zero() {
                        diags.push(
                            Diagnostic::new(Code::E009, span, "`within` must be longer than 0")
                                .with_label_here("out of range")
                                .with_help("for example `Dedup(within = 10m)`"),
                        );
                        return None;
                    }
                    d
                }
                _ => std::time::Duration::from_secs(600),
            };
            Some(Stage::Dedup { within })
        }
        "FilterType" => {
            let mut types = Vec::new();
            for a in args {
                if let ArgValue::Type(t, span) = a {
                    out.types.push((t.clone(), span));
                    types.push(t);
                }
            }
            Some(Stage::FilterType { types })
        }
        "SetTag" => {
            let mut tags = Vec::new();
            let mut ok = true;
            for a in &op.args {
                let Some(key) = &a.key else { continue };
                match crate::expr::operand(&a.value, diags) {
                    Some((value, _)) => tags.push((key.name.clone(), value)),
                    None => ok = false,
                }
            }
            if tags.is_empty() && ok {
                diags.push(
                    Diagnostic::new(Code::E007, op.span, "`SetTag` sets no tag")
                        .with_label_here("no `key = value`")
                        .with_help("for example `SetTag(env = \"prod\", team = fields.team)`"),
                );
            }
            (ok && !tags.is_empty()).then_some(Stage::SetTag { tags })
        }
        "RemoveTag" => {
            let mut keys = Vec::new();
            for a in args {
                if let ArgValue::Type(k, span) = a {
                    if k.starts_with("dab.") {
                        diags.push(
                            Diagnostic::new(
                                Code::E009,
                                span,
                                format!("`{k}` is one of DAB's own tags"),
                            )
                            .with_label_here("reserved")
                            .with_help("tags starting `dab.` are set by DAB and cannot be changed from blueprints"),
                        );
                        return None;
                    }
                    keys.push(k);
                }
            }
            Some(Stage::RemoveTag { keys })
        }
        "Route" => {
            let mut args = args.into_iter();
            let (Some(ArgValue::Condition(predicate)), Some(ArgValue::Name(target))) =
                (args.next(), args.next())
            else {
                return None;
            };
            out.uses.push(NameUse {
                name: target.name.clone(),
                span: target.span,
                write: true,
            });
            if predicate == Predicate::Const(false) {
                diags.push(
                    Diagnostic::new(Code::W002, op.span, "`Route(false, ...)` takes no event")
                        .with_label_here("no effect")
                        .with_help("remove it"),
                );
            }
            Some(Stage::Route {
                predicate,
                target: target.name,
            })
        }
        "Filter" => {
            let predicate = args.into_iter().find_map(|a| match a {
                ArgValue::Condition(p) => Some(p),
                _ => None,
            })?;
            if predicate == Predicate::Const(true) {
                diags.push(
                    Diagnostic::new(Code::W002, op.span, "`Filter(true)` keeps every event")
                        .with_label_here("no effect")
                        .with_help("remove it"),
                );
            }
            Some(Stage::Filter { predicate })
        }
        "WithSampleRate" => {
            let Some(ArgValue::Int(n, span)) = args.into_iter().next() else {
                return None;
            };
            if n < 1 {
                diags.push(
                    Diagnostic::new(
                        Code::E009,
                        span,
                        format!("sample rate must be at least 1, found {n}"),
                    )
                    .with_label_here("out of range")
                    .with_help("`WithSampleRate(n)` keeps 1 event in n; n = 1 keeps all"),
                );
                return None;
            }
            if n == 1 {
                diags.push(
                    Diagnostic::new(Code::W002, op.span, "`WithSampleRate(1)` keeps every event")
                        .with_label_here("no effect")
                        .with_help("remove it, or sample with n > 1"),
                );
            }
            Some(Stage::Sample {
                rate: n.unsigned_abs(),
                salt: index as u64,
            })
        }
        _ => rate_limit(op, args, out, diags),
    }
}

fn rate_limit(
    op: &Op,
    args: Vec<ArgValue>,
    out: &mut CheckedStatement,
    diags: &mut Vec<Diagnostic>,
) -> Option<Stage> {
    let mut rate = None;
    let mut burst = None;
    let mut on_limit = "wait".to_owned();
    let mut overflow: Option<Ident> = None;
    for (i, a) in args.into_iter().enumerate() {
        match a {
            ArgValue::Number(r, span) if i == 0 => rate = Some((r, span)),
            ArgValue::Int(b, span) => burst = Some((b, span)),
            ArgValue::Choice(c) => on_limit = c,
            ArgValue::Name(n) => overflow = Some(n),
            _ => {}
        }
    }
    let (per_second, rate_span) = rate?;
    let mut ok = true;
    if per_second <= 0.0 {
        ok = false;
        diags.push(
            Diagnostic::new(
                Code::E009,
                rate_span,
                format!("rate must be greater than 0, found {per_second}"),
            )
            .with_label_here("out of range")
            .with_help("the rate is events per second; 0.5 is one event every two seconds"),
        );
    }
    let burst = match burst {
        Some((b, span)) => match u32::try_from(b) {
            Ok(b) if b >= 1 => b,
            _ => {
                ok = false;
                diags.push(
                    Diagnostic::new(
                        Code::E009,
                        span,
                        format!("burst must be between 1 and {}, found {b}", u32::MAX),
                    )
                    .with_label_here("out of range"),
                );
                1
            }
        },
        // One second's worth, at least one event.
        None => per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
    };
    // SPEC: every argument naming a queue or sink is a write, so it is
    // resolved and cycle-checked even where it has no effect.
    if let Some(target) = &overflow {
        out.uses.push(NameUse {
            name: target.name.clone(),
            span: target.span,
            write: true,
        });
    }
    let on_limit = match (on_limit.as_str(), overflow) {
        ("overflow", Some(target)) => OnLimit::Overflow(target.name),
        ("overflow", None) => {
            ok = false;
            diags.push(
                Diagnostic::new(
                    Code::E007,
                    op.span,
                    "`on_limit = overflow` needs `overflow = Name`",
                )
                .with_label_here("missing `overflow`")
                .with_help("name the queue or sink that takes the excess: `overflow = Spill`"),
            );
            OnLimit::Wait
        }
        (other, Some(target)) => {
            diags.push(
                Diagnostic::new(
                    Code::W002,
                    target.span,
                    format!("`overflow` has no effect with `on_limit = {other}`"),
                )
                .with_label_here("ignored")
                .with_help("add `on_limit = overflow`, or remove `overflow`"),
            );
            if other == "drop" {
                OnLimit::Drop
            } else {
                OnLimit::Wait
            }
        }
        ("drop", None) => OnLimit::Drop,
        _ => OnLimit::Wait,
    };
    ok.then_some(Stage::RateLimit {
        per_second,
        burst,
        on_limit,
    })
}

trait HelpOrDefault {
    fn with_help_or_default(self, help: String) -> Self;
}

impl HelpOrDefault for Diagnostic {
    fn with_help_or_default(self, help: String) -> Self {
        if self.help.is_some() {
            self
        } else {
            self.with_help(help)
        }
    }
}
