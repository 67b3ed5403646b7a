use sluice::spool::codec::{self, Decoded, Invalid, HEADER_LEN, MAX_BODY_LEN};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    codec::encode(&mut v, 3, 42, 1_700_000_000_123, 7, payload);
    v
}

#[test]
fn round_trip() {
    for len in [0usize, 1, 100, 4096] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let f = frame(&payload);
        assert_eq!(f.len(), codec::frame_len(len));
        match codec::decode(&f) {
            Decoded::Record(r, used) => {
                assert_eq!(used, f.len());
                assert_eq!(
                    (r.partition, r.offset, r.timestamp_ms, r.flags),
                    (3, 42, 1_700_000_000_123, 7)
                );
                assert_eq!(r.payload, &payload[..]);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn every_truncation_point_is_incomplete_never_a_record() {
    let f = frame(b"hello world, this is a record");
    for cut in 0..f.len() {
        match codec::decode(&f[..cut]) {
            Decoded::Incomplete { need } => assert!(need == f.len() || need == HEADER_LEN),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let f = frame(b"payload bytes to protect");
    for bit in 0..f.len() * 8 {
        let mut g = f.clone();
        g[bit / 8] ^= 1 << (bit % 8);
        match codec::decode(&g) {
            Decoded::Record(..) => panic!("flip of bit {bit} not detected"),
            Decoded::Invalid(_) | Decoded::Incomplete { .. } => {}
        }
    }
}

#[test]
fn zero_fill_and_huge_length_are_invalid_without_allocating() {
    assert_eq!(codec::decode(&[0u8; 64]), Decoded::Invalid(Invalid::BadLength(0)));
    let mut f = frame(b"x");
    f[..4].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
    assert_eq!(
        codec::decode(&f),
        Decoded::Invalid(Invalid::BadLength(MAX_BODY_LEN + 1))
    );
}

#[test]
fn scan_skips_middle_corruption_and_stops_at_torn_tail() {
    let mut buf = Vec::new();
    for i in 0..5u64 {
        codec::encode(&mut buf, 0, i, 0, 0, &[i as u8; 40]);
    }
    let flen = codec::frame_len(40);
    // Corrupt record 2's payload; tear record 4 in half.
    buf[2 * flen + HEADER_LEN + 3] ^= 0xff;
    buf.truncate(4 * flen + flen / 2);
    let mut seen = Vec::new();
    let s = codec::scan(&buf, |r| r.partition == 0, |_, r| seen.push(r.offset));
    assert_eq!(seen, vec![0, 1, 3]);
    assert_eq!(s.valid_end, 4 * flen);
    assert_eq!(s.corrupt_regions, 1);
    // Zero-filled tail.
    let mut z = buf[..2 * flen].to_vec();
    z.extend_from_slice(&[0u8; 500]);
    let s = codec::scan(&z, |_| true, |_, _| {});
    assert_eq!((s.records, s.valid_end), (2, 2 * flen));
}

mod fuzzish {
    use proptest::prelude::*;
    use sluice::spool::codec::{self, Decoded, MAX_BODY_LEN, PREFIX_LEN};

    fn check(data: &[u8]) {
        match codec::decode(data) {
            Decoded::Record(r, used) => assert_eq!(r.frame_len(), used),
            Decoded::Incomplete { need } => {
                assert!(need > data.len() && need <= PREFIX_LEN + MAX_BODY_LEN as usize)
            }
            Decoded::Invalid(_) => {}
        }
        let s = codec::scan(data, |_| true, |_, _| {});
        assert!(s.valid_end <= data.len());
    }

    proptest! {
        // The same properties as fuzz/fuzz_targets/record_decode.rs, run in
        // CI without cargo-fuzz.
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
            check(&data);
        }

        #[test]
        fn mutated_frames_never_panic(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..6),
                                      flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                                      cut in any::<usize>()) {
            let mut buf = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                codec::encode(&mut buf, 0, i as u64, 0, 0, p);
            }
            for (at, x) in flips {
                let n = buf.len();
                buf[at % n] ^= x;
            }
            let n = buf.len();
            buf.truncate(cut % (n + 1));
            check(&buf);
        }
    }
}
