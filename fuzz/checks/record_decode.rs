//! The properties fuzzed by the `record_decode` target, as a plain
//! function so that the libFuzzer target (fuzz_targets/record_decode.rs)
//! and the stable-toolchain fallback (tests/fuzz_fallback.rs) drive the
//! same code: no panic, and no allocation or read driven by a corrupt
//! length (the decoder only slices its input, and reports `need` bounded by
//! the format ceiling).

use sluice::spool::codec::{Decoded, FrameFormat, MAX_BODY_LEN};

/// The key format-2 frames are checked under (a fixed test key).
pub const KEY: [u8; 16] = *b"fuzz-frame-key!!";

/// The first byte picks the format (even: format 1, CRC32C; odd: format 2,
/// keyed under [`KEY`]); the rest is the segment bytes.
pub fn check(data: &[u8]) {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let format = if pick & 1 == 0 {
        FrameFormat::Crc32c
    } else {
        FrameFormat::Keyed(KEY)
    };
    match format.decode(data) {
        Decoded::Record(r, used) => {
            assert!(used <= data.len());
            assert_eq!(r.frame_len(format), used);
            // Re-encoding a decoded frame gives the same bytes.
            let mut again = Vec::new();
            format.encode(&mut again, r.partition, r.offset, r.timestamp_ms, r.flags, r.payload);
            assert_eq!(&again[..], &data[..used]);
        }
        Decoded::Incomplete { need } => {
            assert!(need > data.len());
            assert!(need <= format.prefix_len() + MAX_BODY_LEN as usize);
        }
        Decoded::Invalid(_) => {}
    }
    let mut last_end = 0;
    let scan = format.scan(data, |pos, r, _skipped| {
        if r.partition >= 16 {
            return false;
        }
        assert!(pos >= last_end);
        last_end = pos + r.frame_len(format);
        assert!(last_end <= data.len());
        true
    });
    assert!(scan.valid_end <= data.len());
    assert_eq!(scan.valid_end, last_end);
}
