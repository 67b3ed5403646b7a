//! The spool's fault paths (issue 10): each test sets up the fault through
//! the Fs seam or by editing files on disk, and fails on the code before
//! the fix it names.
mod common;
mod reliability;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use sluice::spool::codec::FrameFormat;
use sluice::spool::{
    frame_locations, FsyncMode, FullCause, NoopObserver, PartitionReader, Record, RecoveredKind, Spool, SpoolError,
    SpoolObserver, SpoolOptions,
};

async fn open_with(o: &SpoolOptions, obs: Arc<dyn SpoolObserver>) -> Arc<Spool> {
    Spool::open(o.clone(), obs).await.unwrap()
}

async fn batch(r: &mut PartitionReader, n: usize) -> Result<Vec<Record>, SpoolError> {
    tokio::time::timeout(Duration::from_secs(5), r.next_batch(n, 1 << 20))
        .await
        .expect("reader stalled")
}

/// As the reliability table counts it: appends that returned Ok, read
/// back intact (or acked by the test), dead-lettered by the test's damage.
fn outcome(acknowledged: u64, delivered: u64, dead: u64) -> reliability::Outcome {
    reliability::Outcome {
        acknowledged,
        delivered,
        dead_lettered: dead,
        lost: acknowledged.saturating_sub(delivered + dead),
        raw: format!("acknowledged={acknowledged} delivered={delivered} dead={dead}"),
        ..Default::default()
    }
}

fn offsets(v: &[Record]) -> Vec<u64> {
    v.iter().map(|r| r.offset).collect()
}

/// Defect 1: an error after records were put in a batch (a segment that
/// cannot be opened, a dead letter that cannot be written) must not move
/// the reader past them.
#[tokio::test]
async fn a_read_error_moves_the_reader_nowhere() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    one_partition_small_segments(&mut o);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..40 {
        s.append(0, payload(0, i, 100)).await.unwrap();
    }
    assert!(segs(d.path()).len() > 3);
    let mut r = s.reader(0);
    // The third segment cannot be opened once (EMFILE): the batch that
    // already holds the first two segments' records is refused whole…
    let third = segs(d.path())[2].file_name().unwrap().to_string_lossy().into_owned();
    faults.add(FsOp::OpenRead, Box::leak(third.into_boxed_str()), EMFILE, 1);
    let e = batch(&mut r, 64).await.unwrap_err();
    assert!(matches!(e, SpoolError::Io { .. }), "{e}");
    assert_eq!(r.position(), 0);
    // …and the next read hands out every record from the start.
    let got = read_n(&mut r, 40).await;
    assert_eq!(offsets(&got), (0..40).collect::<Vec<_>>());
    s.close().await.unwrap();
    reliability::report("fs-read-error-position", outcome(40, got.len() as u64, 0));
}

#[tokio::test]
async fn a_failed_dead_letter_of_a_corrupt_record_moves_the_reader_nowhere() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 1;
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..10 {
        s.append(0, payload(0, i, 100)).await.unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    flip_payload_byte(d.path(), 0, 5);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    let mut r = s.reader(0);
    // Moving record 5 to the dead-letter log fails (its device is full).
    faults.add(FsOp::Write, "/dlq/", ENOSPC, 0);
    let e = batch(&mut r, 64).await.unwrap_err();
    assert!(matches!(e, SpoolError::Full { .. } | SpoolError::Io { .. }), "{e}");
    assert_eq!(r.position(), 0, "nothing handed out, nothing skipped");
    faults.clear_rules();
    let got = read_n(&mut r, 9).await;
    assert_eq!(offsets(&got), vec![0, 1, 2, 3, 4, 6, 7, 8, 9]);
    assert_eq!(s.dlq_list(0, 10).await.unwrap().len(), 1);
    s.close().await.unwrap();
}

/// Flips one payload byte of a record in place.
fn flip_payload_byte(dir: &std::path::Path, partition: u32, offset: u64) {
    let f = frame_at(dir, partition, offset);
    let mut bytes = std::fs::read(&f.segment).unwrap();
    bytes[(f.pos + f.header_len) as usize + 3] ^= 0x20;
    std::fs::write(&f.segment, bytes).unwrap();
}

