//! RELIABILITY.md itself: the fault table is well formed, every row names
//! the test file that reports it, a row with results is reported by that
//! file, a `pending` row is not yet, and no stub row is left undescribed.
//! (Whether a row's results are right is checked by the test that reports
//! it: see tests/reliability/mod.rs.)

mod reliability;

use reliability::{rows, section, HEADER, PENDING, RESULT_AT};
use std::collections::HashSet;
use std::path::Path;

fn table() -> String {
    std::fs::read_to_string(reliability::table_path()).expect("RELIABILITY.md exists")
}

/// The `tests/NAME.rs` a test cell names.
fn test_file(cell: &str) -> Option<&str> {
    let start = cell.find("tests/")?;
    let end = cell[start..].find(".rs")? + start + 3;
    Some(&cell[start..end])
}

#[test]
fn the_fault_table_is_well_formed() {
    let text = table();
    let header = format!("| {} |", HEADER.join(" | "));
    assert!(
        text.lines().any(|l| l.trim() == header),
        "RELIABILITY.md has the header row {header:?}"
    );
    let rows = rows(&text);
    assert!(rows.len() >= 10, "only {} rows", rows.len());
    let mut ids = HashSet::new();
    for r in &rows {
        let id = r.id();
        assert!(ids.insert(id.to_string()), "row id {id} appears twice");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "row id {id:?}: lowercase, digits and dashes"
        );
        assert_eq!(r.cells.len(), HEADER.len(), "row {id}: {} cells", r.cells.len());
        for (i, c) in r.cells.iter().enumerate() {
            assert!(!c.is_empty(), "row {id}: the {} cell is empty", HEADER[i]);
        }
        assert!(
            !r.cells[1].starts_with("TODO") && !r.cells[2].starts_with("TODO"),
            "row {id} was added by SLUICE_WRITE_RELIABILITY=1: describe the fault and the expected behaviour"
        );
        let results = &r.cells[RESULT_AT..];
        assert!(
            r.pending() || results.iter().all(|c| c != PENDING),
            "row {id}: some result cells are {PENDING:?}, some not"
        );
    }
}

#[test]
fn every_row_is_reported_by_the_test_it_names_unless_pending() {
    let text = table();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    for r in rows(&text) {
        let id = r.id();
        let Some(file) = test_file(r.test()) else {
            problems.push(format!("{id}: the test cell {:?} names no tests/NAME.rs", r.test()));
            continue;
        };
        let source = std::fs::read_to_string(root.join(file)).ok();
        let reports = source.as_deref().is_some_and(|s| s.contains(&format!("\"{id}\"")));
        match (r.pending(), reports) {
            (true, true) => problems.push(format!(
                "{id}: {file} reports this row but it is still {PENDING}: \
                 run SLUICE_WRITE_RELIABILITY=1 cargo test --test {} and commit RELIABILITY.md",
                file.trim_start_matches("tests/").trim_end_matches(".rs")
            )),
            (false, false) if source.is_none() => problems.push(format!("{id}: {file} does not exist")),
            (false, false) => problems.push(format!("{id}: has results, but {file} never reports \"{id}\"")),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "RELIABILITY.md:\n  {}", problems.join("\n  "));
}

#[test]
fn the_fuzz_table_is_written_by_the_script() {
    let text = table();
    let fuzz = section(&text, "fuzz").expect("RELIABILITY.md has a <!-- fuzz:begin --> … <!-- fuzz:end --> section");
    let header = fuzz
        .lines()
        .find(|l| l.starts_with('|'))
        .expect("fuzz/run.sh wrote a table");
    for col in ["target", "time", "executions", "findings"] {
        assert!(header.contains(col), "the fuzz table has a {col} column: {header}");
    }
    assert!(
        fuzz.lines().filter(|l| l.starts_with('|')).count() >= 3,
        "the fuzz table has at least one run"
    );
    assert!(
        fuzz.contains("fuzz/run.sh"),
        "the fuzz section names the script that wrote it"
    );
}

/// A small table in a temporary file, with rows `a` … `h`.
fn scratch_table() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let mut text = format!(
        "# t\n\n<!-- faults:begin -->\n| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(9)
    );
    for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        text.push_str(&format!(
            "| `{id}` | fault {id} | expected | `tests/x.rs` | {p} | {p} | {p} | {p} | {p} |\n",
            p = PENDING
        ));
    }
    text.push_str("<!-- faults:end -->\n\ntail\n");
    let p = d.path().join("R.md");
    std::fs::write(&p, text).unwrap();
    (d, p)
}

