mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use sluice::spool::{inspect, DlqSelection, FsyncMode, FullCause, NoopObserver, Spool, SpoolError, SpoolOptions};

async fn open(o: &SpoolOptions) -> Arc<Spool> {
    Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap()
}

#[tokio::test]
async fn append_read_in_order_across_partitions() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&small_opts(d.path())).await;
    for i in 0..50u64 {
        for p in 0..4 {
            assert_eq!(s.append(p, payload(p, i, 100)).await.unwrap(), i);
        }
    }
    for p in 0..4 {
        let mut r = s.reader(p);
        let mut got = Vec::new();
        while got.len() < 50 {
            got.extend(r.next_batch(7, 1 << 20).await.unwrap());
        }
        for (i, rec) in got.iter().enumerate() {
            assert_eq!((rec.partition, rec.offset), (p, i as u64));
            assert_eq!(rec.payload, payload(p, i as u64, 100));
        }
        assert_eq!(s.next_offset(p), 50);
    }
    // Small segments: the data spans many files.
    assert!(segs(d.path()).len() > 5);
    assert_eq!(s.read_at(2, 17).await.unwrap().unwrap().payload, payload(2, 17, 100));
    assert!(s.read_at(2, 50).await.unwrap().is_none());
    s.close().await.unwrap();
}

#[tokio::test]
async fn reader_at_tail_is_woken_by_append() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&small_opts(d.path())).await;
    let mut r = s.reader(1);
    let t = tokio::spawn(async move { r.next_batch(10, 1 << 20).await.unwrap() });
    tokio::task::yield_now().await;
    assert!(!t.is_finished());
    s.append(1, Bytes::from_static(b"wake")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
    assert_eq!(got[0].payload, Bytes::from_static(b"wake"));
}

#[tokio::test]
async fn acks_in_any_order_commit_contiguous_run_and_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open(&o).await;
    for i in 0..10 {
        s.append(0, payload(0, i, 10)).await.unwrap();
    }
    for off in [3, 1, 0, 5] {
        s.ack(0, off).unwrap();
    }
    assert_eq!(s.committed(0), 2);
    s.ack(0, 2).unwrap();
    assert_eq!(s.committed(0), 4);
    assert!(matches!(
        s.ack(0, 10),
        Err(SpoolError::OffsetOutOfRange {
            offset: 10,
            next: 10,
            ..
        })
    ));
    s.close().await.unwrap();
    drop(s);
    let s = open(&o).await;
    assert_eq!(s.committed(0), 4);
    // Offset 5 was acked above the committed run: not redelivered.
    s.ack(0, 4).unwrap();
    assert_eq!(s.committed(0), 6);
    let mut r = s.reader(0);
    eprintln!("reader at {}", r.position());
    let b = tokio::time::timeout(Duration::from_secs(2), r.next_batch(100, 1 << 20))
        .await
        .expect("hang")
        .unwrap();
    assert_eq!(b[0].offset, 6);
    assert_eq!(s.next_offset(0), 10);
    assert_eq!(s.append(0, payload(0, 10, 10)).await.unwrap(), 10);
}

#[tokio::test]
async fn commits_are_persisted_by_the_housekeeper_without_close() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open(&o).await;
    for i in 0..5 {
        s.append(0, payload(0, i, 10)).await.unwrap();
        s.ack(0, i).unwrap();
    }
    let dir = d.path().to_owned();
    eventually("commit persisted", || {
        inspect(&dir).unwrap().partitions[0].committed_offset == 5
    })
    .await;
}

#[tokio::test]
async fn segments_are_deleted_after_ack_and_offsets_never_reused() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open(&o).await;
    for i in 0..100u64 {
        s.append((i % 4) as u32, payload(0, i, 200)).await.unwrap();
    }
    let before = segs(d.path()).len();
    assert!(before > 5);
    let disk_before = s.disk_bytes();
    for p in 0..4 {
        for off in 0..s.next_offset(p) {
            s.ack(p, off).unwrap();
        }
    }
    s.checkpoint().await.unwrap();
    // Only the active segment stays.
    assert_eq!(segs(d.path()).len(), 1);
    assert!(s.disk_bytes() < disk_before);
    s.close().await.unwrap();
    drop(s);
    // Roll past the active segment too, ack everything, so no segment
    // holds partition 0 at all; reopen; offsets continue.
    let s = open(&o).await;
    for i in 0..40u64 {
        let off = s.append(1, payload(1, i, 200)).await.unwrap();
        s.ack(1, off).unwrap();
    }
    s.close().await.unwrap();
    drop(s);
    let s = open(&o).await;
    assert_eq!(s.next_offset(0), 25);
    assert_eq!(s.append(0, Bytes::from_static(b"x")).await.unwrap(), 25);
    assert_eq!(s.committed(0), 25);
}