/// Adds `delta` to the length field of a record's frame.
fn bump_length(dir: &std::path::Path, partition: u32, offset: u64, delta: u32) {
    let f = frame_at(dir, partition, offset);
    let mut bytes = std::fs::read(&f.segment).unwrap();
    let at = f.pos as usize;
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + delta;
    bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
    std::fs::write(&f.segment, bytes).unwrap();
}

/// Defect 2: a length field 4 bytes too long in another partition's frame
/// must not cost this partition its intact neighbour; the damaged record
/// is dead-lettered with the bytes it still has.
async fn wrong_length(row: &str, active: bool) {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = 2;
    if active {
        o.segment_bytes = 1 << 20;
    }
    let obs = Arc::new(TestObserver::default());
    let s = open_with(&o, obs.clone()).await;
    for i in 0..30 {
        for p in 0..2 {
            s.append(p, payload(p, i, 90)).await.unwrap();
        }
    }
    s.close().await.unwrap();
    drop(s);
    bump_length(d.path(), 1, 12, 4);
    let s = open_with(&o, obs.clone()).await;
    // Partition 0 loses nothing: its record right after the damaged frame
    // (offset 12 of partition 0 follows offset 12 of partition 1? no:
    // appends alternate 0,1,0,1, so partition 0's offset 13 follows it).
    let got = read_n(&mut s.reader(0), 30).await;
    assert_eq!(offsets(&got), (0..30).collect::<Vec<_>>());
    for r in &got {
        assert_eq!(r.payload, payload(0, r.offset, 90));
    }
    let got = read_n(&mut s.reader(1), 29).await;
    assert_eq!(offsets(&got), (0..30).filter(|o| *o != 12).collect::<Vec<_>>());
    let dead = s.dlq_list(0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].partition, dead[0].offset, dead[0].reason.as_str()),
        (1, 12, "corrupt")
    );
    // The bytes it still had are kept (the frame's payload is intact; only
    // its length field is off).
    assert!(
        dead[0].payload.starts_with(&payload(1, 12, 90)),
        "dead letter keeps the raw bytes: {:?}",
        dead[0].payload
    );
    assert_eq!(obs.total(RecoveredKind::CorruptRecords), 1);
    s.close().await.unwrap();
    reliability::report(row, outcome(60, 59, 1));
}

#[tokio::test]
async fn a_wrong_length_in_a_sealed_segment_loses_no_neighbour() {
    wrong_length("fs-bad-length-sealed", false).await;
}

#[tokio::test]
async fn a_wrong_length_in_the_active_segment_loses_no_neighbour() {
    wrong_length("fs-bad-length-active", true).await;
}

/// Reads the committed offsets a `COMMITS` file holds.
fn persisted_commits(path: &std::path::Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes[12..]).unwrap();
    v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_u64().unwrap())
        .collect()
}

/// Defect 3: acks that land while `COMMITS` is being written must not let
/// retention delete segments that file does not cover.
#[tokio::test]
async fn retention_deletes_only_what_the_commit_on_disk_covers() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    one_partition_small_segments(&mut o);
    o.commit_interval = Duration::from_secs(3600);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..40 {
        s.append(0, payload(0, i, 100)).await.unwrap();
    }
    for i in 0..10 {
        s.ack(0, i).unwrap();
    }
    // While COMMITS (committed = 10) is being renamed into place, the rest
    // is acked: memory says 40, the disk will say 10.
    let acker = s.clone();
    *faults.on_rename.lock().unwrap() = Some(Box::new(move |to| {
        if to.ends_with("log/COMMITS") {
            for i in 10..40 {
                acker.ack(0, i).unwrap();
            }
        }
    }));
    s.checkpoint().await.unwrap();
    faults.on_rename.lock().unwrap().take();
    let on_disk = persisted_commits(&d.path().join("log/COMMITS"))[0];
    assert_eq!(on_disk, 10);
    let present: Vec<u64> = frame_locations(d.path()).unwrap().iter().map(|f| f.offset).collect();
    for off in on_disk..40 {
        assert!(
            present.contains(&off),
            "offset {off} deleted, but COMMITS says {on_disk}"
        );
    }
    s.close().await.unwrap();
    // Acked below the persisted commit, on disk (to be read again) above it.
    reliability::report(
        "fs-retention-persisted",
        outcome(
            40,
            on_disk + (on_disk..40).filter(|o| present.contains(o)).count() as u64,
            0,
        ),
    );
}

