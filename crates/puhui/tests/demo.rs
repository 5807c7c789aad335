//! `puhui demo` end to end: the real binary on a small preset. It must finish, verify the journal,
//! write a self-contained report.html, and catch some of every abuse type the starter rules target.

use std::process::Command;

#[test]
fn the_demo_runs_verifies_reports_and_catches_every_typology() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let out = Command::new(env!("CARGO_BIN_EXE_puhui"))
        .args(["demo", "--preset", "small", "--seed", "7", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run puhui demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("journal verify: OK"), "{stdout}");
    let html = std::fs::read_to_string(data.join("report.html")).expect("report.html written");
    assert!(stdout.contains(&format!("report: {}", data.join("report.html").display())), "{stdout}");
    assert!(
        html.contains("<svg") && !html.contains("<script") && !html.contains("https://"),
        "self-contained"
    );
    assert!(html.contains("verified"));
    // Every typology the starter ruleset targets is caught at least sometimes (recall > 0), and
    // legitimate traffic is mostly left alone.
    for typology in
        ["account_takeover", "sim_swap", "card_testing", "mule_network", "structuring", "merchant_collusion"]
    {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(typology))
            .unwrap_or_else(|| panic!("no line for {typology}:\n{stdout}"));
        let recall: f64 = line
            .split_whitespace()
            .find(|w| w.contains('.') && !w.contains('/'))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no recall in {line:?}"));
        assert!(recall > 0.0, "{typology}: recall {recall} in {line:?}");
    }
    let legit = stdout.lines().find(|l| l.trim_start().starts_with("legitimate")).expect("legitimate line");
    let fp: f64 = legit.split_whitespace().find(|w| w.contains('.')).and_then(|w| w.parse().ok()).unwrap();
    assert!(fp < 2.0, "false-positive rate {fp} % in {legit:?}");
}

#[test]
fn the_demo_refuses_a_data_dir_that_holds_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_puhui"))
            .args(["demo", "--preset", "small", "--days", "2", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let second = run();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already holds a ledger"));
}
