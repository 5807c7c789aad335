//! The event model and the mapping from journal entries to events.
//!
//! One journal entry gives at most one event; the event's id and sequence are the entry's journal
//! sequence, so an event id names the same event forever, on every node, after any restart. The
//! `data.object` uses the partner API's JSON field names (ids without the tenant prefix, amounts in
//! minor units, RFC 3339 times): it is the object as the entry recorded it, not the object's current
//! state (fetch that from the API).

use puhui_journal::codec::{self, Event as Entry};
use puhui_ledger::{Id, ResultCode, StatusAction, TransferKind, TransferRequest};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Length of a tenant id (`t` + 8 characters) at the start of every tenant-scoped ledger id.
pub const TENANT_ID_LEN: usize = 9;
/// The tenant of entries whose ids carry no tenant prefix (made outside the partner API: the demo,
/// benchmarks). Tenant ids are `t` + 8 upper-case characters, so this never names a real tenant.
pub const SYSTEM_TENANT: &str = "system";
/// Prefix of event ids: `evt_<journal sequence>`.
pub const EVENT_ID_PREFIX: &str = "evt_";

/// What happened. The names are stable (they are NATS subjects and webhook filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum EventType {
    /// An account was created.
    #[serde(rename = "account.created")]
    AccountCreated = 1,
    /// An account was frozen.
    #[serde(rename = "account.frozen")]
    AccountFrozen = 2,
    /// A frozen account was unfrozen.
    #[serde(rename = "account.unfrozen")]
    AccountUnfrozen = 3,
    /// An account was closed.
    #[serde(rename = "account.closed")]
    AccountClosed = 4,
    /// A single-phase transfer moved money, or a pending transfer placed a hold.
    #[serde(rename = "transfer.created")]
    TransferCreated = 5,
    /// A pending transfer was posted (the event's object is the posting transfer).
    #[serde(rename = "transfer.posted")]
    TransferPosted = 6,
    /// A pending transfer was voided (the event's object is the voiding transfer).
    #[serde(rename = "transfer.voided")]
    TransferVoided = 7,
    /// A pending transfer's hold expired.
    #[serde(rename = "transfer.expired")]
    TransferExpired = 8,
    /// A transfer was refused by the ledger and recorded (its id keeps the failure for retries).
    #[serde(rename = "transfer.failed")]
    TransferFailed = 9,
    /// Risk control decided an event (inline on a transfer, or `POST /v1/decisions`). A review's
    /// outcome is the held transfer's `transfer.posted` (approved) or `transfer.voided` (declined).
    #[serde(rename = "decision.created")]
    DecisionCreated = 10,
    /// A decision was labelled fraud or legit.
    #[serde(rename = "decision.labeled")]
    DecisionLabeled = 11,
}

impl EventType {
    /// Every type, in code order.
    pub const ALL: &'static [EventType] = &[
        EventType::AccountCreated,
        EventType::AccountFrozen,
        EventType::AccountUnfrozen,
        EventType::AccountClosed,
        EventType::TransferCreated,
        EventType::TransferPosted,
        EventType::TransferVoided,
        EventType::TransferExpired,
        EventType::TransferFailed,
        EventType::DecisionCreated,
        EventType::DecisionLabeled,
    ];

    /// The stable name, e.g. `transfer.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AccountCreated => "account.created",
            EventType::AccountFrozen => "account.frozen",
            EventType::AccountUnfrozen => "account.unfrozen",
            EventType::AccountClosed => "account.closed",
            EventType::TransferCreated => "transfer.created",
            EventType::TransferPosted => "transfer.posted",
            EventType::TransferVoided => "transfer.voided",
            EventType::TransferExpired => "transfer.expired",
            EventType::TransferFailed => "transfer.failed",
            EventType::DecisionCreated => "decision.created",
            EventType::DecisionLabeled => "decision.labeled",
        }
    }

    /// The type named `name`.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.as_str() == name)
    }

    /// The numeric code (kept in indexes).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type of a numeric code.
    pub fn from_code(code: u8) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.code() == code)
    }
}