/// Defect 3, the load half: a spool whose segments were deleted ahead of
/// its commit file (an older sluice, or a crash) counts the missing
/// offsets before the oldest segment as committed, and dead-letters none.
#[tokio::test]
async fn a_gap_before_the_oldest_segment_counts_as_committed() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = 2;
    o.segment_bytes = 1024;
    o.max_record = 256;
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..30 {
        for p in 0..2 {
            s.append(p, payload(p, i, 100)).await.unwrap();
        }
    }
    s.checkpoint().await.unwrap();
    let old_commits = std::fs::read(d.path().join("log/COMMITS")).unwrap();
    for i in 0..20 {
        for p in 0..2 {
            s.ack(p, i).unwrap();
        }
    }
    s.close().await.unwrap();
    drop(s);
    let first_left = frame_locations(d.path()).unwrap()[0].offset;
    assert!(first_left > 0, "some segments were reclaimed");
    // The crash: the commit file on disk is the old one.
    std::fs::write(d.path().join("log/COMMITS"), old_commits).unwrap();
    let obs = Arc::new(TestObserver::default());
    let s = open_with(&o, obs.clone()).await;
    for p in 0..2 {
        assert!(s.committed(p) >= first_left.min(20));
        let got = read_n(&mut s.reader(p), (30 - s.committed(p)) as usize).await;
        assert_eq!(got.last().unwrap().offset, 29);
    }
    assert_eq!(obs.total(RecoveredKind::CorruptRecords), 0);
    assert!(
        s.dlq_list(0, 10).await.unwrap().is_empty(),
        "no delivered record comes back as corrupt"
    );
    s.close().await.unwrap();
}

/// A gap *inside* a segment still on disk is corruption and is
/// dead-lettered, even when the commit file is missing.
#[tokio::test]
async fn a_gap_inside_a_segment_on_disk_is_dead_lettered() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = 1;
    o.segment_bytes = 1 << 20;
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..10 {
        s.append(0, payload(0, i, 100)).await.unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    flip_payload_byte(d.path(), 0, 0);
    std::fs::remove_file(d.path().join("log/COMMITS")).unwrap();
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    assert_eq!(
        s.committed(0),
        0,
        "offset 0 may be in the corrupt stretch: not assumed done"
    );
    let got = read_n(&mut s.reader(0), 9).await;
    assert_eq!(offsets(&got), (1..10).collect::<Vec<_>>());
    let dead = s.dlq_list(0, 10).await.unwrap();
    assert_eq!((dead.len(), dead[0].offset, dead[0].reason.as_str()), (1, 0, "corrupt"));
    s.close().await.unwrap();
}

/// Defect 4: a client body that carries a well-formed frame must never be
/// read as a record, even when a reader resynchronises inside it.
#[tokio::test]
async fn a_frame_inside_a_body_is_never_a_record() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = 1;
    o.segment_bytes = 1 << 20;
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    s.append(0, payload(0, 0, 100)).await.unwrap();
    // The attacker's body: frames for offset 2 (the next one after this
    // record) in both formats, under a guessed key.
    let mut body = b"innocent prefix ".to_vec();
    FrameFormat::Crc32c.encode(&mut body, 0, 2, 0, 0, b"POST /admin/evil");
    FrameFormat::Keyed([0; 16]).encode(&mut body, 0, 2, 0, 0, b"POST /admin/evil");
    s.append(0, Bytes::from(body)).await.unwrap();
    s.append(0, payload(0, 2, 100)).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    // Damage the header of the record carrying the body: the reader must
    // resync, and does so across the forged frames.
    let f = frame_locations(d.path())
        .unwrap()
        .into_iter()
        .find(|f| f.offset == 1)
        .unwrap();
    let mut bytes = std::fs::read(&f.segment).unwrap();
    bytes[f.pos as usize + 5] ^= 0xff;
    std::fs::write(&f.segment, bytes).unwrap();
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    let got = read_n(&mut s.reader(0), 2).await;
    assert_eq!(offsets(&got), vec![0, 2]);
    assert_eq!(got[1].payload, payload(0, 2, 100), "offset 2 is the real record");
    assert!(got.iter().all(|r| !r.payload.windows(6).any(|w| w == b"/admin")));
    s.close().await.unwrap();
    let mut o = outcome(3, 2, 1);
    o.unexpected = got
        .iter()
        .filter(|r| r.payload.windows(6).any(|w| w == b"/admin"))
        .count() as u64;
    reliability::report("fs-forged-frame", o);
}

