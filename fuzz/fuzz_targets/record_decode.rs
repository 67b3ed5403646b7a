//! Fuzzes the record decoder and the segment scanner: no panic, and no
//! allocation or read driven by a corrupt length (the decoder only slices
//! its input, and reports `need` bounded by the format ceiling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::spool::codec::{self, Decoded, MAX_BODY_LEN, PREFIX_LEN};

fuzz_target!(|data: &[u8]| {
    match codec::decode(data) {
        Decoded::Record(r, used) => {
            assert!(used <= data.len());
            assert_eq!(r.frame_len(), used);
            // Re-encoding a decoded frame gives the same bytes.
            let mut again = Vec::new();
            codec::encode(&mut again, r.partition, r.offset, r.timestamp_ms, r.flags, r.payload);
            assert_eq!(&again[..], &data[..used]);
        }
        Decoded::Incomplete { need } => {
            assert!(need > data.len());
            assert!(need <= PREFIX_LEN + MAX_BODY_LEN as usize);
        }
        Decoded::Invalid(_) => {}
    }
    let mut last_end = 0;
    let scan = codec::scan(data, |r| r.partition < 16, |pos, r| {
        assert!(pos >= last_end);
        last_end = pos + r.frame_len();
        assert!(last_end <= data.len());
    });
    assert!(scan.valid_end <= data.len());
    assert_eq!(scan.valid_end, last_end);
});
