use serde_json::json;

use super::*;

fn t(text: &str) -> FieldType {
    FieldType::parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn field(name: &str, ty: FieldType) -> Field {
    Field {
        name: name.into(),
        ty,
    }
}

/// The schema of SPEC section 7's `ApiCall`.
fn api_call() -> Schema {
    Schema {
        version: Some(3),
        fields: vec![
            field("team_id", t("int64")),
            field("user_id", t("int64")),
            field("visitor_id", t("string?")),
            field("user_agent", t("map<string, string>?")),
            field("api_call_method", t("string")),
            field("api_call_ok", t("bool")),
            field("latency_ms", t("float64")),
            field("tags_seen", t("list<string>?")),
            field(
                "client",
                FieldType {
                    ty: Type::Struct(vec![
                        field("name", t("string")),
                        field("version", t("string?")),
                    ]),
                    optional: false,
                },
            ),
        ],
    }
}

#[test]
fn type_texts_parse_and_print_back() {
    for text in [
        "bool",
        "int32",
        "int64?",
        "float64",
        "string",
        "bytes?",
        "timestamp",
        "list<string>",
        "list<list<int32?>>?",
        "map<string, float64>",
        "map<string, list<string>>?",
    ] {
        assert_eq!(t(text).to_string(), text);
    }
    assert_eq!(
        t(" map< string ,int64 > ? ").to_string(),
        "map<string, int64>?"
    );
}

#[test]
fn bad_type_texts_say_where_and_what() {
    let err = |text: &str| FieldType::parse(text).expect_err(text);
    assert_eq!(
        err("int"),
        ParseError {
            at: 0,
            message: "unknown type `int`".into()
        }
    );
    assert_eq!(err("list<strin>").message, "unknown type `strin`");
    assert_eq!(err("list<strin>").at, 5);
    assert_eq!(err("list string").message, "expected `<` after `list`");
    assert_eq!(
        err("map<int64, string>").message,
        "map keys are `string`: write `map<string, T>`"
    );
    assert_eq!(err("list<string").message, "expected `>` to close `list<`");
    assert_eq!(err("string??").message, "unexpected `?` after the type");
    assert_eq!(err("").message, "expected a type");
}

#[test]
fn paths_resolve_through_structs_and_maps() {
    let s = api_call();
    assert_eq!(s.lookup(&["team_id"]), Ok(t("int64")));
    assert_eq!(s.lookup(&["client", "name"]), Ok(t("string")));
    assert_eq!(s.lookup(&["client", "version"]), Ok(t("string?")));
    // Any key of a map: its value type, optional (the key may be absent).
    assert_eq!(s.lookup(&["user_agent", "os"]), Ok(t("string?")));
    let (at, known) = s.lookup(&["clent", "name"]).expect_err("typo");
    assert_eq!(at, 0);
    assert!(known.contains(&"client".to_owned()));
    assert_eq!(
        s.lookup(&["client", "nam"]),
        Err((1, vec!["name".to_owned(), "version".to_owned()]))
    );
    // A scalar has no fields.
    assert_eq!(s.lookup(&["team_id", "x"]), Err((1, Vec::new())));
}

#[test]
fn payloads_conform_or_name_the_first_field_that_does_not() {
    let s = api_call();
    let good = json!({
        "team_id": 1, "user_id": 2, "api_call_method": "chat.postMessage",
        "api_call_ok": true, "latency_ms": 12, "client": {"name": "web"},
        "user_agent": {"os": "linux"}, "tags_seen": ["a"], "visitor_id": null,
    });
    assert_eq!(s.conforms(Some(&good)), Ok(()));
    let with = |key: &str, v: Value| {
        let mut p = good.clone();
        p[key] = v;
        s.conforms(Some(&p))
    };
    assert_eq!(
        with("team_id", json!("1")),
        Err("`team_id` is a string, not int64".into())
    );
    assert_eq!(
        with("latency_ms", Value::Null),
        Err("`latency_ms` is null (float64)".into())
    );
    assert_eq!(
        with("tags_seen", json!(["a", 1])),
        Err("`tags_seen[1]` is an integer, not string".into())
    );
    assert_eq!(
        with("client", json!({"version": "1"})),
        Err("`client.name` is missing (string)".into())
    );
    assert_eq!(
        with("user_agent", json!({"os": 7})),
        Err("`user_agent[\"os\"]` is an integer, not string".into())
    );
    let mut missing = good.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("api_call_ok");
    assert_eq!(
        s.conforms(Some(&missing)),
        Err("`api_call_ok` is missing (bool)".into())
    );
    assert_eq!(
        s.conforms(Some(&json!([1]))),
        Err("the payload is not a JSON object".into())
    );
    assert_eq!(
        s.conforms(None),
        Err("the payload is not a JSON object".into())
    );
}

#[test]
fn int32_and_timestamps_are_checked_for_range_and_shape() {
    let s = Schema {
        version: None,
        fields: vec![field("n", t("int32")), field("at", t("timestamp"))],
    };
    let check = |n: Value, at: Value| s.conforms(Some(&json!({"n": n, "at": at})));
    assert_eq!(check(json!(2_147_483_647), json!(1)), Ok(()));
    assert!(check(json!(2_147_483_648_i64), json!(1)).is_err());
    assert!(check(json!(1.5), json!(1)).is_err());
    for ok in [
        "2026-12-06T02:40:00Z",
        "2026-12-06T02:40:00.123456789+01:00",
        "2026-12-06 02:40:00z",
    ] {
        assert_eq!(check(json!(1), json!(ok)), Ok(()), "{ok}");
    }
    for bad in [
        "2026-13-06T02:40:00Z",
        "2026-12-06T02:40:00",
        "2026-12-06T02:40:00.Z",
        "yesterday",
        "2026-12-06T24:00:00Z",
    ] {
        assert!(check(json!(1), json!(bad)).is_err(), "{bad}");
    }
}

#[test]
fn comparisons_follow_the_field_type() {
    assert!(t("int64").compares_with(LiteralKind::Int));
    assert!(t("int64").compares_with(LiteralKind::Float));
    assert!(!t("int64").compares_with(LiteralKind::Str));
    assert!(t("string?").compares_with(LiteralKind::Str));
    assert!(!t("bool").compares_with(LiteralKind::Int));
    assert!(!t("list<string>").compares_with(LiteralKind::Str));
}

#[test]
fn the_json_document_keeps_names_types_and_nesting() {
    assert_eq!(
        api_call().to_json(),
        json!({
            "version": 3,
            "fields": {
                "team_id": "int64", "user_id": "int64", "visitor_id": "string?",
                "user_agent": "map<string, string>?", "api_call_method": "string",
                "api_call_ok": "bool", "latency_ms": "float64",
                "tags_seen": "list<string>?",
                "client": {"name": "string", "version": "string?"},
            }
        })
    );
}
