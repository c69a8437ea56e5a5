//! Length-delimited protobuf events over tcp and unix: the frame splitter
//! and the protobuf event decoder. The framer must give the same frames
//! whatever the chunk boundaries are.
#![no_main]

use dab_connectors::codec::proto;
use dab_connectors::framing::DelimitedFramer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let frames = |chunks: &[&[u8]]| {
        let mut framer = DelimitedFramer::new(4096);
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
    assert_eq!(whole, frames(&[a, b]), "chunk boundary at {at} changed the frames");
    for frame in whole.into_iter().flatten() {
        let _ = proto::decode(frame);
    }
});
