//! Fuzz-style properties of the parsers: no input makes them panic, and encoding round-trips.

use proptest::prelude::*;
use puhui_journal::codec::{decode, decode_record, encode_record, Event, KIND_RECORD, KIND_TRANSFER};
use puhui_journal::frame::{encode_frame_header, scan};
use puhui_ledger::wire::encode_request;
use puhui_ledger::{CurrencyCode, Id, References, ResultCode, TransferKind, TransferRequest};

fn arb_id() -> impl Strategy<Value = Id> {
    "[A-Za-z0-9_.:-]{1,64}".prop_map(|s| Id::new(&s).unwrap())
}

fn arb_request() -> impl Strategy<Value = TransferRequest> {
    (
        (arb_id(), 0u8..4, proptest::option::of(arb_id()), proptest::option::of(arb_id())),
        (
            proptest::option::of(arb_id()),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[A-Z]{3}"),
        ),
        (proptest::option::of(any::<u64>()), any::<u32>()),
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of("[ -~]{1,35}"),
            proptest::option::of(any::<[u8; 16]>()),
        ),
    )
        .prop_map(
            |(
                (id, kind, pending_id, debit_account_id),
                (credit_account_id, amount_minor, currency),
                (timeout_ms, code),
                (metadata, e2e, uetr),
            )| TransferRequest {
                id,
                kind: TransferKind::from_u8(kind).unwrap(),
                pending_id,
                debit_account_id,
                credit_account_id,
                amount_minor,
                currency: currency.map(|c| CurrencyCode::new(&c).unwrap()),
                timeout_ms,
                code,
                metadata: metadata.map(Into::into),
                references: References { end_to_end_id: e2e.map(Into::into), uetr },
                linked: false,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(kind in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(kind, &body);
    }

    #[test]
    fn transfer_entries_round_trip(request in arb_request(), ts in any::<u64>(), result in 0u8..44) {
        let result = ResultCode::from_u8(result).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&ts.to_le_bytes());
        body.push(result as u8);
        encode_request(&request, &mut body);
        let decoded = decode(KIND_TRANSFER, &body).unwrap();
        prop_assert_eq!(decoded, Event::Transfer { request: request.clone(), timestamp_ns: ts, result });
        // Any truncation is an error, never a panic or a wrong value.
        for cut in 0..body.len() {
            prop_assert!(decode(KIND_TRANSFER, &body[..cut]).is_err());
        }
    }

    #[test]
    fn record_entries_decode_borrowed_as_they_do_owned(
        record_type in any::<u8>(),
        ts in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut body = Vec::new();
        prop_assert_eq!(encode_record(record_type, ts, &payload, &mut body), KIND_RECORD);
        prop_assert_eq!(decode_record(&body).unwrap(), (record_type, ts, &payload[..]));
        prop_assert_eq!(
            decode(KIND_RECORD, &body).unwrap(),
            Event::Record { record_type, timestamp_ns: ts, payload: payload.clone() }
        );
        for cut in 0..body.len() {
            prop_assert!(decode_record(&body[..cut]).is_err());
        }
        body.push(0);
        prop_assert!(decode_record(&body).is_err(), "a trailing byte");
        let _ = decode_record(&garbage);
    }

    #[test]
    fn scanning_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2_000), prefix in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.phj");
        let mut content = Vec::new();
        if prefix {
            // A valid header in front of garbage.
            content.extend_from_slice(&encode_frame_header(3, bytes.len() as u32, 0));
        }
        content.extend_from_slice(&bytes);
        std::fs::write(&path, &content).unwrap();
        let _ = scan(&path, |_| Ok(()));
        let _ = puhui_journal::recover(&path);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut content = b"PHS2".to_vec();
        content.extend_from_slice(&bytes);
        let _ = puhui_ledger::Ledger::decode_snapshot(&content);
        let _ = puhui_ledger::Ledger::decode_snapshot(&bytes);
    }

    #[test]
    fn a_truncated_snapshot_is_refused(cut_permille in 0usize..1000) {
        let mut ledger = puhui_ledger::Ledger::new();
        let cny = puhui_ledger::Currency::iso("CNY").unwrap();
        let id = |s: &str| Id::new(s).unwrap();
        ledger.create_accounts(vec![
            puhui_ledger::NewAccount::new(id("a"), cny),
            puhui_ledger::NewAccount::new(id("b"), cny),
        ], 1);
        ledger.create_transfers(vec![
            TransferRequest::single(id("t1"), id("a"), id("b"), 5, cny.code()),
            TransferRequest::pending(id("t2"), id("a"), id("b"), 7, cny.code(), Some(10)),
        ], 2);
        let content = ledger.encode_snapshot().concat();
        let whole = puhui_ledger::Ledger::decode_snapshot(&content).unwrap();
        prop_assert_eq!(whole.accounts().collect::<Vec<_>>(), ledger.accounts().collect::<Vec<_>>());
        let cut = content.len() * cut_permille / 1000;
        prop_assert!(puhui_ledger::Ledger::decode_snapshot(&content[..cut]).is_err());
    }
}