/// Writes a format-1 spool by hand: a manifest of format 1 and CRC32C
/// frames in two segments (the first sealed, without its index).
fn write_format1_spool(dir: &std::path::Path) {
    let meta = |magic: &[u8; 8], json: serde_json::Value| {
        let json = serde_json::to_vec(&json).unwrap();
        let mut out = magic.to_vec();
        out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        out.extend_from_slice(&json);
        out
    };
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(
        dir.join("MANIFEST"),
        meta(
            b"SLCMANI1",
            serde_json::json!({"format_version": 1, "partitions": 2, "spool_id": "0123456789abcdef0123456789abcdef",
                               "max_body_len": 64 * 1024 * 1024, "created_ms": 1}),
        ),
    )
    .unwrap();
    for (seg, range) in [(0u64, 0..5u64), (1, 5..8)] {
        let mut buf = Vec::new();
        for i in range {
            for p in 0..2 {
                FrameFormat::Crc32c.encode(&mut buf, p, i, 1_000, 0, &payload(p, i, 60));
            }
        }
        std::fs::write(dir.join(format!("log/{seg:020}.seg")), buf).unwrap();
    }
}

#[tokio::test]
async fn a_format_1_spool_opens_keeps_its_backlog_and_writes_format_2() {
    let d = tempfile::tempdir().unwrap();
    write_format1_spool(d.path());
    let mut o = small_opts(d.path());
    o.partitions = 2;
    o.segment_bytes = 1 << 20;
    let obs = Arc::new(TestObserver::default());
    let s = open_with(&o, obs.clone()).await;
    assert_eq!(s.next_offset(0), 8);
    assert_eq!(s.append(0, payload(0, 8, 60)).await.unwrap(), 8);
    s.close().await.unwrap();
    drop(s);
    let manifest = std::fs::read(d.path().join("MANIFEST")).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest[12..]).unwrap();
    assert_eq!(m["format_version"], 2);
    assert!(m["frame_key"].as_str().is_some_and(|k| k.len() == 32));
    // Reopened as format 2: old and new records read back.
    let s = open_with(&o, obs.clone()).await;
    for p in 0..2 {
        let n = s.next_offset(p) as usize;
        let got = read_n(&mut s.reader(p), n).await;
        assert_eq!(offsets(&got), (0..n as u64).collect::<Vec<_>>());
        for r in &got {
            assert_eq!(r.payload, payload(p, r.offset, 60));
        }
    }
    assert_eq!(obs.total(RecoveredKind::CorruptRecords), 0);
    // The key is never in the status.
    let status = serde_json::to_string(&s.status()).unwrap();
    assert!(!status.contains(m["frame_key"].as_str().unwrap()));
    s.close().await.unwrap();
}

/// Defect 5: with `interval`, a failed fdatasync may have dropped pages
/// of records already answered; they are written again before anything
/// else is accepted.
#[tokio::test]
async fn interval_mode_rewrites_what_a_failed_fsync_may_have_dropped() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 1;
    o.fsync = FsyncMode::Interval(Duration::from_millis(20));
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    faults.drop_unsynced_on_fsync_error.store(true, Ordering::Relaxed);
    faults.add(FsOp::Sync, ".seg", EIO, 1);
    for i in 0..5 {
        s.append(0, payload(0, i, 200)).await.unwrap();
    }
    // The writer's interval fdatasync fails (and the pages are zeroed),
    // then it reopens: the rules are used up, so it can recover.
    eventually("the failing fsync ran", || faults.rules.lock().unwrap().is_empty()).await;
    eventually("spool available again", || s.is_available()).await;
    s.close().await.unwrap();
    drop(s);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    let got = read_n(&mut s.reader(0), 5).await;
    for r in &got {
        assert_eq!(r.payload, payload(0, r.offset, 200));
    }
    assert!(s.dlq_list(0, 10).await.unwrap().is_empty());
    s.close().await.unwrap();
    reliability::report("fs-eio-fsync-interval", outcome(5, got.len() as u64, 0));
}

