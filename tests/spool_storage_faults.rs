//! Storage faults through the Fs seam and on disk, one per kind of damage
//! the spool must survive without losing an acknowledged record: zeroed
//! pages, a damaged or missing commit file or manifest, ENOSPC at each
//! kind of write, EIO on read and on fsync.
mod common;
mod reliability;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use sluice::spool::{
    frame_locations, FsyncMode, FullCause, NoopObserver, RecoveredKind, Spool, SpoolError, SpoolOptions,
};

async fn open(o: &SpoolOptions) -> Arc<Spool> {
    Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap()
}

/// Every acknowledged append read back (or dead-lettered by the test's
/// own damage), as the reliability table counts it.
fn outcome(acknowledged: u64, delivered: u64, dead: u64, duplicated: u64) -> reliability::Outcome {
    reliability::Outcome {
        acknowledged,
        delivered,
        dead_lettered: dead,
        lost: acknowledged.saturating_sub(delivered + dead),
        duplicated,
        duplicate_bound: (duplicated > 0).then(|| reliability::Bound {
            max: duplicated,
            why: "acked records still on disk".into(),
        }),
        raw: format!("acknowledged={acknowledged} delivered={delivered} dead={dead} duplicated={duplicated}"),
        ..Default::default()
    }
}

/// A spool with `n` records in each of two partitions, closed.
async fn written(o: &SpoolOptions, n: u64) {
    let s = open(o).await;
    for i in 0..n {
        for p in 0..2 {
            s.append(p, payload(p, i, 120)).await.unwrap();
        }
    }
    s.close().await.unwrap();
}

fn two_partitions(dir: &std::path::Path) -> SpoolOptions {
    let mut o = small_opts(dir);
    o.partitions = 2;
    o.segment_bytes = 2048;
    o.max_record = 512;
    o
}

/// Every record of both partitions reads back intact, except `lost`
/// (partition, offset) pairs, which are dead-lettered as corrupt.
async fn all_there_but(s: &Spool, n: u64, lost: &[(u32, u64)]) {
    for p in 0..2 {
        let want: Vec<u64> = (0..n).filter(|o| !lost.contains(&(p, *o))).collect();
        let got = read_n(&mut s.reader(p), want.len()).await;
        assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), want, "partition {p}");
        for r in &got {
            assert_eq!(r.payload, payload(p, r.offset, 120));
        }
    }
    let mut dead: Vec<(u32, u64)> = s
        .dlq_list(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| (d.partition, d.offset))
        .collect();
    dead.sort();
    let mut lost = lost.to_vec();
    lost.sort();
    assert_eq!(dead, lost);
}

#[tokio::test]
async fn a_zeroed_page_in_a_sealed_segment_costs_only_its_records() {
    let d = tempfile::tempdir().unwrap();
    let o = two_partitions(d.path());
    written(&o, 40).await;
    // Zero 150 bytes inside one frame of a sealed segment.
    let frames = frame_locations(d.path()).unwrap();
    let victim = &frames[frames.len() / 3];
    let mut bytes = std::fs::read(&victim.segment).unwrap();
    let at = victim.pos as usize + 10;
    bytes[at..at + 100].fill(0);
    std::fs::write(&victim.segment, bytes).unwrap();
    let s = open(&o).await;
    all_there_but(&s, 40, &[(victim.partition, victim.offset)]).await;
    s.close().await.unwrap();
    reliability::report("fs-zero-filled-sealed", outcome(80, 79, 1, 0));
}

