mod common;
mod reliability;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use sluice::spool::codec;
use sluice::spool::{FsyncMode, FullCause, NoopObserver, RecoveredKind, Spool, SpoolError, SpoolOptions};

async fn fill(s: &Spool, partitions: u32, n: u64, len: usize) {
    for i in 0..n {
        for p in 0..partitions {
            assert_eq!(s.append(p, payload(p, i, len)).await.unwrap(), i);
        }
    }
}

async fn read_all(s: &Spool, p: u32) -> Vec<(u64, Bytes)> {
    let mut r = s.reader(p);
    r.seek(0);
    let mut out = Vec::new();
    while r.position() < s.next_offset(p) {
        let b = tokio::time::timeout(Duration::from_secs(5), r.next_batch(64, 1 << 20))
            .await
            .expect("reader stalled")
            .unwrap();
        out.extend(b.into_iter().map(|r| (r.offset, r.payload)));
    }
    out
}

/// Outcome of a fixture that appended `acknowledged` records, read back
/// `delivered` intact and found `dead` dead-lettered (destroyed by the test).
fn outcome(acknowledged: u64, delivered: u64, dead: u64) -> reliability::Outcome {
    reliability::Outcome {
        acknowledged,
        delivered,
        dead_lettered: dead,
        lost: acknowledged - delivered - dead,
        raw: format!("acknowledged={acknowledged} delivered={delivered} dead={dead}"),
        ..Default::default()
    }
}

async fn tail_fixture(row: &str, garbage: &[u8]) {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
    fill(&s, 2, 30, 60).await;
    s.close().await.unwrap();
    drop(s);
    let seg = segs(d.path()).pop().unwrap();
    let good_len = seg.metadata().unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(garbage)
        .unwrap();

    let obs = Arc::new(TestObserver::default());
    let s = Spool::open(o.clone(), obs.clone()).await.unwrap();
    assert_eq!(seg.metadata().unwrap().len(), good_len, "tail truncated");
    assert_eq!(obs.total(RecoveredKind::TruncatedBytes), garbage.len() as u64);
    for p in 0..2 {
        assert_eq!(s.next_offset(p), 30);
        let all = read_all(&s, p).await;
        assert_eq!(all.len(), 30);
        for (i, (off, pl)) in all.iter().enumerate() {
            assert_eq!((*off, pl), (i as u64, &payload(p, i as u64, 60)));
        }
    }
    assert_eq!(s.append(0, Bytes::from_static(b"after")).await.unwrap(), 30);
    assert_eq!(
        s.read_at(0, 30).await.unwrap().unwrap().payload,
        Bytes::from_static(b"after")
    );
    // Every record before the torn or zeroed tail, and the one after.
    reliability::report(row, outcome(61, 61, 0));
}

#[tokio::test]
async fn torn_tail_is_truncated() {
    let mut f = Vec::new();
    codec::FrameFormat::Keyed([9; 16]).encode(&mut f, 0, 30, 0, 0, &[7u8; 200]);
    f.truncate(f.len() - 57);
    tail_fixture("fs-torn-tail", &f).await;
}

#[tokio::test]
async fn zero_filled_tail_is_truncated() {
    tail_fixture("fs-zero-filled-tail", &[0u8; 3000]).await;
}

async fn corrupt_middle(row: Option<&str>, which: u64, active: bool) {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    if active {
        o.segment_bytes = 1 << 20;
    }
    let s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
    fill(&s, 2, 40, 80).await;
    s.close().await.unwrap();
    drop(s);
    let at = frame_at(d.path(), 0, which);
    let seg = at.segment.clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(at.pos + at.header_len) as usize + 5] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();

    let obs = Arc::new(TestObserver::default());
    let s = Spool::open(o.clone(), obs.clone()).await.unwrap();
    // Starting is not refused and nothing valid is truncated.
    assert_eq!(std::fs::read(&seg).unwrap().len(), bytes.len());
    assert_eq!(s.next_offset(0), 40);
    let mut r = s.reader(0);
    let mut got = Vec::new();
    while got.len() < 39 {
        let b = tokio::time::timeout(Duration::from_secs(5), r.next_batch(16, 1 << 20))
            .await
            .expect("reader stalled")
            .unwrap();
        got.extend(b.into_iter().map(|r| r.offset));
    }
    let want: Vec<u64> = (0..40).filter(|o| *o != which).collect();
    assert_eq!(got, want);
    assert_eq!(obs.total(RecoveredKind::CorruptRecords), 1);
    let dl = s.dlq_list(0, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (dl[0].partition, dl[0].offset, dl[0].reason.as_str()),
        (0, which, "corrupt")
    );
    // The corrupt offset was acked for us: acking the rest commits all.
    for off in want {
        s.ack(0, off).unwrap();
    }
    assert_eq!(s.committed(0), 40);
    // The other partition is untouched.
    assert_eq!(read_all(&s, 1).await.len(), 40);
    // The damaged record's dead letter keeps the bytes it has.
    assert!(!dl[0].payload.is_empty());
    if let Some(row) = row {
        reliability::report(row, outcome(80, 79, 1));
    }
}

