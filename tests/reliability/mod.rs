//! RELIABILITY.md as a checked table: a fault-suite test computes what
//! happened to the requests it sent (acknowledged, delivered, lost,
//! duplicated) and calls [`report`]; the row of RELIABILITY.md with that id
//! must already say the same, or the test fails. With
//! `SLUICE_WRITE_RELIABILITY=1` the row's result cells are rewritten
//! instead (a missing row is added as a stub to describe by hand).
//!
//! Counts vary from run to run (how many requests a kill caught in
//! flight), so the cells hold stable forms — `lost 0`, `delivered all`,
//! `duplicated ≤ BOUND` — and the raw numbers go to stderr (shown by
//! `cargo test` when the test fails, or with `--nocapture`).
//!
//! Use from a test file:
//!
//! ```ignore
//! mod reliability;
//! use reliability::{Outcome, Order};
//! reliability::report("spool-torn-tail", Outcome {
//!     acknowledged: 60,   // appends that returned Ok
//!     delivered: 60,      // read back intact
//!     ..Outcome::default()
//! });
//! ```
//!
//! The row's "test" cell must name the calling file (`tests/NAME.rs`).
//! Concurrent test binaries and threads may report at once: every access
//! holds an flock on RELIABILITY.md (shared to check, exclusive to
//! rewrite), and the file is rewritten in place under that lock, so a
//! reader never sees half a table.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Columns of a result row: id, fault, expected behaviour, test, then the
/// result cells written by [`report`].
pub const HEADER: [&str; 9] = [
    "id",
    "fault",
    "expected behaviour",
    "test",
    "acknowledged",
    "delivered",
    "lost",
    "duplicated",
    "also",
];
/// Index of the first result cell.
pub const RESULT_AT: usize = 4;
/// Result cells of a row whose test does not exist yet.
pub const PENDING: &str = "pending";

/// What a fault did to the requests (or appends) of one test.
///
/// `acknowledged = delivered + dead_lettered + lost`, each counted once per
/// request, however many times it was delivered.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Requests answered 202 (or appends that returned Ok).
    pub acknowledged: u64,
    /// Acknowledged requests that reached the backend at least once (or
    /// read back intact).
    pub delivered: u64,
    /// Acknowledged requests that are in the dead-letter queue on purpose:
    /// the backend rejects them by design, or the test destroyed their
    /// bytes itself. Their raw bytes must still be there.
    pub dead_lettered: u64,
    /// Acknowledged requests neither delivered nor dead-lettered.
    pub lost: u64,
    /// Deliveries beyond the first of a request.
    pub duplicated: u64,
    /// The most duplicates the fault may cause; `None`: none allowed.
    pub duplicate_bound: Option<Bound>,
    /// Per-partition order, where the test checks it.
    pub order: Order,
    /// Things that must not exist at all: dead letters of intact records,
    /// deliveries of requests that were refused or never sent.
    pub unexpected: u64,
    /// Stable facts the test established beyond the counts, for the "also"
    /// cell (e.g. "recovered by itself").
    pub notes: Vec<String>,
    /// Raw numbers and context for stderr (never written to the table).
    pub raw: String,
}

/// An upper bound on duplicates, with the reason it holds.
#[derive(Debug, Clone)]
pub struct Bound {
    pub max: u64,
    /// Stable text for the table, e.g. "kills × 99 at risk".
    pub why: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    NotChecked,
    Kept,
    /// This many first deliveries came after a higher sequence.
    Broken(u64),
}

impl Outcome {
    /// The result cells, in stable forms (see the module doc).
    pub fn cells(&self) -> [String; 5] {
        let acknowledged = if self.acknowledged > 0 {
            "> 0".to_string()
        } else {
            "0".to_string()
        };
        let accounted = self.delivered + self.dead_lettered + self.lost == self.acknowledged;
        let delivered = if !accounted {
            format!(
                "{} of {} (+{} dead, {} lost: counts disagree)",
                self.delivered, self.acknowledged, self.dead_lettered, self.lost
            )
        } else if self.lost > 0 {
            format!("{} of {}", self.delivered, self.acknowledged)
        } else if self.dead_lettered > 0 {
            "all, or dead-lettered by design".to_string()
        } else {
            "all".to_string()
        };
        let lost = self.lost.to_string();
        let duplicated = match &self.duplicate_bound {
            None if self.duplicated == 0 => "0".to_string(),
            None => format!("{} (none allowed)", self.duplicated),
            Some(b) if self.duplicated <= b.max => format!("≤ {}", b.why),
            Some(b) => format!("{} > {} ({})", self.duplicated, b.why, b.max),
        };
        let mut also = Vec::new();
        match self.order {
            Order::NotChecked => {}
            Order::Kept => also.push("order kept".to_string()),
            Order::Broken(n) => also.push(format!("order broken ×{n}")),
        }
        if self.unexpected > 0 {
            also.push(format!("{} unexpected", self.unexpected));
        }
        also.extend(self.notes.iter().cloned());
        let also = if also.is_empty() {
            "—".to_string()
        } else {
            also.join("; ")
        };
        [acknowledged, delivered, lost, duplicated, also]
    }

    /// One line of raw numbers.
    pub fn raw_line(&self) -> String {
        let mut s = format!(
            "acknowledged={} delivered={} dead_lettered={} lost={} duplicated={} unexpected={} order={:?}",
            self.acknowledged,
            self.delivered,
            self.dead_lettered,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.order
        );
        if let Some(b) = &self.duplicate_bound {
            let _ = write!(s, " duplicate_bound={} ({})", b.max, b.why);
        }
        if !self.raw.is_empty() {
            let _ = write!(s, "; {}", self.raw);
        }
        s
    }
}

