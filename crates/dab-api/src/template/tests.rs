#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::Text;

fn ev(ty: &str, host: &str, tags: &[(&str, &str)], message: &str) -> Event {
    Event {
        ty: Text::from(ty),
        host: Text::from(host),
        tags: tags
            .iter()
            .map(|(k, v)| (Text::from(*k), Text::from(*v)))
            .collect(),
        message: Bytes::from(message.to_owned()),
        ..Event::default()
    }
}

fn path(t: &str, e: &Event) -> Result<String, Missing> {
    let mut out = String::new();
    Template::parse(t).unwrap().render_path(e, &mut out)?;
    Ok(out)
}

fn topic(t: &str, e: &Event) -> Result<String, Missing> {
    let mut out = String::new();
    Template::parse(t).unwrap().render_topic(e, &mut out)?;
    Ok(out)
}

fn errors(t: &str) -> Vec<(std::ops::Range<usize>, String)> {
    Template::parse(t)
        .unwrap_err()
        .into_iter()
        .map(|e| (e.range, e.message))
        .collect()
}

#[test]
fn every_placeholder_renders_its_value() {
    let e = ev(
        "Click",
        "web-1",
        &[("team", "core")],
        r#"{"user":{"id":42},"ok":true,"x":1.5,"name":"ann"}"#,
    );
    assert_eq!(
        path("out/{type}/{host}.ndjson", &e).unwrap(),
        "out/Click/web-1.ndjson"
    );
    assert_eq!(
        path(
            "{tags.team}/{fields.user.id}-{fields.ok}-{fields.x}-{fields.name}",
            &e
        )
        .unwrap(),
        "core/42-true-1.5-ann"
    );
    assert_eq!(topic("events.{type}", &e).unwrap(), "events.Click");
}

#[test]
fn doubled_braces_are_literal_braces() {
    let e = ev("A", "h", &[], "{}");
    assert_eq!(path("a{{b}}/{type}{{", &e).unwrap(), "a{b}/A{");
    let t = Template::parse("x{{y}}").unwrap();
    assert!(t.is_static());
    assert_eq!(t.literal().as_deref(), Some("x{y}"));
    assert_eq!(
        Template::parse("out/{type}/x").unwrap().fixed_prefix(),
        "out/"
    );
}

#[test]
fn problems_are_named_at_their_place() {
    assert_eq!(
        errors("out/{typ}.ndjson"),
        vec![(4..9, "unknown placeholder `{typ}`".to_owned())]
    );
    assert_eq!(
        errors("a/{type"),
        vec![(2..3, "`{` is not closed".to_owned())]
    );
    assert_eq!(
        errors("a{}b"),
        vec![(1..3, "empty placeholder `{}`".to_owned())]
    );
    assert_eq!(
        errors("a}b"),
        vec![(1..2, "`}` closes no placeholder".to_owned())]
    );
    assert_eq!(
        errors("{tags.}"),
        vec![(0..7, "`{tags.}` names no tag".to_owned())]
    );
    assert_eq!(errors("{fields.a..b}").len(), 1);
    assert_eq!(errors("{fields.}").len(), 1);
    // A `{` inside a placeholder: the outer one is not closed.
    assert_eq!(
        errors("{ty{pe}"),
        vec![
            (0..1, "`{` is not closed".to_owned()),
            (3..7, "unknown placeholder `{pe}`".to_owned())
        ]
    );
    // Every problem, not only the first.
    assert_eq!(errors("{a}/{b}/{").len(), 3);
    // Byte ranges stay right after multibyte text.
    assert_eq!(
        errors("é/{x}"),
        vec![(3..6, "unknown placeholder `{x}`".to_owned())]
    );
}