/// One event: what a partner receives (webhook body, `GET /v1/events` item, NATS message payload).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Always `event`.
    pub object: &'static str,
    /// `evt_<sequence>`: unique and stable; use it to de-duplicate deliveries.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The journal sequence of the entry that recorded it (increases with time; gaps are other
    /// tenants' events).
    pub sequence: u64,
    /// When the ledger recorded it (RFC 3339, nanoseconds).
    pub created_at: String,
    /// `{"object": {...}}`: the account or transfer as the entry recorded it.
    pub data: Value,
    /// The tenant the event belongs to (not sent to partners: it is implied by the API key or the
    /// webhook endpoint).
    #[serde(skip)]
    pub tenant: String,
}

impl Event {
    /// The event as JSON bytes (the exact body that is signed and delivered).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event serialises")
    }
}

/// The event id of a journal sequence.
pub fn event_id(sequence: u64) -> String {
    format!("{EVENT_ID_PREFIX}{sequence}")
}

/// The journal sequence of an event id (`evt_42`) or of a bare sequence (`42`).
pub fn parse_event_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix(EVENT_ID_PREFIX).unwrap_or(text);
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Splits a ledger id into (tenant, client id).
pub fn split_id(id: &str) -> (&str, &str) {
    let scoped = id.len() > TENANT_ID_LEN + 1
        && id.as_bytes()[TENANT_ID_LEN] == b':'
        && id.starts_with('t')
        && id.as_bytes()[..TENANT_ID_LEN].iter().all(u8::is_ascii_alphanumeric);
    if scoped {
        (&id[..TENANT_ID_LEN], &id[TENANT_ID_LEN + 1..])
    } else {
        (SYSTEM_TENANT, id)
    }
}

fn client(id: &Id) -> String {
    split_id(id).1.to_string()
}

fn opt_client(id: &Option<Id>) -> Value {
    id.as_ref().map_or(Value::Null, |i| Value::String(client(i)))
}

/// RFC 3339 with nanoseconds, as the API formats times.
pub fn format_ns(ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn metadata(bytes: Option<&[u8]>) -> Value {
    bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null)
}

fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn transfer_object(r: &TransferRequest, result: ResultCode, timestamp_ns: u64) -> Value {
    let mut o = Map::new();
    o.insert("object".into(), json!("transfer"));
    o.insert("id".into(), json!(client(&r.id)));
    o.insert("type".into(), json!(r.kind.as_str()));
    o.insert("result".into(), json!(result.as_str()));
    let pending = r.kind == TransferKind::Pending && result == ResultCode::Ok;
    o.insert("pending_status".into(), if pending { json!("pending") } else { Value::Null });
    o.insert("pending_id".into(), opt_client(&r.pending_id));
    o.insert("debit_account_id".into(), opt_client(&r.debit_account_id));
    o.insert("credit_account_id".into(), opt_client(&r.credit_account_id));
    o.insert("amount".into(), json!(r.amount_minor));
    o.insert("currency".into(), json!(r.currency.as_ref().map(|c| c.as_str())));
    o.insert("code".into(), json!(r.code));
    o.insert("timeout_ms".into(), json!(r.timeout_ms));
    o.insert("metadata".into(), metadata(r.metadata.as_deref()));
    o.insert("end_to_end_id".into(), json!(r.references.end_to_end_id.as_deref()));
    o.insert("uetr".into(), json!(r.references.uetr.as_ref().map(uuid)));
    o.insert("created_at".into(), json!(format_ns(timestamp_ns)));
    o.insert("timestamp_ns".into(), json!(timestamp_ns));
    let expires = r.timeout_ms.filter(|_| pending).map(|ms| {
        let ns = timestamp_ns.saturating_add(ms.saturating_mul(1_000_000));
        format_ns(ns)
    });
    o.insert("expires_at".into(), json!(expires));
    Value::Object(o)
}

/// What a journal entry means to partners.
#[derive(Debug)]
pub enum Mapped {
    /// A partner event.
    Event(Event),
    /// Not a partner event (yet): a kind with no event mapping, e.g. an application record whose
    /// owner has not defined its events. The relay skips it (the `Puhui-Prev-Seq` header lets a
    /// consumer tell a skip from a loss).
    Skip,
}