pub fn table_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RELIABILITY.md")
}

pub fn write_mode() -> bool {
    std::env::var("SLUICE_WRITE_RELIABILITY").is_ok_and(|v| v == "1")
}

/// One row of the table, as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index of the line in the file.
    pub line: usize,
    pub cells: Vec<String>,
}

impl Row {
    pub fn id(&self) -> &str {
        self.cells[0].trim_matches('`')
    }
    pub fn test(&self) -> &str {
        &self.cells[3]
    }
    pub fn pending(&self) -> bool {
        self.cells[RESULT_AT..].iter().all(|c| c == PENDING)
    }
}

fn split_row(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_string()).collect())
}

fn render_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// The result rows: lines of the `faults` section (between
/// `<!-- faults:begin -->` and `<!-- faults:end -->`) whose first cell is a
/// backticked id.
pub fn rows(text: &str) -> Vec<Row> {
    let mut inside = false;
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            match l.trim() {
                "<!-- faults:begin -->" => inside = true,
                "<!-- faults:end -->" => inside = false,
                _ => {}
            }
            inside
        })
        .filter_map(|(line, l)| {
            let cells = split_row(l)?;
            let first = cells.first()?;
            (first.len() > 2 && first.starts_with('`') && first.ends_with('`')).then_some(Row { line, cells })
        })
        .collect()
}

/// Locks RELIABILITY.md (shared or exclusive) for the life of the file.
fn open_locked(path: &Path, exclusive: bool) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(exclusive)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
    assert_eq!(rc, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    f
}

/// Checks (or, with `SLUICE_WRITE_RELIABILITY=1`, writes) one row.
#[track_caller]
pub fn report(id: &str, outcome: Outcome) {
    let caller = std::panic::Location::caller().file();
    report_from(caller, &[(id, outcome)]);
}

/// Checks (or writes) several rows at once, then fails listing every row
/// that differs.
#[track_caller]
pub fn report_many(rows: &[(&str, Outcome)]) {
    let caller = std::panic::Location::caller().file();
    report_from(caller, rows);
}

fn report_from(caller: &str, reports: &[(&str, Outcome)]) {
    for (id, o) in reports {
        eprintln!("reliability {id}: {}", o.raw_line());
    }
    let problems = apply(&table_path(), caller, reports, write_mode());
    assert!(
        problems.is_empty(),
        "RELIABILITY.md disagrees with this run (SLUICE_WRITE_RELIABILITY=1 rewrites the rows once the \
         new result is the right one):\n  {}",
        problems.join("\n  ")
    );
}

/// Checks the rows of the table at `path` against `reports` from the test
/// file `caller`, or with `write` rewrites those that differ (adding stubs
/// for missing ones); returns what differs (or can't be written).
pub fn apply(path: &Path, caller: &str, reports: &[(&str, Outcome)], write: bool) -> Vec<String> {
    let mut f = open_locked(path, write);
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut problems = Vec::new();
    let mut changed = false;
    for (id, o) in reports {
        let got = o.cells();
        let found = rows(&text).into_iter().find(|r| r.id() == *id);
        let Some(row) = found else {
            if write {
                let mut cells = vec![
                    format!("`{id}`"),
                    "TODO: the fault".into(),
                    "TODO: what sluice does".into(),
                    format!("`{caller}`"),
                ];
                cells.extend(got.iter().cloned());
                let Some(at) = rows(&text)
                    .last()
                    .map(|r| r.line + 1)
                    .or_else(|| lines.iter().position(|l| l.trim() == "<!-- faults:end -->"))
                else {
                    panic!("RELIABILITY.md has no <!-- faults:begin --> … <!-- faults:end --> section");
                };
                lines.insert(at, render_row(&cells));
                text = lines.join("\n") + "\n";
                changed = true;
                eprintln!("reliability {id}: added a stub row to RELIABILITY.md: describe it");
            } else {
                problems.push(format!(
                    "{id}: no row in RELIABILITY.md (add one, or run with SLUICE_WRITE_RELIABILITY=1 to add a stub)"
                ));
            }
            continue;
        };
        if row.cells.len() != HEADER.len() {
            problems.push(format!(
                "{id}: row has {} cells, want {}",
                row.cells.len(),
                HEADER.len()
            ));
            continue;
        }
        if !row.test().contains(caller) {
            problems.push(format!(
                "{id}: the row's test cell {:?} does not name {caller}, which reported it",
                row.test()
            ));
        }
        let have = &row.cells[RESULT_AT..];
        if have != got.as_slice() {
            if write {
                let mut cells = row.cells.clone();
                cells.truncate(RESULT_AT);
                cells.extend(got.iter().cloned());
                lines[row.line] = render_row(&cells);
                text = lines.join("\n") + "\n";
                changed = true;
                eprintln!("reliability {id}: row rewritten: {}", got.join(" | "));
            } else {
                problems.push(format!(
                    "{id}: RELIABILITY.md says\n    {}\n  this run got\n    {}\n  ({})",
                    have.join(" | "),
                    got.join(" | "),
                    o.raw_line()
                ));
            }
        }
    }
    if changed {
        f.set_len(0).unwrap();
        f.rewind().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_data().unwrap();
    }
    drop(f);
    problems
}

/// The text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
pub fn section<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let a = text.find(&begin)? + begin.len();
    let b = text[a..].find(&end)? + a;
    Some(&text[a..b])
}
