//! Test support: a fresh schema per test on the database named by `PUHUI_TEST_PG`, dropped at the
//! end, so tests run in parallel and repeatedly on one database.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the test database.
pub const TEST_URL_VAR: &str = "PUHUI_TEST_PG";
/// The test database when `PUHUI_TEST_PG` is unset.
pub const TEST_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database URL.
pub fn test_url() -> String {
    std::env::var(TEST_URL_VAR).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| TEST_URL_DEFAULT.into())
}

/// A schema that exists for the lifetime of the value (dropped with everything in it).
pub struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// A new, empty schema named after `label`, the process and a counter.
    pub fn new(label: &str) -> TestSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let label: String =
            label.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(24).collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "puhui_t_{label}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
        .to_lowercase();
        let url = test_url();
        let mut client = crate::connect(&url, None).expect("the test database (PUHUI_TEST_PG) is reachable");
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"))
            .expect("create schema");
        TestSchema { url, name }
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Store options using this schema.
    pub fn options(&self) -> crate::PgOptions {
        crate::PgOptions { schema: Some(self.name.clone()), ..Default::default() }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if std::env::var_os("PUHUI_TEST_PG_KEEP").is_some() {
            return;
        }
        if let Ok(mut client) = crate::connect(&self.url, None) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