#[tokio::test]
async fn a_corrupt_commit_file_redelivers_and_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let o = two_partitions(d.path());
    let s = open(&o).await;
    for i in 0..30 {
        for p in 0..2 {
            s.append(p, payload(p, i, 120)).await.unwrap();
        }
    }
    for i in 0..10 {
        s.ack(0, i).unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    let commits = d.path().join("log/COMMITS");
    let mut bytes = std::fs::read(&commits).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    std::fs::write(&commits, bytes).unwrap();
    let obs = Arc::new(TestObserver::default());
    let s = Spool::open(o.clone(), obs.clone()).await.unwrap();
    // Start over from the first record on disk: redelivery, not loss, and
    // no record comes back as "corrupt".
    let first0 = frame_locations(d.path())
        .unwrap()
        .iter()
        .find(|f| f.partition == 0)
        .unwrap()
        .offset;
    assert_eq!(s.committed(0), first0);
    assert_eq!(s.next_offset(0), 30, "offsets are never reused");
    let got = read_n(&mut s.reader(0), (30 - first0) as usize).await;
    assert_eq!(got.last().unwrap().offset, 29);
    assert_eq!(obs.total(RecoveredKind::CorruptRecords), 0);
    s.close().await.unwrap();
    // Offsets below first0 were acked and reclaimed (delivered before);
    // first0..10 were acked and come again: redelivery, not loss.
    reliability::report(
        "fs-offsets-corrupt",
        outcome(30, first0 + got.len() as u64, 0, 10 - first0),
    );
}

#[tokio::test]
async fn a_missing_commit_file_redelivers_and_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let o = two_partitions(d.path());
    written(&o, 20).await;
    std::fs::remove_file(d.path().join("log/COMMITS")).unwrap();
    let s = open(&o).await;
    all_there_but(&s, 20, &[]).await;
    s.close().await.unwrap();
    reliability::report("fs-offsets-missing", outcome(40, 40, 0, 0));
}

#[tokio::test]
async fn a_damaged_or_missing_manifest_is_refused_and_nothing_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let o = two_partitions(d.path());
    written(&o, 20).await;
    let manifest = d.path().join("MANIFEST");
    let good = std::fs::read(&manifest).unwrap();
    let before: Vec<_> = frame_locations(d.path()).unwrap();

    let mut bad = good.clone();
    bad[20] ^= 0x01;
    std::fs::write(&manifest, &bad).unwrap();
    let e = Spool::open(o.clone(), Arc::new(NoopObserver))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, SpoolError::CorruptMeta { .. }), "{e}");
    assert!(e.to_string().contains("MANIFEST"), "{e}");

    std::fs::remove_file(&manifest).unwrap();
    let e = Spool::open(o.clone(), Arc::new(NoopObserver))
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("missing"), "{e}");

    // Put back, everything is where it was.
    std::fs::write(&manifest, &good).unwrap();
    assert_eq!(frame_locations(d.path()).unwrap(), before);
    let s = open(&o).await;
    all_there_but(&s, 20, &[]).await;
    s.close().await.unwrap();
    reliability::report("fs-manifest-damaged", outcome(40, 40, 0, 0));
}

