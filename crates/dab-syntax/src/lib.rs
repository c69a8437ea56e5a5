//! Blueprint grammar to AST.