#[tokio::test]
async fn quota_refuses_with_full_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.max_bytes = 8192;
    o.segment_bytes = 4096;
    let s = open(&o).await;
    let mut ok = 0u64;
    let err = loop {
        match s.append(0, payload(0, ok, 500)).await {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            SpoolError::Full {
                cause: FullCause::Quota,
                partition: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    let on_disk: u64 = segs(d.path()).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert_eq!(s.next_offset(0), ok);
    // Every byte on disk is a whole record.
    assert_eq!(on_disk % sluice::spool::codec::frame_len(500) as u64, 0);
    // Acking frees whole segments; appends work again.
    for off in 0..ok {
        s.ack(0, off).unwrap();
    }
    s.checkpoint().await.unwrap();
    assert_eq!(s.append(0, payload(0, ok, 500)).await.unwrap(), ok);
}

#[tokio::test]
async fn too_large_and_bad_partition() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&small_opts(d.path())).await;
    assert!(matches!(
        s.append(0, Bytes::from(vec![0u8; 1025])).await,
        Err(SpoolError::TooLarge {
            len: 1025,
            max: 1024,
            ..
        })
    ));
    assert!(matches!(
        s.append(4, Bytes::new()).await,
        Err(SpoolError::NoSuchPartition {
            partition: 4,
            partitions: 4
        })
    ));
}

#[tokio::test]
async fn reopen_with_other_partition_count_is_an_error_that_says_so() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    open(&o).await.close().await.unwrap();
    let mut o2 = o.clone();
    o2.partitions = 8;
    let e = Spool::open(o2, Arc::new(NoopObserver)).await.err().unwrap();
    assert!(matches!(
        e,
        SpoolError::PartitionMismatch {
            on_disk: 4,
            requested: 8,
            ..
        }
    ));
    assert!(e.to_string().contains("4 partitions"), "{e}");
}

#[tokio::test]
async fn second_open_fails_on_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open(&o).await;
    let e = Spool::open(o.clone(), Arc::new(NoopObserver)).await.err().unwrap();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
    s.close().await.unwrap();
    drop(s);
    open(&o).await;
}

#[tokio::test]
async fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let s = open(&small_opts(&dir)).await;
    s.append(0, Bytes::from_static(b"secret")).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    for p in [dir.join("MANIFEST"), segs(&dir)[0].clone(), dir.join("log/COMMITS")] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{p:?}"
        );
    }
}

#[tokio::test]
async fn status_backlog_and_age_with_injected_clock() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    let clock = Arc::new(ManualClock::default());
    clock.0.store(1_000_000, Ordering::Relaxed);
    o.clock = clock.clone();
    o.fsync = FsyncMode::Interval(Duration::from_millis(5));
    let s = open(&o).await;
    for i in 0..10 {
        s.append(2, payload(2, i, 50)).await.unwrap();
        clock.0.fetch_add(1000, Ordering::Relaxed);
    }
    s.ack(2, 0).unwrap();
    s.ack(2, 1).unwrap();
    let st = s.status();
    let p = &st.partitions[2];
    assert_eq!(
        (p.first_offset, p.next_offset, p.committed_offset, p.backlog_records),
        (0, 10, 2, 8)
    );
    assert_eq!(p.backlog_bytes, 8 * sluice::spool::codec::frame_len(50) as u64);
    assert_eq!(p.oldest_timestamp_ms, Some(1_002_000));
    assert_eq!(p.oldest_age_seconds, Some(8.0));
    assert_eq!(st.partitions[0].backlog_records, 0);
    assert!(st.disk_bytes > 0);
    let text = st.to_string();
    assert!(text.contains("interval"), "{text}");
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["partitions"][2]["backlog_records"], 8);
    s.close().await.unwrap();
    // Offline view agrees (it reads the committed offsets from disk).
    let off = inspect(d.path()).unwrap();
    assert_eq!(off.partitions[2].committed_offset, 2);
    assert_eq!(off.partitions[2].next_offset, 10);
    assert_eq!(off.partitions[2].oldest_timestamp_ms, Some(1_002_000));
}

#[tokio::test]
async fn inspect_refuses_missing_or_non_spool_dirs_and_works_while_open() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        inspect(&d.path().join("nope")),
        Err(SpoolError::NotASpool { .. })
    ));
    assert!(matches!(inspect(d.path()), Err(SpoolError::NotASpool { .. })));
    let s = open(&small_opts(d.path())).await;
    s.append(3, Bytes::from_static(b"x")).await.unwrap();
    let st = inspect(d.path()).unwrap();
    assert_eq!(st.partitions[3].next_offset, 1);
    assert!(st.fsync.is_none());
    s.append(3, Bytes::from_static(b"y")).await.unwrap();
}

