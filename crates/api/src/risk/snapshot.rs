//! Risk control's snapshot: the velocity features and the decision memory at a journal position,
//! so that a start re-applies only the decisions journaled after it instead of every decision ever
//! made (~15 µs each on the slowest machine measured: minutes per ten million).
//!
//! ```text
//! file    := the journal's snapshot format (`puhui_journal::snapshot`: position, BLAKE3 of it all)
//! content := magic "PHRS" | version:v | features (puhui_risk::features's snapshot) | memory
//!            | carried (versions 2 to 4)
//! memory  := decisions:v | (id:s | record:bytes | label:u8 | journal_seq:v (0 none, else seq + 1)
//!            | transfer:u8) × decisions     (oldest first: the order they are forgotten in;
//!              transfer: 1 declined it, 2 held it for review (version 4), 0 neither)
//!            | forgotten:v | (hash:w | packed:w) × forgotten                   (versions 3 and 4)
//!            | known:v | hash:w × known | declined_forgotten:v | hash:w × declined_forgotten
//!                                                                          (versions 1 and 2)
//!            | reviews:v | (scoped_id:s | id:s | score:i | reasons:v | reason:s × reasons
//!            | ruleset_version:s) × reviews
//! carried := records:v | (record_type:u8 | timestamp_ns:w | payload:bytes) × records
//! ```
//! (`v` a varint, `i` a zigzag varint, `s` a string, `w` 8 bytes, `bytes` a varint length and
//! the bytes: `puhui_risk::bytes`). A forgotten decision's `packed` word holds its journal
//! sequence, label, declined flag and (version 4) reviewed flag (`Forgotten::pack`); version 3
//! has no reviewed flag (its bit is the sequence's, never set there); versions 1 and 2 kept the hashes of all
//! decision ids and of the forgotten declines only, read as forgotten decisions whose place in the
//! journal is not known.
//!
//! The *carried* records rebuild, applied in order as a start applies journal records, the rest
//! of the state a start used to read from the whole journal: the controller's feature bounds,
//! rulesets, activation and lists (`Controller::state_records`) and the idempotency keys of the last 24 hours
//! (`IdempotencyCache::carried_records`). With them a start reads the journal from the snapshot's
//! position on, not from its beginning; a version-1 snapshot has none, and its start reads the
//! whole journal, as before.
//!
//! Written when nothing is being decided: at a clean stop, after the store has made everything
//! durable, and at a start that re-applied many decisions, before serving; and by the
//! checkpointer from its own copy. A snapshot is used only if the journal still holds its
//! position (same length there, same hash) and the node's feature seed is the one it was taken
//! with; otherwise the start replays everything, as without one. Its feature bounds are the
//! journal's at its position: a start given others journals the change after it.

use std::sync::Arc;

use puhui_journal::JournalPosition;
use puhui_risk::bytes::{put_fixed_u64, put_i64, put_str, put_u64, Reader};
use puhui_risk::{FeatureStore, Label};

use super::{
    Forgotten, ForgottenIds, Memory, Remembered, ReviewObject, Reviews, DECISIONS_KEPT_MAX,
    DECISION_IDS_KEPT_MAX,
};

/// The snapshot's file in a data directory.
pub const RISK_SNAPSHOT_FILE: &str = "risk-snapshot.phs";
const MAGIC: &[u8; 4] = b"PHRS";
const VERSION: u64 = 4;
/// The version without the reviewed flags (still read: no forgotten decision is known for a review).
const VERSION_WITHOUT_REVIEWED: u64 = 3;
/// The version whose memory keeps only the hashes of decision ids (still read).
const VERSION_WITH_KNOWN_IDS: u64 = 2;
/// The version without carried records (still read: its start reads the whole journal).
const VERSION_WITHOUT_CARRIED: u64 = 1;
/// What a [`Reader`] of the content names in its errors.
const CONTENT: &str = "the risk snapshot";
/// A start that re-applied at least this many decisions after the snapshot (or without one) writes
/// a new one before it serves: a crash then costs at most the decisions since that start.
pub const SNAPSHOT_AFTER_DECISIONS: u64 = 100_000;

