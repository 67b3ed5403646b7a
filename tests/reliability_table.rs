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
