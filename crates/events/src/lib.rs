//! # puhui-events: every committed change as a partner event
//!
//! [`event`] maps journal entries to events (`account.created`, `transfer.posted`, …) in the partner
//! API's JSON shape; [`tail`] reads durable journal entries from a cursor; [`relay`] publishes them to
//! NATS JetStream (`<prefix>.<tenant>.<type>`, de-duplicated by journal sequence).
//!
//! Key decision: the journal is the transactional outbox. The ledger's commit and the event are the
//! same durable write, so there is no second store to keep consistent with the first, no event
//! without its commit and no commit without its event. Each consumer (the NATS relay, the webhook
//! dispatcher, the `GET /v1/events` index) keeps its own cursor into the journal and moves it only
//! once its side of the work is done, so each is at-least-once; event ids are journal sequences, so
//! a receiver de-duplicates exactly.
#![deny(missing_docs)]

pub mod cursor;
pub mod event;
pub mod relay;
pub mod source;
pub mod tail;

pub use event::{event_id, map_entry, parse_event_id, split_id, Event, EventType, Mapped};
pub use relay::{connect_jetstream, spawn_relay, NatsConfig, RelaySource, RelayStatus};
pub use source::{EntryCursor, EntrySource, Journal, Lease, SavedCursor, SqlJournal};
pub use tail::{JournalTail, RawEntry, TailError};