/// ENOSPC on each kind of write the spool makes: the append that needed it
/// fails (503 for a client), nothing half-written stays, and once space is
/// back everything acknowledged is there.
#[tokio::test]
async fn enospc_at_every_kind_of_write() {
    // (what fails, the path it is on, operation)
    let cases: [(&str, &'static str, FsOp); 4] = [
        ("segment write", ".seg", FsOp::Write),
        ("segment create", ".seg", FsOp::Create),
        ("index at seal", ".idx", FsOp::Write),
        ("commit file", "COMMITS", FsOp::Write),
    ];
    let (mut total_acked, mut total_delivered) = (0u64, 0u64);
    for (what, path, op) in cases {
        let d = tempfile::tempdir().unwrap();
        let (mut o, faults) = fault_opts(d.path());
        o.partitions = 2;
        o.segment_bytes = 2048;
        o.max_record = 512;
        let s = open(&o).await;
        let mut acked = [0u64; 2];
        for i in 0..10 {
            for p in 0..2 {
                s.append(p, payload(p, i, 120)).await.unwrap();
                acked[p as usize] += 1;
            }
        }
        faults.add(op, path, ENOSPC, 0);
        let mut refused = 0;
        for i in 10..40 {
            for p in 0..2 {
                match s.append(p, payload(p, acked[p as usize], 120)).await {
                    Ok(off) => {
                        assert_eq!(off, acked[p as usize], "{what}");
                        acked[p as usize] += 1;
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                SpoolError::Full {
                                    cause: FullCause::NoSpace,
                                    ..
                                }
                            ),
                            "{what}: {e}"
                        );
                        refused += 1;
                    }
                }
            }
            if op == FsOp::Write && path == "COMMITS" {
                s.ack(0, (i - 10) as u64).unwrap();
                let _ = s.checkpoint().await;
            }
        }
        if path != "COMMITS" {
            assert!(refused > 0, "{what}: the fault was hit");
        }
        faults.clear_rules();
        s.close().await.unwrap();
        drop(s);
        let s = open(&o).await;
        let mut delivered = 0u64;
        for p in 0..2u32 {
            let from = s.committed(p);
            let got = read_n(&mut s.reader(p), (acked[p as usize] - from) as usize).await;
            // Committed ones were acked (taken as delivered) before.
            delivered += from + got.len() as u64;
            for r in &got {
                assert_eq!(r.payload, payload(p, r.offset, 120), "{what}");
            }
            assert_eq!(got.last().unwrap().offset + 1, acked[p as usize], "{what}");
        }
        assert!(s.dlq_list(0, 10).await.unwrap().is_empty(), "{what}");
        s.close().await.unwrap();
        total_acked += acked.iter().sum::<u64>();
        total_delivered += delivered;
    }
    reliability::report("fs-enospc-every-write", outcome(total_acked, total_delivered, 0, 0));
}

#[tokio::test]
async fn eio_on_read_is_an_error_then_the_same_records() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 2;
    o.segment_bytes = 2048;
    o.max_record = 512;
    written(&o, 20).await;
    let s = open(&o).await;
    let mut r = s.reader(1);
    faults.add(FsOp::Read, ".seg", EIO, 1);
    let e = r.next_batch(64, 1 << 20).await.unwrap_err();
    assert!(matches!(e, SpoolError::Io { .. }), "{e}");
    let got = read_n(&mut r, 20).await;
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    s.close().await.unwrap();
    reliability::report("fs-eio-read", outcome(20, got.len() as u64, 0, 0));
}

/// EIO from fdatasync at a segment roll with `fsync = "never"`: the
/// append fails, the spool reopens, and what was acknowledged before is
/// still read back (the page cache held it; the at-risk range is logged).
#[tokio::test]
async fn eio_on_fsync_at_a_roll_with_fsync_never() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 1;
    o.segment_bytes = 2048;
    o.max_record = 512;
    o.fsync = FsyncMode::Never;
    let s = open(&o).await;
    let mut acked = 0u64;
    let mut refused = 0;
    faults.add(FsOp::Sync, ".seg", EIO, 1);
    // Appends refused while the spool reopens are retried once it is
    // available again, as a client would: how many are refused depends on
    // how fast the reopen is, what is acked must not.
    while acked < 40 {
        if s.append(0, payload(0, acked, 120)).await.is_ok() {
            acked += 1;
        } else {
            refused += 1;
            assert!(refused <= 10, "refused again and again after the reopen");
            eventually("available", || s.is_available()).await;
        }
    }
    assert!(faults.rules.lock().unwrap().is_empty(), "the roll's fsync failed once");
    assert!(refused >= 1, "the failed fsync failed an append");
    let got = read_n(&mut s.reader(0), acked as usize).await;
    for r in &got {
        assert_eq!(r.payload, payload(0, r.offset, 120));
    }
    assert!(faults.fsyncs.load(Ordering::Relaxed) > 1, "the reopen fsynced again");
    s.close().await.unwrap();
    reliability::report("fs-eio-fsync-never", outcome(acked, got.len() as u64, 0, 0));
}
