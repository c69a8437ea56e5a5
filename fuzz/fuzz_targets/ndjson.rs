//! NDJSON over tcp, unix, stdin and files: the line framer and the JSON
//! event decoder. Besides never panicking, the framer must give the same
//! lines whatever the chunk boundaries are (its documented promise).
#![no_main]

use dab_connectors::codec::json;
use dab_connectors::framing::LineFramer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let frames = |chunks: &[&[u8]]| {
        let mut framer = LineFramer::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            framer.push(c, &mut out);
        }
        framer.finish(&mut out);
        out
    };
    let whole = frames(&[stream]);
    let at = usize::from(cut) % (stream.len() + 1);
    let (a, b) = stream.split_at(at);
    assert_eq!(whole, frames(&[a, b]), "chunk boundary at {at} changed the lines");
    for line in whole.into_iter().flatten() {
        let _ = json::decode(line);
    }
});