#[tokio::test]
async fn dead_letters_list_purge_replay() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open(&o).await;
    for i in 0..5 {
        s.append(1, payload(1, i, 30)).await.unwrap();
    }
    let mut r = s.reader(1);
    let recs = r.next_batch(5, 1 << 20).await.unwrap();
    for rec in &recs {
        s.dead_letter(rec, "max_attempts", Some(503)).await.unwrap();
        s.ack(1, rec.offset).unwrap();
    }
    let list = s.dlq_list(0, 100).await.unwrap();
    assert_eq!(list.len(), 5);
    assert_eq!(list[2].reason, "max_attempts");
    assert_eq!(list[2].last_status, Some(503));
    assert_eq!((list[2].partition, list[2].offset), (1, 2));
    assert_eq!(list[2].payload, payload(1, 2, 30));
    assert_eq!(s.status().dlq.records, 5);
    assert_eq!(s.dlq_list(3, 1).await.unwrap()[0].dlq_offset, 3);

    assert_eq!(s.dlq_purge(&DlqSelection::Offsets(vec![1, 3])).unwrap(), 2);
    let replayed = s.dlq_replay(&DlqSelection::Offsets(vec![4])).await.unwrap();
    assert_eq!(replayed, vec![(4, 1, 5)]);
    assert_eq!(s.read_at(1, 5).await.unwrap().unwrap().payload, payload(1, 4, 30));
    s.close().await.unwrap();
    drop(s);
    // Selective purges survive restart.
    let s = open(&o).await;
    let left: Vec<u64> = s.dlq_list(0, 100).await.unwrap().iter().map(|d| d.dlq_offset).collect();
    assert_eq!(left, vec![0, 2]);
    assert_eq!(s.dlq_purge(&DlqSelection::All).unwrap(), 2);
    assert!(s.dlq_list(0, 100).await.unwrap().is_empty());
    // The offline view catches up once the housekeeper persists the purge.
    let dir = d.path().to_owned();
    eventually("purge persisted", || inspect(&dir).unwrap().dlq.records == 0).await;
}

#[tokio::test]
async fn concurrent_appenders_share_fsyncs() {
    let d = tempfile::tempdir().unwrap();
    let mut o = SpoolOptions::new(d.path());
    o.partitions = 8;
    let obs = Arc::new(TestObserver::default());
    let s = Spool::open(o, obs.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                s.append(t % 8, payload(t, i, 1024)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let appended = obs.appended.load(Ordering::Relaxed);
    let fsyncs = obs.fsyncs.load(Ordering::Relaxed);
    assert_eq!(appended, 640);
    assert!(fsyncs < appended / 2, "{fsyncs} fsyncs for {appended} appends");
    for p in 0..8 {
        assert_eq!(s.next_offset(p), 80);
    }
}

#[tokio::test]
async fn close_wakes_a_reader_waiting_at_the_tail() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&small_opts(d.path())).await;
    let mut r = s.reader(0);
    let t = tokio::spawn(async move { r.next_batch(1, 1024).await });
    tokio::task::yield_now().await;
    s.close().await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
    assert!(matches!(res, Err(SpoolError::Closed)));
    assert!(matches!(s.append(0, Bytes::new()).await, Err(SpoolError::Closed)));
}

#[tokio::test]
async fn interval_mode_fsyncs_under_continuous_load() {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.fsync = FsyncMode::Interval(Duration::from_millis(2));
    o.segment_bytes = 1 << 20;
    let obs = Arc::new(TestObserver::default());
    let s = Spool::open(o, obs.clone()).await.unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        s.append(0, Bytes::from_static(b"steady")).await.unwrap();
    }
    assert!(obs.fsyncs.load(Ordering::Relaxed) > 0);
}

/// Two replays of the same dead letters at once re-enqueue each only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dlq_replays_re_enqueue_once() {
    let d = tempfile::tempdir().unwrap();
    let o = small_opts(d.path());
    let s = open(&o).await;
    for i in 0..5 {
        let off = s.append(0, payload(0, i, 50)).await.unwrap();
        let rec = s.read_at(0, off).await.unwrap().unwrap();
        s.dead_letter(&rec, "rejected", Some(400)).await.unwrap();
        s.ack(0, off).unwrap();
    }
    let (a, b) = tokio::join!(s.dlq_replay(&DlqSelection::All), s.dlq_replay(&DlqSelection::All));
    let replayed = a.unwrap().len() + b.unwrap().len();
    assert_eq!(replayed, 5, "each dead letter re-enqueued once");
    assert_eq!(s.next_offset(0), 10);
    assert!(s.dlq_list(0, 10).await.unwrap().is_empty());
    s.close().await.unwrap();
}
