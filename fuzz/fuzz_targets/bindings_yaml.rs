//! The bindings file, `dab.yaml`: YAML with positions, interpolation and
//! every binding check. No variable is set and no file can be read.
#![no_main]

use dab_diag::SourceMap;
use dab_plan::bindings::load_bindings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut map = SourceMap::new();
    let _ = load_bindings(
        &mut map,
        "dab.yaml",
        text,
        &|_| None,
        &|_| Err(std::io::Error::other("the fuzz target reads no files")),
    );
});