/// Defect 6: on a device filled to the last block, commits still get
/// written (the reserve is given up), retention frees space, appends go on.
#[tokio::test]
async fn a_full_device_still_commits_and_recovers() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    o.partitions = 1;
    o.segment_bytes = 16 << 10;
    o.max_record = 4096;
    o.max_bytes = 1 << 30; // the quota is not what stops it: the device is
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    *faults.root.lock().unwrap() = Some(d.path().to_owned());
    faults
        .device_bytes
        .store(tree_bytes(d.path()) + 160 * 1024, Ordering::Relaxed);
    let mut n = 0;
    let full = loop {
        match s.append(0, payload(0, n, 1000)).await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10_000);
    };
    assert!(
        matches!(
            full,
            SpoolError::Full {
                cause: FullCause::NoSpace,
                ..
            }
        ),
        "{full}"
    );
    for i in 0..n {
        s.ack(0, i).unwrap();
    }
    s.checkpoint().await.unwrap();
    assert_eq!(persisted_commits(&d.path().join("log/COMMITS"))[0], n);
    s.append(0, payload(0, n, 1000))
        .await
        .expect("space came back without an operator");
    s.close().await.unwrap();
    // n acked (and so committed), one more appended once space came back.
    reliability::report("fs-enospc-commits", outcome(n + 1, n + 1, 0));
}

/// One log's commit error does not stop the other from committing and
/// reclaiming.
#[tokio::test]
async fn a_dlq_commit_error_does_not_block_the_data_log() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    one_partition_small_segments(&mut o);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..20 {
        s.append(0, payload(0, i, 100)).await.unwrap();
    }
    let rec = s.read_at(0, 0).await.unwrap().unwrap();
    s.dead_letter(&rec, "rejected", Some(400)).await.unwrap();
    let before = segs(d.path()).len();
    faults.add(FsOp::Write, "dlq/COMMITS", EIO, 0);
    for i in 0..20 {
        s.ack(0, i).unwrap();
    }
    assert!(s.checkpoint().await.is_err(), "the dlq commit failed and says so");
    assert_eq!(persisted_commits(&d.path().join("log/COMMITS"))[0], 20);
    assert!(segs(d.path()).len() < before, "the data log reclaimed anyway");
    faults.clear_rules();
    s.close().await.unwrap();
    reliability::report("fs-dlq-commit-error", outcome(20, 20, 0));
}

