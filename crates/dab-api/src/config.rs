//! Connector settings as the bindings file gives them, after interpolation
//! and type checks against `schema.rs`. Span-free, so two loads of the same
//! configuration compare equal (reload diffs).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Vec<ConfigValue>),
    Map(BTreeMap<String, ConfigValue>),
}

/// A binding's fields, with typed getters. The planner already checked the
/// types, so a getter returning `None` means "not set".
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a>(pub &'a BTreeMap<String, ConfigValue>);

impl<'a> Fields<'a> {
    pub fn str(&self, key: &str) -> Option<&'a str> {
        match self.0.get(key) {
            Some(ConfigValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.0.get(key) {
            Some(ConfigValue::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn number(&self, key: &str) -> Option<f64> {
        match self.0.get(key) {
            Some(ConfigValue::Int(v)) => Some(*v as f64),
            Some(ConfigValue::Float(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key) {
            Some(ConfigValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn str_list(&self, key: &str) -> Option<Vec<&'a str>> {
        match self.0.get(key) {
            Some(ConfigValue::List(items)) => Some(
                items
                    .iter()
                    .filter_map(|v| match v {
                        ConfigValue::Str(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect(),
            ),
            Some(ConfigValue::Str(s)) => Some(vec![s.as_str()]),
            _ => None,
        }
    }

    /// A duration field, in milliseconds.
    pub fn millis(&self, key: &str) -> Option<u64> {
        self.int(key).and_then(|v| u64::try_from(v).ok())
    }
}
