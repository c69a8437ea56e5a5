use super::*;

fn field<'m>(cache: &PayloadCache, m: &'m Bytes, path: &[&str]) -> Option<Scalar<'m>> {
    cache.field(m, path)
}

#[test]
fn parses_once_and_follows_a_replaced_message() {
    let cache = PayloadCache::default();
    let first = Bytes::from_static(br#"{"a":{"b":1}}"#);
    assert_eq!(field(&cache, &first, &["a", "b"]), Some(Scalar::Int(1)));
    assert!(cache.is_parsed());
    assert_eq!(
        cache.with(&first, |v| v.map(|o| o["a"]["b"].clone())),
        Some(Value::from(1))
    );
    // Other bytes in the message: parsed again, never the stale value.
    let second = Bytes::from_static(br#"{"a":{"b":2}}"#);
    assert_eq!(field(&cache, &second, &["a", "b"]), Some(Scalar::Int(2)));
    assert_eq!(
        cache.with(&second, |v| v.map(|o| o["a"]["b"].clone())),
        Some(Value::from(2))
    );
}

#[test]
fn a_message_that_is_not_one_object_has_no_fields() {
    for m in [
        &b"[1]"[..],
        b"7",
        b"not json",
        b"",
        b"\"s\"",
        b"{\"a\":1} {}",
        b"{\"a\":1",
        b"{\"a\":tru}",
        b"{\"a\":\"\xff\"}",
    ] {
        let cache = PayloadCache::default();
        let m = Bytes::copy_from_slice(m);
        assert!(cache.with(&m, |v| v.is_none()), "{m:?}");
        assert_eq!(field(&cache, &m, &["a"]), None, "{m:?}");
    }
}

#[test]
fn scalars_are_read_in_place_and_agree_with_serde_json() {
    let text = r#" { "i": -12, "f": 2.5e3, "big": 18446744073709551615, "s": "plain",
        "e": "tab\there \u00e9", "t": true, "n": null, "l": [1], "o": {"k-1": {"x": "deep"}},
        "k\"q": 7, "dup": 1, "dup": 2 } "#;
    let m = Bytes::from(text);
    let cache = PayloadCache::default();
    let get = |p: &[&str]| cache.field(&m, p);
    assert_eq!(get(&["i"]), Some(Scalar::Int(-12)));
    assert_eq!(get(&["f"]), Some(Scalar::Float(2500.0)));
    assert_eq!(
        get(&["big"]),
        Some(Scalar::Float(18_446_744_073_709_551_615.0))
    );
    assert_eq!(get(&["s"]), Some(Scalar::Str(Cow::Borrowed("plain"))));
    assert!(matches!(get(&["s"]), Some(Scalar::Str(Cow::Borrowed(_)))));
    assert_eq!(get(&["e"]), Some(Scalar::Str("tab\there é".into())));
    assert_eq!(get(&["t"]), Some(Scalar::Bool(true)));
    assert_eq!(get(&["n"]), Some(Scalar::Other));
    assert_eq!(get(&["l"]), Some(Scalar::Other));
    assert_eq!(get(&["o"]), Some(Scalar::Other));
    assert_eq!(get(&["o", "k-1", "x"]), Some(Scalar::Str("deep".into())));
    assert_eq!(get(&["k\"q"]), Some(Scalar::Int(7)));
    // The last of a key given twice, as serde_json::Value keeps it.
    assert_eq!(get(&["dup"]), Some(Scalar::Int(2)));
    assert_eq!(
        cache.with(&m, |v| v.map(|o| o["dup"].clone())),
        Some(Value::from(2))
    );
    assert_eq!(get(&["missing"]), None);
    assert_eq!(get(&["i", "x"]), None);
    assert_eq!(get(&[]), None);
}

#[test]
fn lookup_stops_at_what_is_not_an_object() {
    let v: Value = serde_json::from_str(r#"{"a":[1],"k-1":{"x":true}}"#).expect("json");
    assert_eq!(lookup(&v, &["k-1", "x"]), Some(&Value::Bool(true)));
    assert_eq!(lookup(&v, &["a", "0"]), None);
    assert_eq!(lookup(&v, &["missing"]), None);
}

#[test]
fn value_once_shares_a_kept_parse_and_keeps_none_of_its_own() {
    let m = Bytes::from_static(br#"{"a":1}"#);
    let cache = PayloadCache::default();
    let once = cache.value_once(&m).expect("an object");
    assert_eq!(once["a"], Value::from(1));
    assert!(!cache.is_parsed());
    // Not an object: none, as `value` says.
    assert!(cache.value_once(&Bytes::from_static(b"[1]")).is_none());
    // Once a parse is kept, it is the same value, not another parse.
    let kept = cache.value(&m).expect("an object");
    let again = cache.value_once(&m).expect("an object");
    assert!(Arc::ptr_eq(&kept, &again));
    // Other bytes: parsed again, never the stale value.
    let other = Bytes::from_static(br#"{"a":2}"#);
    assert_eq!(
        cache.value_once(&other).expect("an object")["a"],
        Value::from(2)
    );
}
