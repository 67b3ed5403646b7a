//! Fuzzes the record decoder and the segment scanner: no panic, and no
//! allocation or read driven by a corrupt length (the decoder only slices
//! its input, and reports `need` bounded by the format ceiling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::spool::codec::{Decoded, FrameFormat, MAX_BODY_LEN};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the format; format 2 under a fixed test key.
    let Some((&pick, data)) = data.split_first() else { return };
    let format = if pick & 1 == 0 {
        FrameFormat::Crc32c
    } else {
        FrameFormat::Keyed(*b"fuzz-frame-key!!")
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
});
