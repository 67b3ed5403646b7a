//! Model test: random sequences of append / read / ack / checkpoint /
//! reopen against the spool and a plain in-memory model.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::small_opts;
use proptest::prelude::*;
use sluice::spool::{FsyncMode, NoopObserver, PartitionReader, Spool};

const P: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Append(u32, usize),
    Read(u32, usize),
    /// Ack the k-th (mod count) read but unacked record of a partition.
    Ack(u32, usize),
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..P, 0usize..700).prop_map(|(p, n)| Op::Append(p, n)),
        3 => (0..P, 1usize..8).prop_map(|(p, n)| Op::Read(p, n)),
        3 => (0..P, 0usize..100).prop_map(|(p, k)| Op::Ack(p, k)),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Clone)]
struct Part {
    records: Vec<Bytes>,
    acked: BTreeSet<u64>,
    committed: u64,
    /// Reader position.
    pos: u64,
}

fn body(p: u32, off: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i + off * 7 + p as usize) as u8).collect::<Vec<_>>())
}

async fn run(ops: Vec<Op>) {
    let d = tempfile::tempdir().unwrap();
    let mut o = small_opts(d.path());
    o.partitions = P;
    o.max_record = 1024;
    o.fsync = FsyncMode::Never;
    o.commit_interval = Duration::from_millis(1);
    let mut s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
    let mut readers: Vec<PartitionReader> = (0..P).map(|p| s.reader(p)).collect();
    let mut m: Vec<Part> = vec![Part::default(); P as usize];
    for op in ops {
        match op {
            Op::Append(p, len) => {
                let pm = &mut m[p as usize];
                let b = body(p, pm.records.len(), len);
                let off = s.append(p, b.clone()).await.unwrap();
                assert_eq!(off, pm.records.len() as u64);
                pm.records.push(b);
            }
            Op::Read(p, n) => {
                let pm = &mut m[p as usize];
                // Nothing unfinished left to hand out: a read would wait.
                // Finished is acked above the committed offset, or below it
                // (an ack that completed a run moved the offset past
                // records this reader had not reached again since a
                // reopen).
                if (pm.pos..pm.records.len() as u64).all(|o| o < pm.committed || pm.acked.contains(&o)) {
                    continue;
                }
                let got = tokio::time::timeout(Duration::from_secs(5), readers[p as usize].next_batch(n, 1 << 20))
                    .await
                    .expect("reader stalled")
                    .unwrap();
                assert!(!got.is_empty() && got.len() <= n);
                for r in got {
                    // A reader may jump over offsets that are finished:
                    // committed while it was behind them, or acked out of
                    // order (before a reopen too: they are not delivered
                    // twice). It may never skip an unfinished one.
                    if r.offset > pm.pos {
                        assert!(
                            (pm.pos..r.offset).all(|o| o < pm.committed || pm.acked.contains(&o)),
                            "partition {p}: skipped unfinished offsets {}..{} (committed {}, acked {:?})",
                            pm.pos,
                            r.offset,
                            pm.committed,
                            pm.acked
                        );
                        pm.pos = r.offset;
                    }
                    assert_eq!(r.offset, pm.pos, "partition {p}");
                    assert_eq!(r.payload, pm.records[r.offset as usize]);
                    pm.pos += 1;
                }
            }
            Op::Ack(p, k) => {
                let pm = &mut m[p as usize];
                let cand: Vec<u64> = (pm.committed..pm.pos).filter(|o| !pm.acked.contains(o)).collect();
                if cand.is_empty() {
                    continue;
                }
                let off = cand[k % cand.len()];
                s.ack(p, off).unwrap();
                pm.acked.insert(off);
                while pm.acked.remove(&pm.committed) {
                    pm.committed += 1;
                }
                assert_eq!(s.committed(p), pm.committed);
            }
            Op::Checkpoint => s.checkpoint().await.unwrap(),
            Op::Reopen => {
                s.close().await.unwrap();
                drop(readers);
                drop(s);
                s = Spool::open(o.clone(), Arc::new(NoopObserver)).await.unwrap();
                readers = (0..P).map(|p| s.reader(p)).collect();
                for (p, pm) in m.iter_mut().enumerate() {
                    // Resumes at the committed offset; acks above it kept.
                    assert_eq!(s.committed(p as u32), pm.committed);
                    assert_eq!(s.next_offset(p as u32), pm.records.len() as u64);
                    pm.pos = pm.committed;
                }
            }
        }
        for (p, pm) in m.iter().enumerate() {
            let st = &s.status().partitions[p];
            assert_eq!(
                st.backlog_records,
                pm.records.len() as u64 - pm.committed - pm.acked.len() as u64
            );
        }
    }
    // Everything from the committed offset on is still readable.
    for (p, pm) in m.iter().enumerate() {
        for off in pm.committed..pm.records.len() as u64 {
            let r = s.read_at(p as u32, off).await.unwrap().unwrap();
            assert_eq!(r.payload, pm.records[off as usize]);
        }
    }
    s.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn spool_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
