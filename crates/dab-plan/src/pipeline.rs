//! Checks one statement: op order (E002-E006), arguments against the op's
//! signature (E007-E009), no-effect ops (W002). Names are only collected here;
//! `names.rs` resolves them once every pipeline of the set is known.

use dab_diag::{Code, Diagnostic, Span};
use dab_syntax::ast::{Arg, Expr, ExprKind, Ident, Op, Statement};

use crate::bindings::Bindings;
use crate::expr::check_condition;
use crate::model::{Operand, Output, PipelineConfig, Stage, WhenFull, WindowSpec, Windowed};
pub(crate) use crate::ops::ArgValue;
use crate::ops::{find_op, CheckCx, OpCheck, OpClass, OpSpec, Ops, ParamType};
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

/// Checks one statement; its diagnostics go to `diags`, which holds only
/// this statement's (the caller gives each statement its own).
pub(crate) fn check_statement(
    st: &Statement,
    bindings: &Bindings,
    ops: &Ops,
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
        let plugged = ops.find(&op.name.name);
        let Some(spec) = find_op(&op.name.name).or(plugged.map(|o| o.spec())) else {
            diags.push(
                Diagnostic::new(
                    Code::E006,
                    op.name.span,
                    format!("unknown operator `{}`", op.name.name),
                )
                .with_label_here("not an operator")
                .with_suggestion(&op.name.name, ops.specs().map(|o| o.name)),
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
                let stage = match plugged {
                    Some(checker) => {
                        plugged_stage(checker, op, index, args, bindings, &mut out, diags)
                    }
                    None => None,
                };
                if let Some(stage) = stage {
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

/// A pluggable op's own check, lowered into its stage.
fn plugged_stage(
    checker: &dyn OpCheck,
    op: &Op,
    index: usize,
    args: Vec<ArgValue>,
    bindings: &Bindings,
    out: &mut CheckedStatement,
    diags: &mut Vec<Diagnostic>,
) -> Option<Stage> {
    let mut cx = CheckCx {
        bindings,
        index,
        diags,
        out,
    };
    checker.check(&mut cx, op, args).map(Stage::Op)
}
