//! The line framing, `framing::LineReader`, fed a stream in reads of arbitrary sizes.
//!
//! The stream is described as runs of bytes, so that lines around and past the 64 KiB bulk
//! size are cheap to express. Checks after every read that the buffer never exceeds
//! `max_buffer(max_line)` and that no line returned is longer than `max_line`, and at the end
//! that the events are exactly what a plain model of the framing rules gives, whatever the
//! read sizes were (`mist::framing::oracle`, shared with the property tests).

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mist::framing::oracle::{model, run};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Picks the line limit: a small one, or one around the bulk size.
    limit: u16,
    big: bool,
    /// The stream as (byte, run length) pairs.
    runs: Vec<(u8, u16)>,
    /// Sizes of successive reads, cycled.
    reads: Vec<u16>,
}

/// The stream's size is capped so that each run stays fast: long enough for a few lines past
/// the bulk size.
const MAX_STREAM: usize = 256 * 1024;

fuzz_target!(|input: Input| {
    let max_line = if input.big {
        65_000 + usize::from(input.limit) % 6_000
    } else {
        1 + usize::from(input.limit) % 64
    };
    let mut data = Vec::new();
    for &(sel, len) in &input.runs {
        // Line breaks and `\r` must be common, but long runs of them are just many empty
        // lines: only line bytes come in long runs.
        let (byte, len) = match sel % 4 {
            0 => (b'\n', 1 + usize::from(len) % 3),
            1 => (b'\r', 1 + usize::from(len) % 3),
            2 if input.big => (b'a', 1 + usize::from(len)),
            2 => (b'a', 1 + usize::from(len) % 32),
            _ => (sel, 1 + usize::from(len) % 32),
        };
        if data.len() + len > MAX_STREAM {
            break;
        }
        data.extend(std::iter::repeat_n(byte, len));
    }
    // Around the bulk size, reads of at least 64 bytes keep a run to a few thousand reads;
    // the small limits get reads of any size from one byte up.
    let least = if input.big { 64 } else { 1 };
    let reads: Vec<usize> = if input.reads.is_empty() {
        vec![4096]
    } else {
        input
            .reads
            .iter()
            .map(|&r| least + usize::from(r))
            .collect()
    };
    assert_eq!(run(&data, &reads, max_line), model(&data, max_line));
});
