//! Crash test: a child process applies durable load and is killed with SIGKILL at random moments,
//! many times. After each kill the data directory is reopened: every transfer the child reported as
//! acknowledged is there with the same result, no linked chain is half there, the ledger invariants
//! hold and the journal verifies.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use puhui_ledger::ResultCode;
use puhui_store::{EmbeddedStore, LedgerStore, JOURNAL_FILE};

const CYCLES: u64 = 25;

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<String, ResultCode> = HashMap::new();
    let mut seed = 0x5eed_u64;
    for cycle in 0..CYCLES {
        let mut child = Command::new(env!("CARGO_BIN_EXE_puhui"))
            .args(["crash-child", "--data-dir"])
            .arg(dir.path())
            .args(["--cycle", &cycle.to_string()])
            // Frequent snapshots, so recovery is exercised from a snapshot plus a journal tail too.
            .args(["--snapshot-every", "5000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child");
        // Kill at a pseudo-random moment: 20-420 ms into the load.
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(20 + (seed >> 33) % 400);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // Only whole lines count: a line cut by the kill was never fully reported.
                    Ok(_) if line.ends_with('\n') => lines.push(line.trim_end().to_string()),
                    Ok(_) => break,
                }
            }
            lines
        });
        let started = Instant::now();
        while started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in &lines {
            let (id, code) = line.split_once(' ').expect("ID RESULT");
            let code = ResultCode::from_name(code).expect("known result code");
            acked.insert(id.to_string(), code);
        }

        // Reopen and check.
        let store = EmbeddedStore::open(dir.path()).expect("recovery after SIGKILL");
        assert!(store.open_report().snapshot_error.is_none(), "{:?}", store.open_report());
        for (id, code) in &acked {
            let found = store.transfer(id).unwrap();
            match code {
                ResultCode::Ok | ResultCode::Exists => {
                    let t = found
                        .unwrap_or_else(|| panic!("acknowledged transfer {id} was lost (cycle {cycle})"));
                    assert_eq!(t.result, ResultCode::Ok, "{id}");
                }
                ResultCode::LinkedEventFailed | ResultCode::LinkedEventChainOpen => {
                    assert!(found.is_none(), "{id} of a failed chain is in the ledger");
                }
                other => {
                    // A recorded failure keeps its code; an unrecorded one leaves no trace.
                    if let Some(t) = found {
                        assert_eq!(t.result, *other, "{id}");
                    }
                }
            }
        }
        store.read(|l| {
            l.check_invariants().unwrap();
            // Chains: all members or none (ids end in -ch<n>-<m>).
            let mut chains: HashMap<String, (usize, usize)> = HashMap::new();
            for i in 0..l.transfers_count() as u32 {
                let id = l.transfer_id_at(i).to_string();
                if let Some(pos) = id.find("-ch") {
                    let (prefix, rest) = id.split_at(pos);
                    let n: usize = rest[3..].split('-').next().unwrap().parse().unwrap();
                    let e = chains.entry(prefix.to_string()).or_insert((n, 0));
                    e.1 += 1;
                }
            }
            for (chain, (n, present)) in chains {
                assert_eq!(n, present, "linked chain {chain} is half there");
            }
        });
        drop(store);
        puhui_journal::verify(&dir.path().join(JOURNAL_FILE)).expect("journal verifies after recovery");
        eprintln!("cycle {cycle}: {} acknowledged lines, {} in total", lines.len(), acked.len());
    }
    assert!(acked.len() > 500, "the load made progress ({} acknowledged)", acked.len());
}
