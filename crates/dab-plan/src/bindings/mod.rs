//! The bindings file (dab.yaml).