#[test]
fn missing_values_name_the_placeholder() {
    let e = ev("A", "h", &[], r#"{"obj":{"a":1},"list":[1],"nul":null}"#);
    for (t, what) in [
        ("{tags.team}", "{tags.team}: the event has no tag `team`"),
        (
            "{fields.nope}",
            "{fields.nope}: the payload has no such field",
        ),
        ("{fields.obj}", "{fields.obj}: the payload field is null"),
        ("{fields.list}", "{fields.list}: the payload field is null"),
        ("{fields.nul}", "{fields.nul}: the payload field is null"),
        (
            "{fields.obj.b}",
            "{fields.obj.b}: the payload has no such field",
        ),
    ] {
        let m = path(t, &e).unwrap_err();
        assert!(m.0.contains(what), "{t}: {m}");
        let m = topic(t, &e).unwrap_err();
        assert!(m.0.contains(what), "{t}: {m}");
    }
    // Not JSON at all: no field.
    assert!(path("{fields.a}", &ev("A", "h", &[], "not json")).is_err());
    // An empty value is refused too.
    let m = path("out/{tags.k}/x", &ev("A", "h", &[("k", "")], "{}")).unwrap_err();
    assert!(m.0.contains("{tags.k} is empty"), "{m}");
}

#[test]
fn path_values_cannot_climb_or_add_components() {
    let with = |v: &str| ev(v, "h", &[], "{}");
    assert_eq!(path("out/{type}/x", &with("..")).unwrap(), "out/__/x");
    assert_eq!(path("out/{type}", &with(".")).unwrap(), "out/_");
    assert_eq!(
        path("out/{type}/x", &with("../../etc")).unwrap(),
        "out/.._.._etc/x"
    );
    assert_eq!(
        path("out/{type}", &with("/etc/passwd")).unwrap(),
        "out/_etc_passwd"
    );
    assert_eq!(path("{type}", &with("/abs")).unwrap(), "_abs");
    assert_eq!(
        path("out/{type}", &with("a\0b\\c\nd")).unwrap(),
        "out/a_b_c_d"
    );
    // Dots made of a literal and a value are one component.
    assert_eq!(path("out/.{type}/x", &with(".")).unwrap(), "out/__/x");
    assert_eq!(path("out/{type}.log", &with(".")).unwrap(), "out/..log");
    // A literal `..` is the template's own.
    assert_eq!(path("../out/{type}", &with("a")).unwrap(), "../out/a");
    // Too long for a file name.
    let long = "x".repeat(300);
    let m = path("out/{type}.ndjson", &with(&long)).unwrap_err();
    assert!(m.0.contains("path component of 307 bytes"), "{m}");
    assert_eq!(
        path("out/{type}", &with(&"y".repeat(255))).unwrap().len(),
        259
    );
}

#[test]
fn topic_values_keep_to_what_kafka_takes() {
    let with = |v: &str| ev(v, "h", &[], "{}");
    assert_eq!(
        topic("events.{type}", &with("a b/c:é")).unwrap(),
        "events.a_b_c__"
    );
    assert_eq!(topic("{type}", &with("..")).unwrap(), "__");
    assert_eq!(topic("{type}", &with("ok-1_x.y")).unwrap(), "ok-1_x.y");
    let m = topic("events.{type}", &with(&"z".repeat(245))).unwrap_err();
    assert!(m.0.contains("Kafka topic of 252 bytes"), "{m}");
}

fn any_template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-z./]{0,4}",
        Just("{type}".to_owned()),
        Just("{host}".to_owned()),
        Just("{tags.k}".to_owned()),
        Just("{fields.a}".to_owned()),
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("..".to_owned()),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any text parses or is refused without a panic.
    #[test]
    fn parsing_never_panics(text in "\\PC{0,40}") {
        let _ = Template::parse(&text);
    }

    /// Whatever the values, a relative template renders a relative path
    /// with no `..` component but those written in the template.
    #[test]
    fn rendering_never_climbs(
        t in any_template(),
        ty in "\\PC{0,12}",
        host in prop_oneof![Just("..".to_owned()), Just(".".to_owned()), Just("/".to_owned()), "[./a]{0,5}"],
        tag in "\\PC{0,8}",
        field in "[./\\\\a\\x00]{0,6}",
    ) {
        let Ok(parsed) = Template::parse(&t) else { return Ok(()) };
        let plain = Template::parse(&t.replace("{type}", "x").replace("{host}", "x").replace("{tags.k}", "x").replace("{fields.a}", "x")).unwrap();
        let literal = plain.literal().unwrap_or_default();
        let literal_climbs = literal.split('/').filter(|c| *c == "..").count();
        let message = serde_json::json!({ "a": field }).to_string();
        let e = ev(&ty, &host, &[("k", &tag)], &message);
        let mut out = String::new();
        if parsed.render_path(&e, &mut out).is_ok() {
            prop_assert!(!out.starts_with('/') || literal.starts_with('/'), "{t} -> {out}");
            let climbs = out.split('/').filter(|c| *c == "..").count();
            prop_assert!(climbs <= literal_climbs, "{t} -> {out}");
            prop_assert!(!out.contains('\0'));
        }
        let mut topic = String::new();
        if parsed.render_topic(&e, &mut topic).is_ok() && !parsed.is_static() {
            let values_ok = topic.len() <= MAX_TOPIC && topic != "." && topic != "..";
            prop_assert!(values_ok, "{t} -> {topic}");
        }
    }
}
