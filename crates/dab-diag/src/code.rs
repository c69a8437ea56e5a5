//! The stable diagnostic codes of SPEC section 3. Codes are interface: users
//! grep for them, so a code never changes meaning once published.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

macro_rules! codes {
    ($($name:ident => $doc:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $(#[doc = $doc] $name,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$name => stringify!($name),)* }
            }

            /// One-line summary, as in the SPEC's table.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$name => $doc,)* }
            }
        }
    };
}

codes! {
    E001 => "syntax error",
    E002 => "pipeline has no `In`, or `In` is not the first op",
    E003 => "more than one `In`",
    E004 => "pipeline has no `Out`",
    E005 => "a stage after `Out`",
    E006 => "unknown operator",
    E007 => "wrong number of arguments",
    E008 => "wrong argument type, unknown named argument, unknown field in an expression",
    E009 => "argument out of range",
    E010 => "unknown name",
    E011 => "bound queue read but never written",
    E012 => "cycle through queues",
    E013 => "duplicate pipeline id",
    E014 => "unknown event type",
    E015 => "invalid bindings file",
    E016 => "name used in the wrong direction",
    E017 => "two bindings share a listen address or socket path",
    E018 => "a file the bindings name cannot be read or is not what it should be",
    E019 => "a reload would switch a queue between memory, Kafka and disk, or change a disk queue's settings",
    E020 => "a new version of a type adds a required field",
    E021 => "a new version of a type removes a required field",
    E022 => "a new version of a type changes a field's type other than by widening",
    E023 => "a new version of a type reuses a removed field's name with another type",
    E024 => "a new version of a type makes a field optional or required",
    E025 => "a type's schema does not match the schema registry",
    E026 => "`Window` not followed directly by `Aggregate`, or `Aggregate` without a `Window` before it",
    E027 => "a reload would rebuild or remove a pipeline that has a window",
    W001 => "bound queue written but never read",
    W002 => "operator with no effect",
    W003 => "binding never used",
    W004 => "memory queue links services that run as separate processes",
}

impl Code {
    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }

    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
