//! JSON Lines and CSV writers over any `io::Write` (the core does no file I/O).
//!
//! JSONL: first one `{"type":"account",…}` line per account, then one `{"type":"transfer",…}` line
//! per transfer. A transfer's `risk_context` has the shape of the HTTP API's `risk_context`
//! (`device_id`, `ip`, `channel`, `country`, `mcc`, `kyc_tier`, `attributes.txn_type`), so it can
//! be posted as is. CSV: one row per transfer, [`CSV_HEADER`] first. Field order is fixed and every
//! number is an integer, so the bytes depend only on the simulation.

use std::io::{self, Write};

use crate::calendar::rfc3339;
use crate::model::{Account, Transfer};
use crate::population::Population;

/// The CSV header line (without the newline).
pub const CSV_HEADER: &str =
    "seq,id,timestamp_ms,time,kind,debit_account_id,credit_account_id,amount_minor,currency,\
device_id,ip,channel,country,mcc,kyc_tier,txn_type,label,case_id,parent_seq";

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `s` as a CSV field (quoted only if it needs to be).
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// One account as a JSON line (with the trailing newline).
pub fn account_json(account: &Account, currency: &str) -> String {
    let mut line = String::with_capacity(160);
    line.push_str("{\"type\":\"account\",\"id\":");
    json_string(&mut line, &account.id);
    line.push_str(",\"kind\":");
    json_string(&mut line, account.kind.as_str());
    line.push_str(",\"currency\":");
    json_string(&mut line, currency);
    line.push_str(&format!(
        ",\"wallet\":{},\"kyc_tier\":{},\"region\":{},\"fraud_controlled\":{}}}\n",
        account.wallet, account.kyc_tier, account.region, account.fraud_controlled
    ));
    line
}

/// One transfer as a JSON line (with the trailing newline).
pub fn transfer_json(t: &Transfer, population: &Population, currency: &str) -> String {
    let mut line = String::with_capacity(400);
    line.push_str(&format!("{{\"type\":\"transfer\",\"seq\":{},\"id\":\"{}\",", t.seq, t.id()));
    line.push_str(&format!("\"timestamp_ms\":{},\"time\":\"{}\",", t.timestamp_ms, rfc3339(t.timestamp_ms)));
    line.push_str(&format!("\"kind\":\"{}\",\"debit_account_id\":", t.kind.as_str()));
    json_string(&mut line, &population.account(t.debit).id);
    line.push_str(",\"credit_account_id\":");
    json_string(&mut line, &population.account(t.credit).id);
    line.push_str(&format!(",\"amount_minor\":{},\"currency\":", t.amount_minor));
    json_string(&mut line, currency);
    line.push_str(",\"risk_context\":");
    match &t.context {
        None => line.push_str("null"),
        Some(c) => {
            line.push_str("{\"device_id\":");
            json_string(&mut line, &c.device_id);
            line.push_str(",\"ip\":");
            json_string(&mut line, &c.ip);
            line.push_str(",\"channel\":");
            json_string(&mut line, c.channel);
            line.push_str(",\"country\":");
            json_string(&mut line, c.country);
            if let Some(mcc) = c.mcc {
                line.push_str(",\"mcc\":");
                json_string(&mut line, mcc);
            }
            line.push_str(&format!(",\"kyc_tier\":\"{}\",\"attributes\":{{\"txn_type\":", c.kyc_tier));
            json_string(&mut line, c.txn_type);
            line.push_str("}}");
        }
    }
    line.push_str(",\"label\":");
    match t.label {
        None => line.push_str("null"),
        Some(l) => json_string(&mut line, l.as_str()),
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    line.push_str(&format!(
        ",\"case_id\":{},\"parent_seq\":{}}}\n",
        opt(t.case_id.map(u64::from)),
        opt(t.parent_seq)
    ));
    line
}

/// One transfer as a CSV row (with the trailing newline).
pub fn transfer_csv(t: &Transfer, population: &Population, currency: &str) -> String {
    let mut row = String::with_capacity(256);
    row.push_str(&format!(
        "{},{},{},{},{},",
        t.seq,
        t.id(),
        t.timestamp_ms,
        rfc3339(t.timestamp_ms),
        t.kind.as_str()
    ));
    csv_field(&mut row, &population.account(t.debit).id);
    row.push(',');
    csv_field(&mut row, &population.account(t.credit).id);
    row.push_str(&format!(",{},", t.amount_minor));
    csv_field(&mut row, currency);
    match &t.context {
        None => row.push_str(",,,,,,,"),
        Some(c) => {
            row.push(',');
            csv_field(&mut row, &c.device_id);
            row.push(',');
            csv_field(&mut row, &c.ip);
            row.push_str(&format!(
                ",{},{},{},{},{}",
                c.channel,
                c.country,
                c.mcc.unwrap_or(""),
                c.kyc_tier,
                c.txn_type
            ));
        }
    }
    row.push_str(&format!(
        ",{},{},{}\n",
        t.label.map_or("", |l| l.as_str()),
        t.case_id.map_or(String::new(), |c| c.to_string()),
        t.parent_seq.map_or(String::new(), |p| p.to_string())
    ));
    row
}

/// Writes every account of `population` as JSON lines.
pub fn write_accounts_jsonl(out: &mut impl Write, population: &Population, currency: &str) -> io::Result<()> {
    for a in &population.accounts {
        out.write_all(account_json(a, currency).as_bytes())?;
    }
    Ok(())
}

/// Runs `sim` to the end, writing the accounts then every transfer as JSON lines; returns the
/// number of transfers.
pub fn write_jsonl(out: &mut impl Write, sim: &mut crate::Simulation) -> io::Result<u64> {
    let currency = sim.params().currency;
    let population = sim.population().clone();
    write_accounts_jsonl(out, &population, currency)?;
    let mut n = 0;
    for t in sim {
        out.write_all(transfer_json(&t, &population, currency).as_bytes())?;
        n += 1;
    }
    Ok(n)
}

/// Runs `sim` to the end, writing every transfer as a CSV row after the header; returns the number
/// of transfers.
pub fn write_csv(out: &mut impl Write, sim: &mut crate::Simulation) -> io::Result<u64> {
    let currency = sim.params().currency;
    let population = sim.population().clone();
    writeln!(out, "{CSV_HEADER}")?;
    let mut n = 0;
    for t in sim {
        out.write_all(transfer_csv(&t, &population, currency).as_bytes())?;
        n += 1;
    }
    Ok(n)
}
