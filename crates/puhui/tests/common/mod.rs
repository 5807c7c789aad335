//! The black-box test harness shared by the tests that start `puhui serve`: the real binary on a
//! random loopback port, stopped on drop.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;
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