/// The event of an application record, if it is one: risk decisions and labels. Rulesets,
/// activations and list changes are operator matters, not partner events. A record that does not
/// decode is skipped (it is the risk crate's format; the journal's hash chain vouches for the bytes).
fn record_event(record_type: u8, timestamp_ns: u64, payload: &[u8]) -> Option<(EventType, String, Value)> {
    use puhui_risk::records::{DecisionSource, Label, RiskRecord};
    match RiskRecord::decode(record_type, payload).ok()? {
        RiskRecord::Decision(d) => {
            let (tenant, id) = split_id(&d.id);
            let fired: Vec<Value> = d
                .active
                .fired
                .iter()
                .map(|f| {
                    json!({"rule": f.rule, "score": f.score, "outcome": f.outcome.map(|o| o.as_str()),
                           "reasons": f.reasons})
                })
                .collect();
            let object = json!({
                "object": "decision",
                "id": id,
                "source": match d.source { DecisionSource::Transfer => "transfer", DecisionSource::Standalone => "standalone" },
                "outcome": d.active.outcome.as_str(),
                "score": d.active.score,
                "ruleset_version": d.active.ruleset_version,
                "fired": fired,
                "degraded": d.active.degraded,
                "observed": d.observed,
                "created_at": format_ns(timestamp_ns),
            });
            Some((EventType::DecisionCreated, tenant.to_string(), object))
        }
        RiskRecord::Label(l) => {
            let (tenant, id) = split_id(&l.decision_id);
            let label = match l.label {
                Label::Fraud => "fraud",
                Label::Legit => "legit",
            };
            let object = json!({
                "object": "decision_label", "decision_id": id, "label": label, "source": l.source,
                "labelled_at": format_ns(l.labelled_at_ns),
            });
            Some((EventType::DecisionLabeled, tenant.to_string(), object))
        }
        _ => None,
    }
}

/// The type and tenant of a risk record's event, reading only its id: the rest of the payload
/// (features, rules, the event's inputs) is not decoded (a binary decision's id comes first; in a
/// JSON one the scanner skips the rest), because the
/// index reads every decision as it is journaled. Records come from the hash-chained journal, which
/// only puhui writes; one whose id does not parse has no event, as in [`record_event`].
fn classify_record(record_type: u8, payload: &[u8]) -> Option<(EventType, String)> {
    use puhui_risk::records::{DecisionRecord, RECORD_DECISION, RECORD_DECISION_BINARY, RECORD_LABEL};
    #[derive(serde::Deserialize)]
    struct LabelOf<'a> {
        #[serde(borrow)]
        decision_id: std::borrow::Cow<'a, str>,
    }
    let (kind, id) = match record_type {
        RECORD_DECISION | RECORD_DECISION_BINARY => {
            (EventType::DecisionCreated, DecisionRecord::id_of(record_type, payload)?)
        }
        RECORD_LABEL => {
            (EventType::DecisionLabeled, serde_json::from_slice::<LabelOf>(payload).ok()?.decision_id)
        }
        _ => return None,
    };
    Some((kind, split_id(&id).0.to_string()))
}

/// The type and tenant of the event an entry maps to, without building its JSON (for indexes).
pub fn classify(kind: u8, body: &[u8]) -> Result<Option<(EventType, String)>, codec::DecodeError> {
    if kind == codec::KIND_RECORD {
        // Read in place: decoding the entry would copy the payload (a risk decision's ~570 bytes
        // at every decided transfer) only to look at its id.
        let (record_type, _, payload) = codec::decode_record(body)?;
        return Ok(classify_record(record_type, payload));
    }
    let entry = codec::decode(kind, body)?;
    let (kind, id) = match &entry {
        Entry::AccountCreated { account, .. } => (EventType::AccountCreated, &account.id),
        Entry::StatusChanged { account_id, action, .. } => {
            let kind = match action {
                StatusAction::Freeze => EventType::AccountFrozen,
                StatusAction::Unfreeze => EventType::AccountUnfrozen,
                StatusAction::Close => EventType::AccountClosed,
            };
            (kind, account_id)
        }
        Entry::Transfer { request, result, .. } => {
            let kind = match (result, request.kind) {
                (ResultCode::Ok, TransferKind::Single | TransferKind::Pending) => EventType::TransferCreated,
                (ResultCode::Ok, TransferKind::PostPending) => EventType::TransferPosted,
                (ResultCode::Ok, TransferKind::VoidPending) => EventType::TransferVoided,
                _ => EventType::TransferFailed,
            };
            (kind, &request.id)
        }
        Entry::Expired { pending_id, .. } => (EventType::TransferExpired, pending_id),
        Entry::Record { record_type, payload, .. } => return Ok(classify_record(*record_type, payload)),
        #[allow(unreachable_patterns)]
        _ => return Ok(None),
    };
    Ok(Some((kind, split_id(id).0.to_string())))
}

