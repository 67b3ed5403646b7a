use sluice::spool::codec::{self, Decoded, FrameFormat, Invalid, MAX_BODY_LEN};

const KEYED: FrameFormat = FrameFormat::Keyed(*b"0123456789abcdef");
const BOTH: [FrameFormat; 2] = [FrameFormat::Crc32c, KEYED];

fn frame(format: FrameFormat, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    format.encode(&mut v, 3, 42, 1_700_000_000_123, 7, payload);
    v
}

#[test]
fn round_trip() {
    for format in BOTH {
        for len in [0usize, 1, 100, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = frame(format, &payload);
            assert_eq!(f.len(), format.frame_len(len));
            match format.decode(&f) {
                Decoded::Record(r, used) => {
                    assert_eq!(used, f.len());
                    assert_eq!(
                        (r.partition, r.offset, r.timestamp_ms, r.flags),
                        (3, 42, 1_700_000_000_123, 7)
                    );
                    assert_eq!(r.payload, &payload[..]);
                }
                other => panic!("{format:?}: {other:?}"),
            }
        }
    }
    assert_eq!(codec::frame_len(10), KEYED.frame_len(10), "new records are format 2");
}

#[test]
fn every_truncation_point_is_incomplete_never_a_record() {
    for format in BOTH {
        let f = frame(format, b"hello world, this is a record");
        for cut in 0..f.len() {
            match format.decode(&f[..cut]) {
                Decoded::Incomplete { need } => assert!(need == f.len() || need == format.header_len()),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    for format in BOTH {
        let f = frame(format, b"payload bytes to protect");
        for bit in 0..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            match format.decode(&g) {
                Decoded::Record(..) => panic!("{format:?}: flip of bit {bit} not detected"),
                Decoded::Invalid(_) | Decoded::Incomplete { .. } => {}
            }
        }
    }
}

#[test]
fn a_keyed_frame_does_not_verify_under_another_key_or_as_crc() {
    let f = frame(KEYED, b"made by the spool");
    assert!(matches!(
        FrameFormat::Keyed(*b"fedcba9876543210").decode(&f),
        Decoded::Invalid(Invalid::Checksum)
    ));
    // A frame a client could compute (CRC32C, format 1) is not a keyed
    // frame: a body carrying one is just bytes to a format-2 reader.
    let forged = frame(FrameFormat::Crc32c, b"made by a client");
    let mut padded = forged.clone();
    padded.resize(KEYED.frame_len(0).max(forged.len()), 0);
    assert!(!matches!(KEYED.decode(&padded), Decoded::Record(..)));
    assert_eq!(format!("{KEYED:?}"), "Keyed(..)", "the key never reaches a log");
}

#[test]
fn zero_fill_and_huge_length_are_invalid_without_allocating() {
    for format in BOTH {
        assert_eq!(format.decode(&[0u8; 64]), Decoded::Invalid(Invalid::BadLength(0)));
        let mut f = frame(format, b"x");
        f[..4].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
        assert_eq!(
            format.decode(&f),
            Decoded::Invalid(Invalid::BadLength(MAX_BODY_LEN + 1))
        );
    }
}

#[test]
fn scan_skips_middle_corruption_and_stops_at_torn_tail() {
    for format in BOTH {
        let mut buf = Vec::new();
        for i in 0..5u64 {
            format.encode(&mut buf, 0, i, 0, 0, &[i as u8; 40]);
        }
        let flen = format.frame_len(40);
        // Corrupt record 2's payload; tear record 4 in half.
        buf[2 * flen + format.header_len() + 3] ^= 0xff;
        buf.truncate(4 * flen + flen / 2);
        let mut seen = Vec::new();
        let s = format.scan(&buf, |_, r, _| {
            seen.push(r.offset);
            r.partition == 0
        });
        assert_eq!(seen, vec![0, 1, 3]);
        assert_eq!(s.valid_end, 4 * flen);
        assert_eq!(s.corrupt_regions, 1);
        // Zero-filled tail.
        let mut z = buf[..2 * flen].to_vec();
        z.extend_from_slice(&[0u8; 500]);
        let s = format.scan(&z, |_, _, _| true);
        assert_eq!((s.records, s.valid_end), (2, 2 * flen));
    }
}

#[test]
fn after_a_resync_only_offsets_the_garbage_could_hide_are_taken() {
    let f = FrameFormat::Crc32c;
    // Records 0 and 1, 200 bytes of garbage, then a frame claiming 9000:
    // 200 bytes hide at most 200 / 29 = 6 records, so 9000 is not ours.
    let mut buf = Vec::new();
    f.encode(&mut buf, 0, 0, 0, 0, b"a");
    f.encode(&mut buf, 0, 1, 0, 0, b"b");
    buf.extend_from_slice(&[0xAB; 200]);
    let forged_at = buf.len();
    f.encode(&mut buf, 0, 9000, 0, 0, b"forged");
    let mut expected = 0u64;
    let mut taken = Vec::new();
    f.scan(&buf, |_, r, skipped| {
        if skipped > 0 && !codec::offset_window(f, expected, skipped).contains(&r.offset) {
            return false;
        }
        expected = r.offset + 1;
        taken.push(r.offset);
        true
    });
    assert_eq!(taken, vec![0, 1], "the frame at {forged_at} was refused");
    assert_eq!(codec::offset_window(f, 2, 200), 2..=8);
    assert_eq!(codec::offset_window(KEYED, 2, 200), 2..=6);
}

mod fuzzish {
    use proptest::prelude::*;
    use sluice::spool::codec::{Decoded, FrameFormat, MAX_BODY_LEN};

    fn check(format: FrameFormat, data: &[u8]) {
        match format.decode(data) {
            Decoded::Record(r, used) => assert_eq!(r.frame_len(format), used),
            Decoded::Incomplete { need } => {
                assert!(need > data.len() && need <= format.prefix_len() + MAX_BODY_LEN as usize)
            }
            Decoded::Invalid(_) => {}
        }
        let s = format.scan(data, |_, _, _| true);
        assert!(s.valid_end <= data.len());
    }

    proptest! {
        // The same properties as fuzz/fuzz_targets/record_decode.rs, run in
        // CI without cargo-fuzz.
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300), keyed in any::<bool>()) {
            let format = if keyed { super::KEYED } else { FrameFormat::Crc32c };
            check(format, &data);
        }

        #[test]
        fn mutated_frames_never_panic(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..6),
                                      flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                                      cut in any::<usize>(), keyed in any::<bool>()) {
            let format = if keyed { super::KEYED } else { FrameFormat::Crc32c };
            let mut buf = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                format.encode(&mut buf, 0, i as u64, 0, 0, p);
            }
            for (at, x) in flips {
                let n = buf.len();
                buf[at % n] ^= x;
            }
            let n = buf.len();
            buf.truncate(cut % (n + 1));
            check(format, &buf);
        }
    }
}