/// A record a snapshot carries: `(record_type, timestamp_ns, payload)`, applied at a start as a
/// journal record of that type would be.
pub(super) type Carried = (u8, u64, Vec<u8>);

/// What a snapshot held.
pub(super) struct Loaded {
    /// The journal position it was taken at: records before it are in it.
    pub position: JournalPosition,
    pub features: FeatureStore,
    pub memory: MemoryParts,
    /// The records that rebuild the rest of the state at `position` (`None`: a version-1
    /// snapshot; the start reads the whole journal for it).
    pub carried: Option<Vec<Carried>>,
}

/// The decision memory's durable parts (the rest of [`Memory`] is transient: requests in flight).
pub(super) struct MemoryParts {
    pub decisions: Vec<(Arc<str>, Remembered)>,
    pub forgotten: ForgottenIds,
    pub reviews: Reviews,
}

/// The snapshot's content: `features`, then `memory`'s durable parts, then the `carried` records.
pub(super) fn encode(features: &FeatureStore, memory: &Memory, carried: &[Carried]) -> Vec<u8> {
    encode_pausing(features, memory, carried, || {})
}

/// [`encode`], calling `pause` every few hundred keys of the features and every
/// [`puhui_risk::features::ENCODE_PAUSE_EVERY_KEYS`] decisions of the memory (the checkpointer
/// gives way to the serving threads there).
pub(super) fn encode_pausing(
    features: &FeatureStore,
    memory: &Memory,
    carried: &[Carried],
    mut pause: impl FnMut(),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(MAGIC);
    put_u64(&mut out, VERSION);
    features.encode_snapshot_pausing(&mut out, &mut pause);
    let kept: Vec<_> =
        memory.order.iter().filter_map(|id| memory.decisions.get(id).map(|r| (id, r))).collect();
    put_u64(&mut out, kept.len() as u64);
    for (i, (id, remembered)) in kept.into_iter().enumerate() {
        if i % puhui_risk::features::ENCODE_PAUSE_EVERY_KEYS == 0 {
            pause();
        }
        put_str(&mut out, id);
        put_u64(&mut out, remembered.record.len() as u64);
        out.extend_from_slice(&remembered.record);
        out.push(match remembered.label {
            None => 0,
            Some(Label::Fraud) => 1,
            Some(Label::Legit) => 2,
        });
        put_u64(&mut out, remembered.journal_seq.map_or(0, |seq| seq + 1));
        debug_assert!(!(remembered.declined_transfer && remembered.reviewed_transfer));
        out.push(u8::from(remembered.declined_transfer) | (u8::from(remembered.reviewed_transfer) << 1));
    }
    put_u64(&mut out, memory.forgotten.len() as u64);
    for (i, (hash, forgotten)) in memory.forgotten.iter().enumerate() {
        if i % (16 * puhui_risk::features::ENCODE_PAUSE_EVERY_KEYS) == 0 {
            pause();
        }
        put_fixed_u64(&mut out, hash);
        put_fixed_u64(&mut out, forgotten.pack());
    }
    put_u64(&mut out, memory.reviews.len() as u64);
    for (scoped_id, review) in &memory.reviews.by_id {
        put_str(&mut out, scoped_id);
        put_str(&mut out, &review.id);
        put_i64(&mut out, review.score);
        put_u64(&mut out, review.reasons.len() as u64);
        for reason in &review.reasons {
            put_str(&mut out, reason);
        }
        put_str(&mut out, &review.ruleset_version);
    }
    put_u64(&mut out, carried.len() as u64);
    for (record_type, timestamp_ns, payload) in carried {
        out.push(*record_type);
        put_fixed_u64(&mut out, *timestamp_ns);
        put_u64(&mut out, payload.len() as u64);
        out.extend_from_slice(payload);
    }
    out
}

