//! Spool benchmarks. Run briefly with:
//!   cargo bench --bench spool -- --warm-up-time 1 --measurement-time 3

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::spool::{FsyncMode, NoopObserver, Spool, SpoolOptions};

const APPENDERS: u64 = 64;
const RECORD: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 64 concurrent appenders, 1 KiB records, spread over 8 partitions.
fn append(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("append_1KiB_x64");
    for (name, mode) in [
        ("always", FsyncMode::Always),
        ("interval_5ms", FsyncMode::Interval(Duration::from_millis(5))),
        ("never", FsyncMode::Never),
    ] {
        let dir = tempfile::tempdir_in(".").unwrap();
        let mut o = SpoolOptions::new(dir.path());
        o.partitions = 8;
        o.fsync = mode;
        o.max_bytes = 50 << 30;
        let s = rt.block_on(Spool::open(o, Arc::new(NoopObserver))).unwrap();
        let body = Bytes::from(vec![b'x'; RECORD]);
        if matches!(mode, FsyncMode::Always) {
            g.throughput(Throughput::Elements(1));
        } else {
            g.throughput(Throughput::Bytes(RECORD as u64));
        }
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let s = s.clone();
                let body = body.clone();
                async move {
                    let per = iters.div_ceil(APPENDERS);
                    let t = Instant::now();
                    let tasks: Vec<_> = (0..APPENDERS)
                        .map(|a| {
                            let s = s.clone();
                            let body = body.clone();
                            tokio::spawn(async move {
                                for i in 0..per {
                                    s.append(((a + i) % 8) as u32, body.clone()).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    t.elapsed().mul_f64(iters as f64 / (per * APPENDERS) as f64)
                }
            })
        });
        // Reclaim between modes so the disk does not fill.
        rt.block_on(async {
            for p in 0..8 {
                for off in s.committed(p)..s.next_offset(p) {
                    s.ack(p, off).unwrap();
                }
            }
            s.close().await.unwrap();
        });
    }
    g.finish();
}

/// The measurement behind the layout choice: one fdatasync round over one
/// file vs eight files (one per partition) with the same 64 KiB written.
fn fsync_rounds(c: &mut Criterion) {
    let mut g = c.benchmark_group("fsync_round_64KiB");
    for files in [1usize, 8] {
        let dir = tempfile::tempdir_in(".").unwrap();
        let fs: Vec<std::fs::File> = (0..files)
            .map(|i| std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap())
            .collect();
        let chunk = vec![b'y'; 64 * 1024 / files];
        let mut pos = 0u64;
        g.bench_function(BenchmarkId::new("parallel_files", files), |b| {
            b.iter(|| {
                for f in &fs {
                    f.write_all_at(&chunk, pos).unwrap();
                }
                pos += chunk.len() as u64;
                std::thread::scope(|sc| {
                    for f in &fs {
                        sc.spawn(|| f.sync_data().unwrap());
                    }
                });
            })
        });
    }
    g.finish();
}

/// Sequential read of a backlog that is in the page cache.
fn read(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("read_seq_page_cache");
    for partitions in [1u32, 8] {
        let dir = tempfile::tempdir_in(".").unwrap();
        let mut o = SpoolOptions::new(dir.path());
        o.partitions = partitions;
        o.fsync = FsyncMode::Never;
        let s = rt.block_on(Spool::open(o, Arc::new(NoopObserver))).unwrap();
        let body = Bytes::from(vec![b'z'; RECORD]);
        let n: u64 = 64 * 1024; // 64 MiB
        rt.block_on(async {
            for i in 0..n {
                s.append((i % partitions as u64) as u32, body.clone()).await.unwrap();
            }
        });
        let per_part = n / partitions as u64;
        // Throughput of the records one partition reader delivers.
        g.throughput(Throughput::Bytes(per_part * RECORD as u64));
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("one_partition_of", partitions), |b| {
            b.to_async(&rt).iter(|| {
                let s = s.clone();
                async move {
                    let mut r = s.reader(0);
                    let mut got = 0;
                    while got < per_part {
                        got += r.next_batch(1024, 4 << 20).await.unwrap().len() as u64;
                    }
                }
            })
        });
        rt.block_on(s.close()).unwrap();
    }
    g.finish();
    let _ = std::io::stderr().flush();
}

/// What a frame's checksum costs to write and verify: format 1 (CRC32C)
/// against format 2 (SipHash-1-3-128, keyed).
fn frame_checksum(c: &mut Criterion) {
    use sluice::spool::codec::FrameFormat;
    let mut g = c.benchmark_group("frame_encode_decode_1KiB");
    g.throughput(Throughput::Bytes(1024));
    let payload = vec![7u8; 1024];
    for (name, format) in [
        ("format1_crc32c", FrameFormat::Crc32c),
        ("format2_siphash13_128", FrameFormat::Keyed(*b"0123456789abcdef")),
    ] {
        let mut buf = Vec::with_capacity(2048);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                buf.clear();
                format.encode(&mut buf, 1, 42, 0, 0, &payload);
                std::hint::black_box(format.decode(&buf));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, append, fsync_rounds, read, frame_checksum);
criterion_main!(benches);
