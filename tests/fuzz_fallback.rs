//! The fuzz targets' properties (fuzz/checks/) driven on the stable
//! toolchain, for machines without cargo-fuzz or nightly: inputs built
//! from valid frames and then damaged (bit flips, cut-offs, wrong length
//! fields, zeroed ranges, spliced and random bytes), each run through the
//! same check function the libFuzzer target calls.
//!
//! `cargo test` runs a bounded, seeded batch. `fuzz/run.sh` runs it for a
//! given time (`SLUICE_FUZZ_FALLBACK_SECS=N`, release build) and reads the
//! `fuzz-fallback:` line it prints; a failing input is saved under
//! fuzz/artifacts/TARGET/ and fails the test.

#[path = "../fuzz/checks/record_decode.rs"]
mod record_decode;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice::spool::codec::FrameFormat;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// A fuzz target's check function.
type Check = fn(&[u8]);

/// Targets with a fallback: name and check function.
const TARGETS: &[(&str, Check)] = &[("record_decode", record_decode::check)];

/// One input: a format byte (see fuzz/checks/record_decode.rs: even for
/// format 1, odd for format 2 under its test key), then frames of that
/// format, damaged.
fn input(rng: &mut StdRng) -> Vec<u8> {
    let pick: u8 = rng.gen();
    let format = if pick & 1 == 0 {
        FrameFormat::Crc32c
    } else {
        FrameFormat::Keyed(record_decode::KEY)
    };
    let mut v = vec![pick];
    if rng.gen_ratio(1, 10) {
        let n = rng.gen_range(0..256);
        v.extend((0..n).map(|_| rng.gen::<u8>()));
        return v;
    }
    for _ in 0..rng.gen_range(0..5) {
        let len = if rng.gen_ratio(1, 8) {
            rng.gen_range(0..4096)
        } else {
            rng.gen_range(0..64)
        };
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let partition = if rng.gen_ratio(1, 4) {
            rng.gen()
        } else {
            rng.gen_range(0..20)
        };
        format.encode(
            &mut v,
            partition,
            rng.gen_range(0..1000),
            rng.gen(),
            rng.gen(),
            &payload,
        );
    }
    for _ in 0..rng.gen_range(0..4) {
        if v.is_empty() {
            break;
        }
        let at = rng.gen_range(0..v.len());
        match rng.gen_range(0..7) {
            0 => v[at] ^= 1 << rng.gen_range(0..8),
            1 => v[at] = rng.gen(),
            2 => v.truncate(at),
            3 => {
                // A length field (or any u32) a little off, or wild.
                let at = at.min(v.len().saturating_sub(4));
                let mut old = [0u8; 4];
                for (i, b) in old.iter_mut().enumerate() {
                    *b = v.get(at + i).copied().unwrap_or(0);
                }
                let len = u32::from_le_bytes(old);
                let new = if rng.gen() {
                    len.wrapping_add(rng.gen_range(0..9)).wrapping_sub(4)
                } else {
                    rng.gen()
                };
                for (i, b) in new.to_le_bytes().iter().enumerate() {
                    if let Some(x) = v.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            4 => {
                let end = (at + rng.gen_range(1..512)).min(v.len());
                v[at..end].fill(0);
            }
            5 => {
                let end = (at + rng.gen_range(1..64)).min(v.len());
                let piece = v[at..end].to_vec();
                let to = rng.gen_range(0..=v.len());
                v.splice(to..to, piece);
            }
            _ => {
                let junk: Vec<u8> = (0..rng.gen_range(1..32)).map(|_| rng.gen()).collect();
                v.splice(at..at, junk);
            }
        }
    }
    v
}

/// Runs `check` on generated inputs until `budget` says stop; returns
/// (executions, failing inputs).
fn drive(check: Check, seed: u64, mut more: impl FnMut(u64) -> bool) -> (u64, Vec<Vec<u8>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut runs = 0;
    let mut found = Vec::new();
    while more(runs) {
        let data = input(&mut rng);
        runs += 1;
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            found.push(data);
        }
    }
    (runs, found)
}

fn save(target: &str, found: &[Vec<u8>]) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/artifacts")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    found
        .iter()
        .map(|data| {
            let name = format!("fallback-crash-{:016x}", fxhash(data));
            std::fs::write(dir.join(&name), data).unwrap();
            dir.join(name).display().to_string()
        })
        .collect()
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn fuzz_targets_hold_on_a_seeded_batch() {
    for (name, check) in TARGETS {
        let (runs, found) = drive(*check, 0x5eed, |n| n < 5_000);
        let saved = save(name, &found);
        assert!(
            saved.is_empty(),
            "{name}: {} failing inputs, saved as {saved:?}",
            found.len()
        );
        assert_eq!(runs, 5_000);
    }
}

/// `SLUICE_FUZZ_FALLBACK_SECS=N [SLUICE_FUZZ_TARGET=name]`: run each target
/// (or the one named) for N seconds with a random seed; fuzz/run.sh reads
/// the `fuzz-fallback:` lines.
#[test]
fn fuzz_targets_for_a_given_time() {
    let Some(secs) = std::env::var("SLUICE_FUZZ_FALLBACK_SECS").ok() else {
        return;
    };
    let secs: u64 = secs.parse().expect("SLUICE_FUZZ_FALLBACK_SECS is whole seconds");
    let only = std::env::var("SLUICE_FUZZ_TARGET").ok();
    for (name, check) in TARGETS.iter().filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n)) {
        let seed: u64 = rand::random();
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let (runs, found) = drive(*check, seed, |n| n % 256 != 0 || Instant::now() < end);
        let saved = save(name, &found);
        println!(
            "fuzz-fallback: target={name} seconds={:.0} executions={runs} findings={} seed={seed}",
            start.elapsed().as_secs_f64(),
            found.len()
        );
        assert!(
            saved.is_empty(),
            "{name}: {} failing inputs, saved as {saved:?}",
            found.len()
        );
    }
}