/// Every entry of a scan from `start`, as (seq, kind, body, offset).
type Seen = Vec<(u64, u8, Vec<u8>, u64)>;

fn collect(
    path: &std::path::Path,
    start: puhui_journal::JournalPosition,
    buffers: Option<&mut puhui_journal::ScanBuffers>,
) -> Seen {
    let mut seen = Vec::new();
    let on_entry = |e: puhui_journal::frame::EntryRef<'_>| {
        seen.push((e.seq, e.kind, e.body.to_vec(), e.offset));
        Ok(())
    };
    match buffers {
        Some(b) => puhui_journal::scan_from_reusing(path, start, b, on_entry).unwrap(),
        None => puhui_journal::scan_from(path, start, on_entry).unwrap(),
    };
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A tail's reused buffers read exactly what fresh ones do, from any frame boundary, whatever
    /// sizes the buffers grew to on earlier scans (frames and bodies of every size around the read
    /// buffer's 8 KiB floor).
    #[test]
    fn scans_through_reused_buffers_read_what_fresh_ones_do(
        frames in proptest::collection::vec(proptest::collection::vec(0usize..12_000, 1..6), 1..12),
        resume_at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let summary = scan(&path, |_| Ok(())).unwrap();
        let mut writer = puhui_journal::JournalWriter::open(&path, &summary).unwrap();
        let mut boundaries = vec![writer.position()];
        for (f, bodies) in frames.iter().enumerate() {
            for (e, len) in bodies.iter().enumerate() {
                writer.append(|buf| {
                    buf.extend((0..*len).map(|i| (i + f * 7 + e) as u8));
                    (e % 5) as u8
                });
            }
            writer.commit().unwrap();
            boundaries.push(writer.position());
        }
        let resume = boundaries[resume_at.index(boundaries.len())];
        let mut buffers = puhui_journal::ScanBuffers::default();
        let start = puhui_journal::JournalPosition::start();
        prop_assert_eq!(collect(&path, start, Some(&mut buffers)), collect(&path, start, None));
        prop_assert_eq!(collect(&path, resume, Some(&mut buffers)), collect(&path, resume, None));
        prop_assert_eq!(collect(&path, start, Some(&mut buffers)), collect(&path, start, None));
    }
}

#[test]
fn a_paced_snapshot_file_reads_back_as_an_unpaced_one() {
    use puhui_journal::snapshot::{
        read_snapshot_file, write_snapshot_file, write_snapshot_file_paced, PACED_CHUNK_BYTES,
    };
    let dir = tempfile::tempdir().unwrap();
    let position = puhui_journal::JournalPosition { entries: 42, len_bytes: 4_242, last_hash: [7; 32] };
    // Two chunks of content, the first over two paced writes, the second less than one.
    let content = vec![
        (0..PACED_CHUNK_BYTES * 2 + 123).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        vec![9u8; 1_000],
    ];
    write_snapshot_file(dir.path(), "plain.phs", &position, &content).unwrap();
    let pause = Some(std::time::Duration::from_millis(1));
    write_snapshot_file_paced(dir.path(), "paced.phs", &position, &content, pause).unwrap();
    let plain = std::fs::read(dir.path().join("plain.phs")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("paced.phs")).unwrap(), plain, "byte for byte");
    let (read_position, bytes) = read_snapshot_file(dir.path(), "paced.phs").unwrap().unwrap();
    assert_eq!(read_position, position);
    assert_eq!(bytes, content.concat());
    assert!(!dir.path().join("paced.phs.tmp").exists());
}
