//! The black-box test harness shared by the tests that start `puhui serve`: the real binary on a
//! random loopback port, stopped on drop.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;

use puhui_journal::codec::{self, Event};
use puhui_journal::frame::{genesis_hash, JournalWriter, ScanSummary};
use puhui_store::verifiable::{self as v, Checkpoint, NodeKey};
use puhui_store::JOURNAL_FILE;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `puhui serve`.
pub struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `puhui serve` on `dir` with extra arguments and environment, and waits for its
    /// "listening" line.
    pub fn spawn(dir: &Path, extra: &[&str], env: &[(&str, &str)], admin_token: &str) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_puhui"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("PUHUI_ADMIN_TOKEN", admin_token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start puhui serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("puhui listening on ").expect("listening line").to_string();
        Server { child, base }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// Waits (at most `deadline`) for the process to end by itself.
    pub fn wait_exit(mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::mem::forget(self);
                return status;
            }
            assert!(Instant::now() < until, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites the journal with entry `victim`'s amount changed, re-hashing the whole chain (what an
/// operator with full access to the disk can do).
pub fn rewrite_and_rehash(dir: &Path, victim: u64) {
    let journal = dir.join(JOURNAL_FILE);
    let mut entries = Vec::new();
    puhui_journal::scan(&journal, |e| {
        entries.push((e.kind, e.body.to_vec()));
        Ok(())
    })
    .unwrap();
    let (kind, body) = &mut entries[victim as usize];
    let Ok(Event::Transfer { mut request, timestamp_ns, result }) = codec::decode(*kind, body) else {
        panic!("entry {victim} is not a transfer")
    };
    request.amount_minor = Some(request.amount_minor.unwrap() - 1);
    let mut forged = Vec::new();
    forged.extend_from_slice(&timestamp_ns.to_le_bytes());
    forged.push(result as u8);
    puhui_ledger::wire::encode_request(&request, &mut forged);
    *body = forged;
    std::fs::remove_file(&journal).unwrap();
    let empty = ScanSummary {
        entries: 0,
        frames: 0,
        last_hash: genesis_hash(),
        valid_len_bytes: 0,
        prewritten_bytes: 0,
        torn_tail: None,
    };
    let mut writer = JournalWriter::open(&journal, &empty).unwrap();
    for (i, (kind, body)) in entries.iter().enumerate() {
        writer.append(|buf| {
            buf.extend_from_slice(body);
            *kind
        });
        if i % 7 == 6 {
            writer.commit().unwrap();
        }
    }
    writer.commit().unwrap();
    let _ = std::fs::remove_file(dir.join(puhui_journal::snapshot::SNAPSHOT_FILE));
}

/// Re-signs every stored checkpoint over the rewritten journal with the node's own key.
pub fn resign_checkpoints(dir: &Path) {
    let text = std::fs::read_to_string(dir.join(v::KEY_FILE)).unwrap();
    let key = NodeKey::from_seed(v::hex::decode_array(text.trim()).unwrap());
    let tree = v::JournalTree::build(&dir.join(JOURNAL_FILE), |_| Ok(())).unwrap().tree;
    let old = v::audit::checkpoints(dir).unwrap();
    let lines: String = old
        .iter()
        .map(|c| Checkpoint::sign(&key, c.size, tree.root_at(c.size).unwrap(), c.timestamp_ns).to_line())
        .collect();
    std::fs::write(dir.join(v::CHECKPOINT_LOG_FILE), lines).unwrap();
}
