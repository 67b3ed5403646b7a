//! `sluice demo` runs end to end, exits 0 and prints its summary, and
//! the summary shows the peak being shaved.

#[test]
fn demo_exits_zero_and_prints_the_peak_shaving_summary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--requests", "200"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "without sluice",
        "with sluice",
        "backend peak (1 s)",
        "client saw (with)",
        "backlog was delivered",
    ] {
        assert!(stdout.contains(needle), "summary lacks {needle:?}:\n{stdout}");
    }
    // The backend's peak with sluice in front stays at or under its
    // capacity (50 req/s), and nothing was refused by it.
    let peak_line = stdout.lines().find(|l| l.starts_with("backend peak")).unwrap();
    let numbers: Vec<u32> = peak_line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(numbers.len() >= 2, "{peak_line}");
    assert!(
        numbers[0] > 100,
        "without sluice the burst hits the backend: {peak_line}"
    );
    assert!(
        numbers[1] <= 55,
        "with sluice the backend stays near capacity: {peak_line}"
    );
    let refused_line = stdout.lines().find(|l| l.starts_with("backend refused")).unwrap();
    assert!(refused_line.trim_end().ends_with(" 0"), "{refused_line}");
    let with_line = stdout.lines().find(|l| l.starts_with("client saw (with)")).unwrap();
    assert!(!with_line.contains("503"), "{with_line}");
}