/// Reads the snapshot in `dir`, if there is one that fits: the journal at `journal` holds its
/// position, and its features have the node's placement `seed` (their bounds are the journal's at
/// that position). `Ok(None)`: no snapshot. `Err`:
/// one that does not fit or does not decode, and why (the caller replays everything instead).
pub(super) fn load(
    dir: &std::path::Path,
    journal: &std::path::Path,
    seed: u64,
) -> Result<Option<Loaded>, String> {
    let Some((position, content)) = puhui_journal::snapshot::read_snapshot_file(dir, RISK_SNAPSHOT_FILE)?
    else {
        return Ok(None);
    };
    let held = puhui_journal::holds_position(journal, &position)
        .map_err(|e| format!("{}: {e}", journal.display()))?;
    if !held {
        return Err(format!(
            "the journal does not hold the snapshot's position (entry {}, byte {}): shorter, or another history",
            position.entries, position.len_bytes
        ));
    }
    let mut r = Reader::new(&content, CONTENT);
    if r.take(4)? != MAGIC {
        return Err("not a risk snapshot".into());
    }
    let version = r.u64()?;
    if !(VERSION_WITHOUT_CARRIED..=VERSION).contains(&version) {
        return Err(format!("risk snapshot version {version} is not supported"));
    }
    let mut rest = &content[r.position()..];
    let features = FeatureStore::decode_snapshot(&mut rest)?;
    // Its bounds are the journal's at its position (a change of bounds is journaled, and a start
    // given others journals them after the replay): only its placement must be this node's.
    if features.seed() != seed {
        return Err("taken with another feature placement seed".into());
    }
    let (memory, carried) = decode_after_features(rest, version)?;
    Ok(Some(Loaded { position, features, memory, carried }))
}

/// Whether a remembered decision's `record` held a transfer for review (`false` if it cannot be
/// read: it is then only not found by a start's read-back once forgotten).
fn held_for_review(record: &[u8]) -> bool {
    puhui_risk::records::binary::decode_head(record).is_ok_and(|h| {
        h.source == puhui_risk::DecisionSource::Transfer && h.outcome == puhui_risk::Outcome::Review
    })
}

/// What follows the features in a snapshot of `version`: the memory and the carried records.
fn decode_after_features(bytes: &[u8], version: u64) -> Result<(MemoryParts, Option<Vec<Carried>>), String> {
    let mut r = Reader::new(bytes, CONTENT);
    let memory = decode_memory(&mut r, version)?;
    let carried = (version != VERSION_WITHOUT_CARRIED).then(|| decode_carried(&mut r)).transpose()?;
    if r.remaining() != 0 {
        return Err(format!("{} bytes after the risk snapshot", r.remaining()));
    }
    Ok((memory, carried))
}

/// The carried records (at least 10 bytes each: a type, a timestamp, a length).
fn decode_carried(r: &mut Reader<'_>) -> Result<Vec<Carried>, String> {
    let n = r.count(10)?;
    let mut carried = Vec::with_capacity(n);
    for _ in 0..n {
        let record_type = r.byte()?;
        let timestamp_ns = r.fixed_u64()?;
        let len = r.len()?;
        carried.push((record_type, timestamp_ns, r.take(len)?.to_vec()));
    }
    Ok(carried)
}