fn outcome(n: u64) -> reliability::Outcome {
    reliability::Outcome {
        acknowledged: n,
        delivered: n,
        ..Default::default()
    }
}

#[test]
fn a_differing_row_fails_the_check_and_is_rewritten_in_write_mode() {
    let (_d, p) = scratch_table();
    let problems = reliability::apply(&p, "tests/x.rs", &[("b", outcome(3))], false);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("b: RELIABILITY.md says"), "{problems:?}");
    assert!(reliability::apply(&p, "tests/x.rs", &[("b", outcome(3))], true).is_empty());
    // Now it agrees, with other counts too (the cells are stable forms).
    assert!(reliability::apply(&p, "tests/x.rs", &[("b", outcome(70))], false).is_empty());
    let lost = reliability::Outcome {
        acknowledged: 70,
        delivered: 69,
        lost: 1,
        ..Default::default()
    };
    let problems = reliability::apply(&p, "tests/x.rs", &[("b", lost)], false);
    assert!(problems[0].contains("69 of 70"), "{problems:?}");
    // Another file may not report the row.
    let problems = reliability::apply(&p, "tests/y.rs", &[("b", outcome(3))], false);
    assert!(problems[0].contains("does not name tests/y.rs"), "{problems:?}");
    // A missing row fails, and write mode adds a stub inside the section.
    let problems = reliability::apply(&p, "tests/x.rs", &[("new-row", outcome(1))], false);
    assert!(problems[0].contains("no row"), "{problems:?}");
    assert!(reliability::apply(&p, "tests/x.rs", &[("new-row", outcome(1))], true).is_empty());
    let text = std::fs::read_to_string(&p).unwrap();
    let rows = rows(&text);
    assert_eq!(rows.last().unwrap().id(), "new-row");
    assert!(rows.last().unwrap().cells[1].starts_with("TODO"));
    assert!(text.ends_with("<!-- faults:end -->\n\ntail\n"), "{text}");
}

#[test]
fn concurrent_rewrites_keep_every_row() {
    let (_d, p) = scratch_table();
    let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
    std::thread::scope(|s| {
        for (i, id) in ids.iter().enumerate() {
            let p = p.clone();
            s.spawn(move || {
                for round in 0..20u64 {
                    // Alternate between two results so every round writes.
                    let o = if round % 2 == 0 {
                        outcome(i as u64 + 1)
                    } else {
                        reliability::Outcome {
                            acknowledged: 2,
                            delivered: 1,
                            lost: 1,
                            ..Default::default()
                        }
                    };
                    let problems = reliability::apply(&p, "tests/x.rs", &[(id, o)], true);
                    assert!(problems.is_empty(), "{problems:?}");
                }
            });
        }
    });
    let text = std::fs::read_to_string(&p).unwrap();
    let rows = rows(&text);
    assert_eq!(rows.iter().map(|r| r.id()).collect::<Vec<_>>(), ids);
    for r in &rows {
        // The last round (19) of every writer wrote "1 of 2".
        assert_eq!(r.cells[RESULT_AT + 1], "1 of 2", "row {}: {:?}", r.id(), r.cells);
    }
    assert!(text.ends_with("<!-- faults:end -->\n\ntail\n"));
}
