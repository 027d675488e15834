//! The host agent's demo HTTP reader (`[http_demo]`, on the VIP) fed arbitrary
//! bytes in arbitrary chunks: it never panics, never keeps more than
//! `MAX_REQUEST_HEAD` bytes, and however the bytes are split it stops where a
//! reader of the whole stream would (the first blank line within the bound).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pronto::fuzz::{HeadProgress, MAX_REQUEST_HEAD, RequestHead};

fuzz_target!(|input: &[u8]| {
    // First byte: chunk size (as TCP segments or short reads would split it);
    // second: how many times the rest repeats, so short inputs reach the bound.
    let [chunk, reps, rest @ ..] = input else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let len = (rest.len() * (usize::from(*reps) + 1)).min(2 * MAX_REQUEST_HEAD);
    let data: Vec<u8> = rest.iter().copied().cycle().take(len).collect();
    let data = data.as_slice();
    let mut head = RequestHead::new();
    let mut last = HeadProgress::NeedMore;
    for piece in data.chunks(chunk) {
        let p = head.feed(piece);
        assert!(head.bytes().len() <= MAX_REQUEST_HEAD);
        if last != HeadProgress::NeedMore {
            assert_eq!(p, last, "a final answer changed");
        }
        last = p;
    }
    assert_eq!(last, head.progress());

    // The same stream read at once.
    let window = &data[..data.len().min(MAX_REQUEST_HEAD)];
    let end = window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let expected = match end {
        Some(_) => HeadProgress::Complete,
        None if data.len() >= MAX_REQUEST_HEAD => HeadProgress::TooLong,
        None => HeadProgress::NeedMore,
    };
    assert_eq!(head.progress(), expected);
    match end {
        Some(n) => assert_eq!(head.bytes(), &data[..n]),
        None => assert_eq!(head.bytes(), window),
    }
});