/// The decision memory's durable parts, read from `r` (a snapshot of `version`).
fn decode_memory(r: &mut Reader<'_>, version: u64) -> Result<MemoryParts, String> {
    let n = r.count(5)?;
    if n > DECISIONS_KEPT_MAX {
        return Err(format!("{n} decisions remembered, more than {DECISIONS_KEPT_MAX}"));
    }
    let mut decisions = Vec::with_capacity(n);
    let mut ids = std::collections::HashSet::with_capacity(n);
    for _ in 0..n {
        let id: Arc<str> = Arc::from(r.str()?);
        if !ids.insert(Arc::clone(&id)) {
            return Err(format!("decision {id} remembered twice"));
        }
        let len = r.len()?;
        let record: Box<[u8]> = r.take(len)?.into();
        let label = match r.byte()? {
            0 => None,
            1 => Some(Label::Fraud),
            2 => Some(Label::Legit),
            other => return Err(format!("unknown label {other}")),
        };
        let journal_seq = r.u64()?.checked_sub(1);
        let (declined_transfer, reviewed_transfer) = match r.byte()? {
            // Before version 4 the record itself tells (once forgotten, only the flag would).
            0 if version <= VERSION_WITHOUT_REVIEWED => (false, held_for_review(&record)),
            0 => (false, false),
            1 => (true, false),
            2 if version > VERSION_WITHOUT_REVIEWED => (false, true),
            other => return Err(format!("decision {id}: unknown transfer outcome {other}")),
        };
        decisions.push((id, Remembered { record, label, journal_seq, declined_transfer, reviewed_transfer }));
    }
    let mut forgotten = ForgottenIds::new();
    if version > VERSION_WITH_KNOWN_IDS {
        let n = r.count(16)?;
        if n > DECISION_IDS_KEPT_MAX {
            return Err(format!("{n} forgotten decisions, more than {DECISION_IDS_KEPT_MAX}"));
        }
        for _ in 0..n {
            let hash = r.fixed_u64()?;
            let mut one = Forgotten::unpack(r.fixed_u64()?);
            if version == VERSION_WITHOUT_REVIEWED {
                // Its bit is the sequence's there (never set: 2^60 entries).
                one.reviewed_transfer = false;
            }
            forgotten.insert(hash, one);
        }
        if forgotten.len() != n {
            return Err("a forgotten decision twice".into());
        }
    } else {
        // All decision ids, then the forgotten declines among them.
        for declined_transfer in [false, true] {
            let n = r.count(8)?;
            if n > DECISION_IDS_KEPT_MAX {
                return Err(format!("{n} decision ids, more than {DECISION_IDS_KEPT_MAX}"));
            }
            for _ in 0..n {
                forgotten.insert(r.fixed_u64()?, Forgotten { declined_transfer, ..Forgotten::default() });
            }
        }
        // The ids of decisions still remembered are not forgotten ones.
        for (id, _) in &decisions {
            forgotten.remove(super::hash64(id));
        }
    }
    let mut reviews = Reviews::default();
    let n = r.count(5)?;
    for _ in 0..n {
        let scoped_id = r.string()?;
        let id = r.string()?;
        let score = r.i64()?;
        let reasons = (0..r.len()?).map(|_| r.string()).collect::<Result<Vec<_>, _>>()?;
        let ruleset_version = r.string()?;
        reviews.insert(scoped_id, ReviewObject { object: "review", id, score, reasons, ruleset_version });
    }
    if reviews.len() != n {
        return Err("a review twice".into());
    }
    Ok(MemoryParts { decisions, forgotten, reviews })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory of `n` decisions, some labelled, some declined, and a review, as a snapshot of
    /// `version` writes it (with `n` forgotten decisions, a fifth of them declines).
    fn memory_parts_bytes(n: usize, version: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, n as u64);
        for i in 0..n {
            put_str(&mut out, &format!("t:d{i}"));
            put_u64(&mut out, 3);
            out.extend_from_slice(&[1, 2, 3]);
            out.push((i % 3) as u8);
            put_u64(&mut out, if i % 2 == 0 { 0 } else { i as u64 + 1 });
            out.push(match (i % 5, version > VERSION_WITHOUT_REVIEWED) {
                (0, _) => 1,
                (1, true) => 2,
                _ => 0,
            });
        }
        let hash = |i: usize| 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
        if version >= VERSION_WITHOUT_REVIEWED {
            put_u64(&mut out, n as u64);
            for i in 0..n {
                put_fixed_u64(&mut out, hash(i));
                let forgotten = Forgotten {
                    journal_seq: Some(1_000 + i as u64),
                    label: (i % 2 == 0).then_some(Label::Fraud),
                    declined_transfer: i < n / 5,
                    reviewed_transfer: version == VERSION && (n / 5..2 * n / 5).contains(&i),
                };
                put_fixed_u64(&mut out, forgotten.pack());
            }
        } else {
            for set in [n, n / 5] {
                put_u64(&mut out, set as u64);
                for i in 0..set {
                    put_fixed_u64(&mut out, hash(i));
                }
            }
        }
        put_u64(&mut out, 1);
        for text in ["t:d1", "d1"] {
            put_str(&mut out, text);
        }
        put_i64(&mut out, -40);
        put_u64(&mut out, 1);
        put_str(&mut out, "velocity");
        put_str(&mut out, "strict-test");
        out
    }

    #[test]
    fn a_snapshot_encoded_with_pauses_is_the_same_bytes_and_pauses_through_the_memory() {
        let (_, inbox) = std::sync::mpsc::sync_channel(1);
        let mut memory = Memory::new(inbox);
        let mut bytes = memory_parts_bytes(5_000, VERSION);
        put_u64(&mut bytes, 0);
        memory.restore(decode_after_features(&bytes, VERSION).unwrap().0);
        let features = FeatureStore::new(puhui_risk::FeatureLimits::default());
        let carried: Vec<Carried> = vec![(3, 7, b"ruleset".to_vec())];
        let mut pauses = 0;
        let paused = encode_pausing(&features, &memory, &carried, || pauses += 1);
        assert_eq!(paused, encode(&features, &memory, &carried));
        // 5,000 decisions kept: one pause before every 256th; 5,000 forgotten: every 4,096th.
        assert_eq!(pauses, 5_000usize.div_ceil(256) + 5_000usize.div_ceil(4_096));
    }

    #[test]
    fn a_version_3_memory_knows_its_remembered_reviews_from_their_records() {
        use puhui_risk::records::{DecisionRecord, EventRecord, Verdict};
        let record = |id: &str, source, outcome| {
            let d = DecisionRecord {
                id: id.into(),
                source,
                event: EventRecord {
                    payer: "t:w".into(),
                    payee: "t:shop".into(),
                    amount_minor: 1,
                    currency: "CNY".into(),
                    timestamp_ns: 1,
                    attributes: Vec::new(),
                    payer_balance_minor: None,
                },
                observed: true,
                active: Verdict {
                    ruleset_version: "v".into(),
                    outcome,
                    score: 0,
                    fired: Vec::new(),
                    features: Vec::new(),
                    errors: Vec::new(),
                    degraded: None,
                    latency_ns: 1,
                },
                shadow: None,
            };
            puhui_risk::records::binary::encode(&d)
        };
        use puhui_risk::{DecisionSource::*, Outcome::*};
        let kept = [
            ("t:held", record("t:held", Transfer, Review)),
            ("t:asked", record("t:asked", Standalone, Review)),
            ("t:approved", record("t:approved", Transfer, Approve)),
            ("t:damaged", vec![1, 2, 3]),
        ];
        let mut bytes = Vec::new();
        put_u64(&mut bytes, kept.len() as u64);
        for (id, record) in &kept {
            put_str(&mut bytes, id);
            put_u64(&mut bytes, record.len() as u64);
            bytes.extend_from_slice(record);
            bytes.extend_from_slice(&[0, 0, 0]); // no label, no journal place, flag byte 0
        }
        bytes.extend_from_slice(&[0, 0, 0]); // no forgotten decisions, no reviews, no carried records
        let (parts, _) = decode_after_features(&bytes, VERSION_WITHOUT_REVIEWED).unwrap();
        let reviewed: Vec<bool> = parts.decisions.iter().map(|(_, d)| d.reviewed_transfer).collect();
        assert_eq!(reviewed, [true, false, false, false]);
        // Version 4 says so itself: byte 0 is neither, whatever the record.
        let (parts, _) = decode_after_features(&bytes, VERSION).unwrap();
        assert!(parts.decisions.iter().all(|(_, d)| !d.reviewed_transfer));
    }

    #[test]
    fn a_version_2_memory_is_read_as_forgotten_decisions_of_unknown_place() {
        let mut bytes = memory_parts_bytes(40, VERSION_WITH_KNOWN_IDS);
        put_u64(&mut bytes, 0);
        let (parts, carried) = decode_after_features(&bytes, VERSION_WITH_KNOWN_IDS).unwrap();
        assert_eq!(carried.map(|c| c.len()), Some(0));
        assert_eq!((parts.decisions.len(), parts.forgotten.len(), parts.forgotten.declined), (40, 40, 8));
        assert!(parts.forgotten.iter().all(|(_, f)| f.journal_seq.is_none() && f.label.is_none()));
        assert!(decode_after_features(&bytes, VERSION).is_err(), "version 3 keeps 16 bytes per id");
    }

    #[test]
    fn the_memory_and_carried_records_decode_and_damage_is_an_error_never_a_panic() {
        let mut bytes = memory_parts_bytes(40, VERSION);
        let carried: Vec<Carried> = vec![(3, 7, b"ruleset".to_vec()), (32, 1 << 60, Vec::new())];
        put_u64(&mut bytes, carried.len() as u64);
        for (record_type, timestamp_ns, payload) in &carried {
            bytes.push(*record_type);
            put_fixed_u64(&mut bytes, *timestamp_ns);
            put_u64(&mut bytes, payload.len() as u64);
            bytes.extend_from_slice(payload);
        }
        let (parts, read) = decode_after_features(&bytes, VERSION).unwrap();
        assert_eq!(read.as_deref(), Some(&carried[..]));
        assert_eq!((parts.decisions.len(), parts.forgotten.len(), parts.forgotten.declined), (40, 40, 8));
        let (hash, first) = (0x9e37_79b9_7f4a_7c15u64, parts.forgotten.get(0x9e37_79b9_7f4a_7c15u64));
        assert_eq!(
            first,
            Some(Forgotten {
                journal_seq: Some(1_000),
                label: Some(Label::Fraud),
                declined_transfer: true,
                reviewed_transfer: false
            })
        );
        // Version 4 keeps which decisions held a transfer for review, remembered or forgotten.
        let reviewed = |parts: &MemoryParts| {
            let remembered = parts.decisions.iter().filter(|(_, d)| d.reviewed_transfer).count();
            let forgotten = parts.forgotten.iter().filter(|(_, f)| f.reviewed_transfer).count();
            (remembered, forgotten)
        };
        assert_eq!(reviewed(&parts), (8, 8));
        // Version 3 has none: its remembered ones cannot say so, its forgotten ones are read
        // without the flag (its bit is the sequence's there).
        let mut v3 = memory_parts_bytes(40, VERSION_WITHOUT_REVIEWED);
        put_u64(&mut v3, 0);
        let (parts_v3, _) = decode_after_features(&v3, VERSION_WITHOUT_REVIEWED).unwrap();
        assert_eq!(reviewed(&parts_v3), (0, 0));
        assert_eq!(parts_v3.forgotten.declined, 8);
        let mut flagged = memory_parts_bytes(40, VERSION);
        put_u64(&mut flagged, 0);
        assert!(
            decode_after_features(&flagged, VERSION_WITHOUT_REVIEWED).is_err(),
            "a remembered review's flag is not a version-3 value"
        );
        assert!(parts.forgotten.contains(hash));
        assert_eq!(parts.decisions[2].1.label, Some(Label::Legit));
        assert_eq!((parts.decisions[3].1.journal_seq, parts.decisions[2].1.journal_seq), (Some(3), None));
        assert_eq!(parts.reviews.page("t", None, 10).0[0].reasons, ["velocity"]);
        // A version-1 snapshot ends after the memory.
        let memory_only = memory_parts_bytes(40, VERSION_WITHOUT_CARRIED);
        let (_, none) = decode_after_features(&memory_only, VERSION_WITHOUT_CARRIED).unwrap();
        assert!(none.is_none());
        assert!(
            decode_after_features(&memory_only, VERSION_WITH_KNOWN_IDS).is_err(),
            "version 2 needs its records"
        );
        assert!(decode_after_features(&bytes, VERSION_WITHOUT_CARRIED).is_err(), "bytes after version 1");
        // Every cut and every flipped byte: an error or a memory, never a panic.
        for cut in 0..bytes.len() {
            assert!(decode_after_features(&bytes[..cut], VERSION).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                let _ = decode_after_features(&damaged, VERSION);
            }
        }
    }
}
