//! Parser behaviour on the language features of SPEC section 1.

use dab_diag::{Code, FileId};
use dab_syntax::ast::{BinOp, ExprKind, Statement};
use dab_syntax::parse;

fn ok(text: &str) -> Vec<Statement> {
    let (bp, diags) = parse(FileId(0), text);
    assert!(
        diags.is_empty(),
        "unexpected diagnostics for {text:?}: {diags:#?}"
    );
    bp.statements
}

#[test]
fn seed_blueprint_with_dots_at_both_line_ends() {
    let s = ok("// Ingestion\nmurron_server.NewPipeline().\n    In(MurronGRPC).\n    FilterType(MyEvent).\n    Out(MyEventQueue)\n\n// Sinks\nmy_event_worker.NewPipeline().In(MyEventQueue)\n    .WithRateLimitPerSecond(1000)\n    .WithSampleRate(5).\n    Out(SidecarClient)\n");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].id(), "murron_server");
    let ops: Vec<&str> = s[1].ops.iter().map(|o| o.name.name.as_str()).collect();
    assert_eq!(
        ops,
        ["In", "WithRateLimitPerSecond", "WithSampleRate", "Out"]
    );
}

#[test]
fn named_pipelines_semicolons_comments_and_literals() {
    let s = ok(
        r#"a.NewPipeline("p1").In(X) /* c */ .Op(1, -2, 0.5, -1.5e3, "s\"\\\n\t\u{e9}", true, false, 250ms, 10s, 5m, 1h, [a, "b"], k = v); b.NewPipeline().In(Y).Out(Z);"#,
    );
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].id(), "a/p1");
    let args = &s[0].ops[1].args;
    assert!(matches!(args[0].value.kind, ExprKind::Int(1)));
    assert!(matches!(args[1].value.kind, ExprKind::Int(-2)));
    assert!(matches!(args[2].value.kind, ExprKind::Float(f) if f == 0.5));
    assert!(matches!(args[3].value.kind, ExprKind::Float(f) if f == -1500.0));
    assert!(matches!(&args[4].value.kind, ExprKind::Str(s) if s == "s\"\\\n\té"));
    assert!(matches!(args[5].value.kind, ExprKind::Bool(true)));
    assert!(matches!(args[7].value.kind, ExprKind::Duration(d) if d.as_millis() == 250));
    assert!(matches!(args[10].value.kind, ExprKind::Duration(d) if d.as_secs() == 3600));
    assert!(matches!(&args[11].value.kind, ExprKind::List(items) if items.len() == 2));
    assert_eq!(args[12].key.as_ref().map(|k| k.name.as_str()), Some("k"));
    assert_eq!(args[12].value.as_name().map(|n| n.name.as_str()), Some("v"));
}

#[test]
fn expression_precedence_or_and_not_compare() {
    let s = ok(
        r#"s.NewPipeline().In(X).Filter(!a == 1 || tags.env == "prod" && tags["k-1"] in ["x", "y"]).Out(Y)"#,
    );
    let e = &s[0].ops[1].args[0].value;
    let ExprKind::Binary {
        op: BinOp::Or,
        lhs,
        rhs,
    } = &e.kind
    else {
        panic!("top is not ||: {e:?}")
    };
    assert!(
        matches!(&lhs.kind, ExprKind::Not(inner) if matches!(inner.kind, ExprKind::Binary { op: BinOp::Eq, .. }))
    );
    let ExprKind::Binary {
        op: BinOp::And,
        rhs: in_expr,
        ..
    } = &rhs.kind
    else {
        panic!("rhs is not &&")
    };
    assert!(matches!(
        in_expr.kind,
        ExprKind::Binary { op: BinOp::In, .. }
    ));
}

#[test]
fn a_generic_unknown_op_with_an_expression_parses() {
    let s = ok(r#"svc.NewPipeline().In(Stdin).Filtr(host == "x").Out(Stdout)"#);
    assert_eq!(s[0].ops[1].name.name, "Filtr");
}

#[test]
fn syntax_error_reports_position_and_parsing_resumes() {
    let text = "svc.NewPipeline().In(Stdin.Out(Stdout)\nok.NewPipeline().In(A).Out(B)\nbad.NewPipeline().In(A)..Out(B)\n";
    let (bp, diags) = parse(FileId(0), text);
    assert_eq!(bp.statements.len(), 1);
    assert_eq!(bp.statements[0].id(), "ok");
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert!(diags.iter().all(|d| d.code == Code::E001));
    // The second error is on line 3, at the second dot.
    let at = text.find("..").unwrap_or(0) + 1;
    assert_eq!(diags[1].span.start as usize, at);
    assert!(
        diags[1].message.starts_with("expected"),
        "{}",
        diags[1].message
    );
}

#[test]
fn junk_before_the_first_statement_is_an_error() {
    let (bp, diags) = parse(FileId(0), "hello\nsvc.NewPipeline().In(A).Out(B)");
    assert_eq!(bp.statements.len(), 1);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, Code::E001);
    assert_eq!(diags[0].span.start, 0);
    assert!(
        diags[0].message.contains("found `hello`"),
        "{}",
        diags[0].message
    );
}

#[test]
fn literal_range_errors() {
    let (_, diags) = parse(
        FileId(0),
        r#"s.NewPipeline().In(A).X(99999999999999999999, "\u{d800}").Out(B)"#,
    );
    let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
    assert_eq!(codes, [Code::E009, Code::E001]);
}

#[test]
fn reserved_words_are_not_names() {
    let (_, diags) = parse(FileId(0), "s.NewPipeline().In(in).Out(B)");
    assert_eq!(diags.len(), 1);
}
