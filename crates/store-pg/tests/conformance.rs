//! The PostgreSQL store passes the same conformance suite as the embedded store, and its journal
//! verifies (chain, replay, tables) after every check.

use puhui_store::conformance;
use puhui_store_pg::testing::TestSchema;
use puhui_store_pg::{verify, PgStore};

#[test]
fn pg_store_passes_the_conformance_suite() {
    let schemas = std::sync::Mutex::new(Vec::new());
    conformance::run_all(&|| {
        let schema = TestSchema::new("conformance");
        let store = PgStore::open_with(schema.url(), schema.options()).expect("open the PostgreSQL store");
        schemas.lock().unwrap().push(schema);
        Box::new(store)
    });
    // Every check left a journal that verifies against its tables.
    for schema in schemas.lock().unwrap().iter() {
        let v = verify::verify(schema.url(), Some(schema.name()))
            .unwrap_or_else(|e| panic!("{}: {e}", schema.name()));
        assert!(v.entries > 0 || v.accounts == 0);
    }
}

#[test]
fn migrations_are_idempotent_and_reopening_keeps_the_state() {
    use puhui_ledger::{Currency, Id, NewAccount, ResultCode};
    use puhui_store::LedgerStore;
    let schema = TestSchema::new("reopen");
    let all = puhui_store_pg::schema::MIGRATIONS.len();
    assert_eq!(puhui_store_pg::migrate(schema.url(), Some(schema.name())).unwrap(), all);
    assert_eq!(puhui_store_pg::migrate(schema.url(), Some(schema.name())).unwrap(), 0);
    let a = NewAccount::new(Id::new("a").unwrap(), Currency::iso("CNY").unwrap());
    {
        let store = PgStore::open_with(schema.url(), schema.options()).unwrap();
        assert_eq!(store.create_accounts(vec![a.clone()]).unwrap()[0].result, ResultCode::Ok);
    }
    let store = PgStore::open_with(schema.url(), schema.options()).unwrap();
    assert_eq!(store.create_accounts(vec![a]).unwrap()[0].result, ResultCode::Exists);
}