/// The dead-letter log is bounded by bytes and by age; drops are counted.
#[derive(Default)]
struct DropCounter(std::sync::Mutex<Vec<(&'static str, u64)>>);
impl SpoolObserver for DropCounter {
    fn dlq_dropped(&self, reason: &'static str, n: u64) {
        self.0.lock().unwrap().push((reason, n));
    }
}
impl DropCounter {
    fn total(&self, reason: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }
}

#[tokio::test]
async fn the_dead_letter_log_keeps_to_its_size_and_age() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = 1;
    let clock = Arc::new(ManualClock::default());
    clock.0.store(1_000_000, Ordering::Relaxed);
    o.clock = clock.clone();
    o.dlq_max_bytes = Some(10 * 1024);
    o.dlq_retention = Duration::from_secs(60);
    let drops = Arc::new(DropCounter::default());
    let s = open_with(&o, drops.clone()).await;
    for i in 0..40 {
        s.append(0, payload(0, i, 500)).await.unwrap();
        let rec = s.read_at(0, i).await.unwrap().unwrap();
        s.dead_letter(&rec, "rejected", Some(400)).await.unwrap();
    }
    s.checkpoint().await.unwrap();
    assert!(s.status().dlq.bytes <= 10 * 1024, "{:?}", s.status().dlq);
    let kept = s.dlq_list(0, 100).await.unwrap();
    assert!(!kept.is_empty());
    assert_eq!(kept.last().unwrap().offset, 39, "the newest are kept");
    assert_eq!(drops.total("max_bytes"), 40 - kept.len() as u64);
    clock.0.fetch_add(61_000, Ordering::Relaxed);
    s.checkpoint().await.unwrap();
    assert!(s.dlq_list(0, 100).await.unwrap().is_empty());
    assert_eq!(drops.total("retention"), kept.len() as u64);
    s.close().await.unwrap();
    let mut o = outcome(40, 0, 40);
    o.notes.push("oldest dropped past the bounds, counted".into());
    reliability::report("fs-dlq-bounds", o);
}

/// Defect 10: records acked out of order above the committed offset
/// (`ordering = "none"`) are not delivered again after a restart.
#[tokio::test]
async fn acks_above_the_committed_offset_are_not_redelivered_after_restart() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..6 {
        s.append(0, payload(0, i, 50)).await.unwrap();
    }
    for i in [1, 2, 4] {
        s.ack(0, i).unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    let got = read_n(&mut s.reader(0), 3).await;
    assert_eq!(offsets(&got), vec![0, 3, 5]);
    s.close().await.unwrap();
}

/// Defect 10: ENOSPC while creating the next segment is `Full`, so the
/// client gets 503 spool_full, not an internal error.
#[tokio::test]
async fn no_space_for_a_new_segment_is_full() {
    let d = tempfile::tempdir().unwrap();
    let (mut o, faults) = fault_opts(d.path());
    one_partition_small_segments(&mut o);
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    faults.add(FsOp::Create, ".seg", ENOSPC, 0);
    let mut err = None;
    for i in 0..20 {
        if let Err(e) = s.append(0, payload(0, i, 200)).await {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("the roll hit ENOSPC");
    assert!(
        matches!(
            e,
            SpoolError::Full {
                cause: FullCause::NoSpace,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_retryable());
    faults.clear_rules();
    // What was acknowledged before the failed roll reads back; the roll
    // happens once space is there.
    let acked = s.next_offset(0);
    s.append(0, payload(0, acked, 200))
        .await
        .expect("the roll goes through once space frees");
    let got = read_n(&mut s.reader(0), acked as usize + 1).await;
    for r in &got {
        assert_eq!(r.payload, payload(0, r.offset, 200));
    }
    s.close().await.unwrap();
    reliability::report("fs-enospc-segment-create", outcome(acked + 1, got.len() as u64, 0));
}

/// A corrupt frame that straddles the reader's 256 KiB window (its length
/// field intact, so the window is refilled to check it) is dead-lettered
/// like any other, not a panic that stalls the partition.
#[tokio::test]
async fn a_corrupt_frame_across_the_read_window_is_dead_lettered() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = 1;
    o.segment_bytes = 1 << 20;
    o.max_record = 16 << 10;
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    for i in 0..30 {
        s.append(0, payload(0, i, 10_000)).await.unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    let window = 256 * 1024;
    let f = frame_locations(d.path())
        .unwrap()
        .into_iter()
        .find(|f| f.pos < window && f.pos + f.len > window)
        .expect("a frame across the window edge");
    let mut bytes = std::fs::read(&f.segment).unwrap();
    bytes[(f.pos + f.len) as usize - 10] ^= 0x01;
    std::fs::write(&f.segment, bytes).unwrap();
    let s = open_with(&o, Arc::new(NoopObserver)).await;
    let got = read_n(&mut s.reader(0), 29).await;
    assert_eq!(offsets(&got), (0..30).filter(|o| *o != f.offset).collect::<Vec<_>>());
    let dead = s.dlq_list(0, 10).await.unwrap();
    assert_eq!((dead.len(), dead[0].offset), (1, f.offset));
    assert!(!dead[0].payload.is_empty(), "the damaged record keeps its bytes");
    s.close().await.unwrap();
}