/// Maps journal entry `sequence` (of `kind`, with `body`) to its event. Never panics: an entry that
/// does not decode is an error (the journal was hash-checked, so that is a codec bug).
pub fn map_entry(sequence: u64, kind: u8, body: &[u8]) -> Result<Mapped, codec::DecodeError> {
    let entry = codec::decode(kind, body)?;
    let timestamp_ns = entry.timestamp_ns();
    let (kind, tenant, object) = match entry {
        Entry::AccountCreated { account, timestamp_ns } => {
            let (tenant, id) = split_id(&account.id);
            let object = json!({
                "object": "account",
                "id": id,
                "currency": account.currency.code().as_str(),
                "exponent": account.currency.exponent(),
                "debits_must_not_exceed_credits": account.flags.debits_must_not_exceed_credits,
                "credits_must_not_exceed_debits": account.flags.credits_must_not_exceed_debits,
                "limit": account.limit_minor,
                "status": "open",
                "metadata": metadata(account.metadata.as_deref()),
                "created_at": format_ns(timestamp_ns),
            });
            (EventType::AccountCreated, tenant.to_string(), object)
        }
        Entry::StatusChanged { account_id, action, timestamp_ns } => {
            let (tenant, id) = split_id(&account_id);
            let (kind, status) = match action {
                StatusAction::Freeze => (EventType::AccountFrozen, "frozen"),
                StatusAction::Unfreeze => (EventType::AccountUnfrozen, "open"),
                StatusAction::Close => (EventType::AccountClosed, "closed"),
            };
            let object = json!({
                "object": "account", "id": id, "status": status, "changed_at": format_ns(timestamp_ns),
            });
            (kind, tenant.to_string(), object)
        }
        Entry::Transfer { request, timestamp_ns, result } => {
            let kind = match (result, request.kind) {
                (ResultCode::Ok, TransferKind::Single | TransferKind::Pending) => EventType::TransferCreated,
                (ResultCode::Ok, TransferKind::PostPending) => EventType::TransferPosted,
                (ResultCode::Ok, TransferKind::VoidPending) => EventType::TransferVoided,
                _ => EventType::TransferFailed,
            };
            let tenant = split_id(&request.id).0.to_string();
            (kind, tenant, transfer_object(&request, result, timestamp_ns))
        }
        Entry::Expired { pending_id, timestamp_ns } => {
            let (tenant, id) = split_id(&pending_id);
            let object = json!({
                "object": "transfer", "id": id, "pending_status": "expired",
                "resolved_at": format_ns(timestamp_ns),
            });
            (EventType::TransferExpired, tenant.to_string(), object)
        }
        Entry::Record { record_type, timestamp_ns, payload } => {
            match record_event(record_type, timestamp_ns, &payload) {
                Some(mapped) => mapped,
                None => return Ok(Mapped::Skip),
            }
        }
        // New entry kinds map here once their owner defines events: add an `EventType` and an arm
        // above (and in `classify`).
        #[allow(unreachable_patterns)]
        _ => return Ok(Mapped::Skip),
    };
    Ok(Mapped::Event(Event {
        object: "event",
        id: event_id(sequence),
        kind,
        sequence,
        created_at: format_ns(timestamp_ns),
        data: json!({ "object": object }),
        tenant,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use puhui_ledger::{Currency, NewAccount};

    #[test]
    fn ids_split_into_tenant_and_client_part() {
        assert_eq!(split_id("tABCDEFGH:alice"), ("tABCDEFGH", "alice"));
        assert_eq!(split_id("tABCDEFGH:a:b"), ("tABCDEFGH", "a:b"));
        assert_eq!(split_id("alice"), (SYSTEM_TENANT, "alice"));
        assert_eq!(split_id("tABCDEFGH:"), (SYSTEM_TENANT, "tABCDEFGH:"));
        assert_eq!(split_id("x12345678:bob"), (SYSTEM_TENANT, "x12345678:bob"));
    }

    #[test]
    fn event_ids_round_trip_and_refuse_junk() {
        assert_eq!(parse_event_id(&event_id(42)), Some(42));
        assert_eq!(parse_event_id("42"), Some(42));
        for bad in ["", "evt_", "evt_x", "-1", "evt_99999999999999999999999", "1e3"] {
            assert_eq!(parse_event_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn types_have_stable_names_and_codes() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
            assert_eq!(EventType::from_code(t.code()), Some(*t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
        assert_eq!(EventType::parse("transfer.unknown"), None);
    }

    #[test]
    fn an_account_entry_maps_to_account_created_in_the_api_shape() {
        let mut ledger = puhui_ledger::Ledger::new();
        let mut account =
            NewAccount::new(Id::new("tABCDEFGH:alice").unwrap(), Currency::parse("CNY", None).unwrap());
        account.metadata = Some(br#"{"k":1}"#.to_vec().into());
        ledger.create_accounts(vec![account], 1_000);
        let mut body = Vec::new();
        let item = ledger.drain_log().next().unwrap();
        let kind = codec::encode_log_item(&ledger, item, &mut body);
        let Mapped::Event(e) = map_entry(7, kind, &body).unwrap() else { panic!("skipped") };
        assert_eq!(e.id, "evt_7");
        assert_eq!(e.kind, EventType::AccountCreated);
        assert_eq!(e.tenant, "tABCDEFGH");
        assert_eq!(e.data["object"]["id"], "alice");
        assert_eq!(e.data["object"]["currency"], "CNY");
        assert_eq!(e.data["object"]["metadata"]["k"], 1);
        let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(json["type"], "account.created");
        assert!(json.get("tenant").is_none());
    }

    #[test]
    fn classify_agrees_with_the_full_mapping() {
        let mut ledger = puhui_ledger::Ledger::new();
        let cny = Currency::parse("CNY", None).unwrap();
        let accounts = ["tABCDEFGH:a", "tABCDEFGH:b"].map(|id| NewAccount::new(Id::new(id).unwrap(), cny));
        ledger.create_accounts(accounts.to_vec(), 1_000);
        let t = TransferRequest::single(
            Id::new("tABCDEFGH:t1").unwrap(),
            Id::new("tABCDEFGH:a").unwrap(),
            Id::new("tABCDEFGH:b").unwrap(),
            5,
            cny.code(),
        );
        ledger.create_transfers(vec![t], 2_000);
        ledger.set_account_status("tABCDEFGH:a", StatusAction::Freeze, 3_000);
        let items: Vec<_> = ledger.drain_log().collect();
        assert_eq!(items.len(), 4);
        for (seq, item) in items.into_iter().enumerate() {
            let mut body = Vec::new();
            let kind = codec::encode_log_item(&ledger, item, &mut body);
            let Mapped::Event(e) = map_entry(seq as u64, kind, &body).unwrap() else { panic!() };
            assert_eq!(classify(kind, &body).unwrap(), Some((e.kind, e.tenant.clone())));
        }
    }

    #[test]
    fn risk_labels_are_events_and_operator_records_are_not() {
        use puhui_risk::records::{Label, LabelRecord, RiskRecord, RulesetRecord};
        let label = RiskRecord::Label(LabelRecord {
            decision_id: "tABCDEFGH:t9".into(),
            label: Label::Fraud,
            source: Some("chargeback".into()),
            labelled_at_ns: 5_000,
        });
        let (record_type, payload) = label.encode();
        let mut body = Vec::new();
        let kind = codec::encode_record(record_type, 5_000, &payload, &mut body);
        let Mapped::Event(e) = map_entry(3, kind, &body).unwrap() else { panic!("skipped") };
        assert_eq!((e.kind, e.tenant.as_str()), (EventType::DecisionLabeled, "tABCDEFGH"));
        assert_eq!(e.data["object"]["decision_id"], "t9");
        assert_eq!(e.data["object"]["label"], "fraud");
        assert_eq!(classify(kind, &body).unwrap(), Some((EventType::DecisionLabeled, "tABCDEFGH".into())));
        let ruleset = RiskRecord::Ruleset(RulesetRecord {
            version: "v1".into(),
            text: String::new(),
            models: Vec::new(),
        });
        let (record_type, payload) = ruleset.encode();
        body.clear();
        let kind = codec::encode_record(record_type, 6_000, &payload, &mut body);
        assert!(matches!(map_entry(4, kind, &body).unwrap(), Mapped::Skip));
        assert_eq!(classify(kind, &body).unwrap(), None);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for kind in 0..=255u8 {
            for body in [&[][..], &[1, 2, 3][..], &[0xff; 40][..]] {
                let _ = map_entry(0, kind, body);
                let _ = classify(kind, body);
            }
        }
    }
}