#[tokio::test]
async fn corrupt_record_in_sealed_segment_is_skipped_and_dead_lettered() {
    corrupt_middle(Some("fs-bitflip-sealed"), 17, false).await;
}

#[tokio::test]
async fn corrupt_record_in_active_segment_is_skipped_and_dead_lettered() {
    corrupt_middle(Some("fs-bitflip-active"), 17, true).await;
}

#[tokio::test]
async fn corrupt_first_record_is_skipped() {
    corrupt_middle(None, 0, false).await;
}

#[tokio::test]
async fn opening_a_large_backlog_reads_only_the_tail() {
    let d = tempfile::tempdir().unwrap();
    let mut o = SpoolOptions::new(d.path());
    o.partitions = 4;
    o.segment_bytes = 256 << 10;
    o.max_record = 4096;
    o.fsync = FsyncMode::Never;
    let s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    for i in 0..24_000u32 {
        s.append(i % 4, body.clone()).await.unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    let total: u64 = segs(d.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(total > 24 << 20);
    let (mut fo, faults) = fault_opts(d.path());
    fo.partitions = 4;
    fo.segment_bytes = o.segment_bytes;
    fo.max_record = o.max_record;
    let s = Spool::open(fo, Arc::new(NoopObserver)).await.unwrap();
    let read = faults.bytes_read.load(Ordering::Relaxed);
    assert!(read < 2 * o.segment_bytes, "open read {read} of {total} bytes");
    assert_eq!(s.next_offset(3), 6000);
    assert_eq!(s.status().backlog_records(), 24_000);
}

#[tokio::test]
async fn enospc_fails_the_batch_cuts_the_file_and_the_spool_stays_usable() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 2;
    let s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
    fill(&s, 2, 5, 100).await;
    let seg = segs(d.path()).pop().unwrap();
    let len = seg.metadata().unwrap().len();
    faults.enospc.store(true, Ordering::Relaxed);
    let e = s.append(0, payload(0, 5, 100)).await.unwrap_err();
    assert!(
        matches!(
            e,
            SpoolError::Full {
                cause: FullCause::NoSpace,
                partition: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(seg.metadata().unwrap().len(), len, "cut back to the last good record");
    faults.enospc.store(false, Ordering::Relaxed);
    // The failed record never existed; its offset is given to the next.
    assert_eq!(s.append(0, payload(0, 5, 100)).await.unwrap(), 5);
    s.close().await.unwrap();
    drop(s);
    let s = Spool::open(o, Arc::new(NoopObserver)).await.unwrap();
    let all = read_all(&s, 0).await;
    assert_eq!(all.len(), 6);
    assert_eq!(all[5].1, payload(0, 5, 100));
    // Partition 0's appends that returned Ok: five before, one after.
    reliability::report("fs-short-write", outcome(6, all.len() as u64, 0));
}

#[tokio::test]
async fn fsync_error_refuses_appends_then_reopens() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 2;
    let s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
    fill(&s, 1, 5, 100).await;
    faults.fail_fsync.store(true, Ordering::Relaxed);
    let e = s.append(0, payload(0, 5, 100)).await.unwrap_err();
    assert!(matches!(e, SpoolError::Failed { .. }), "{e}");
    assert!(!s.is_available());
    let e = s.append(0, payload(0, 5, 100)).await.unwrap_err();
    assert!(matches!(e, SpoolError::Unavailable), "{e}");
    assert!(!s.status().available);
    faults.fail_fsync.store(false, Ordering::Relaxed);
    eventually("spool reopened", || s.is_available()).await;
    assert_eq!(s.append(0, payload(0, 5, 100)).await.unwrap(), 5);
    let all = read_all(&s, 0).await;
    assert_eq!(all.len(), 6);
    for (i, (off, pl)) in all.iter().enumerate() {
        assert_eq!((*off, pl), (i as u64, &payload(0, i as u64, 100)));
    }
    reliability::report("fs-eio-fsync", outcome(6, all.len() as u64, 0));
}
