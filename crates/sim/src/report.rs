//! The report of a run through risk control and the ledger: a terminal table and a self-contained
//! HTML page with inline SVG charts (no scripts, no external resources). Pure formatting: the
//! caller measures, this module renders.

use std::fmt::Write as _;

use crate::eval::Scoreboard;
use crate::model::Typology;

/// Width of a score bin in the score histogram.
pub const SCORE_BIN_WIDTH: i64 = 10;
/// Score bins: `[0, 10)`, `[10, 20)` … and the last one open (`≥ 200`).
pub const SCORE_BINS: usize = 21;

/// The bin of `score` (negative scores go to the first bin).
pub fn score_bin(score: i64) -> usize {
    ((score.max(0) / SCORE_BIN_WIDTH) as usize).min(SCORE_BINS - 1)
}

/// One simulated hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourPoint {
    /// Transfers posted (or held) in the ledger (opening balances left out: they are set-up).
    pub posted: u64,
    /// Their amount, minor units.
    pub amount_minor: u64,
    /// Labelled (abusive) transfers decided.
    pub abusive: u64,
    /// Of them, flagged.
    pub abusive_flagged: u64,
    /// Legitimate transfers flagged.
    pub legitimate_flagged: u64,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Preset name.
    pub preset: String,
    /// Seed.
    pub seed: u64,
    /// Simulated days.
    pub days: u32,
    /// Warm-up days (left out of detection figures).
    pub warmup_days: u32,
    /// Start of the simulation, Unix ms.
    pub start_unix_ms: u64,
    /// Currency code (exponent 2).
    pub currency: String,
    /// Ruleset version.
    pub ruleset_version: String,
    /// Accounts created.
    pub accounts: u64,
    /// Wall time of the simulate-decide-post phase, seconds.
    pub run_secs: f64,
    /// Wall time of the whole command, seconds.
    pub total_secs: f64,
    /// Ledger events written (transfers, holds, review resolutions).
    pub ledger_events: u64,
    /// Risk decisions made.
    pub decisions: u64,
    /// Decision latency percentiles, microseconds: p50, p99, p99.9, max.
    pub latency_us: [f64; 4],
    /// Decisions: approve, review, decline.
    pub outcomes: [u64; 3],
    /// Transfers the ledger refused, by result code.
    pub ledger_refused: Vec<(String, u64)>,
    /// Fees and cashback not booked because their payment was declined or held.
    pub children_skipped: u64,
    /// Review holds the analyst posted (legitimate) and voided (abusive).
    pub reviews_resolved: (u64, u64),
    /// Posted volume by transfer kind: (kind, count, amount in minor units).
    pub volumes: Vec<(String, u64, u64)>,
    /// Per simulated hour.
    pub hourly: Vec<HourPoint>,
    /// Score histogram per label (`legitimate` first, then each typology), [`SCORE_BINS`] bins.
    pub scores: Vec<(String, Vec<u64>)>,
    /// Decisions against labels (after the warm-up).
    pub scoreboard: Scoreboard,
    /// Merchant revenue over the run (posted QR payments), largest first, minor units.
    pub merchant_revenue_minor: Vec<u64>,
    /// The journal-verify line.
    pub journal: String,
    /// Whether the journal verified.
    pub journal_ok: bool,
    /// Where the data directory is.
    pub data_dir: String,
}

fn pct(x: Option<f64>) -> String {
    x.map_or("—".to_string(), |v| format!("{:.1} %", v * 100.0))
}

/// Major units with thousands separators, from minor units (exponent 2).
pub fn money(minor: u64) -> String {
    let major = minor / 100;
    let digits = major.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out}.{:02}", minor % 100)
}

fn thousands(n: u64) -> String {
    money(n * 100).trim_end_matches(".00").to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl RunReport {
    /// Ledger events per second of the run phase.
    pub fn transfers_per_sec(&self) -> f64 {
        self.ledger_events as f64 / self.run_secs.max(1e-9)
    }

    /// Share of merchant revenue taken by the top 10 % of merchants.
    pub fn top_decile_share(&self) -> f64 {
        let total: u64 = self.merchant_revenue_minor.iter().sum();
        let top: u64 = self.merchant_revenue_minor.iter().take(self.merchant_revenue_minor.len() / 10).sum();
        if total == 0 {
            0.0
        } else {
            top as f64 / total as f64
        }
    }

    /// The terminal report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let total_count: u64 = self.volumes.iter().map(|v| v.1).sum();
        let total_amount: u64 = self.volumes.iter().map(|v| v.2).sum();
        let _ = writeln!(s, "\nVolumes posted ({} simulated days)", self.days);
        let _ =
            writeln!(s, "  {:<18} {:>12} {:>20}", "kind", "transfers", format!("amount ({})", self.currency));
        for (kind, count, amount) in &self.volumes {
            let _ = writeln!(s, "  {kind:<18} {:>12} {:>20}", thousands(*count), money(*amount));
        }
        let _ = writeln!(s, "  {:<18} {:>12} {:>20}", "total", thousands(total_count), money(total_amount));
        let _ = writeln!(
            s,
            "\nThroughput: {} ledger events in {:.1} s = {} transfers/s (decide + post + fsync, one core for decisions)",
            thousands(self.ledger_events),
            self.run_secs,
            thousands(self.transfers_per_sec() as u64)
        );
        let [p50, p99, p999, max] = self.latency_us;
        let _ = writeln!(
            s,
            "Risk decisions: {} — latency p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs, max {max:.0} µs",
            thousands(self.decisions)
        );
        let [a, r, d] = self.outcomes;
        let _ = writeln!(
            s,
            "Outcomes: approve {} · review {} (held; analyst posted {}, voided {}) · decline {}",
            thousands(a),
            thousands(r),
            thousands(self.reviews_resolved.0),
            thousands(self.reviews_resolved.1),
            thousands(d)
        );
        if !self.ledger_refused.is_empty() {
            let refused: Vec<String> =
                self.ledger_refused.iter().map(|(c, n)| format!("{c} {}", thousands(*n))).collect();
            let _ = writeln!(s, "Refused by the ledger: {}", refused.join(", "));
        }
        let _ = writeln!(
            s,
            "\nDetection against the labels (ruleset {}, after {} warm-up day{}; flagged = review or decline)",
            self.ruleset_version,
            self.warmup_days,
            if self.warmup_days == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            s,
            "  {:<20} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10}",
            "typology", "labelled", "flagged", "recall", "cases found", "precision", "on-target"
        );
        let b = &self.scoreboard;
        for t in Typology::ALL {
            let c = b.typology(t);
            let (caught, seen) = b.cases(t);
            let _ = writeln!(
                s,
                "  {:<20} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10}",
                t.as_str(),
                thousands(c.scored),
                thousands(c.flagged()),
                pct(b.recall(t)),
                format!("{caught}/{seen}"),
                pct(b.precision(t)),
                pct(b.on_target(t))
            );
        }
        let legit = b.legitimate();
        let _ = writeln!(
            s,
            "  {:<20} {:>9} {:>9} {:>9}   (false-positive rate)",
            "legitimate",
            thousands(legit.scored),
            thousands(legit.flagged()),
            pct(Some(b.false_positive_rate()))
        );
        let _ = writeln!(s, "  overall precision (flagged that are abusive): {}", pct(b.overall_precision()));
        let _ = writeln!(
            s,
            "\nMerchants: the top 10 % took {:.0} % of QR revenue (heavy tail)",
            self.top_decile_share() * 100.0
        );
        let _ = writeln!(s, "{}", self.journal);
        s
    }

    /// The self-contained HTML report.
    pub fn html(&self) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let _ = write!(
            h,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>puhui demo report</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\
body{{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:980px;color:#1d2733;padding:0 1rem}}\
h1{{font-size:1.6rem;margin-bottom:.2rem}}h2{{font-size:1.15rem;margin-top:2.2rem;border-bottom:1px solid #dde3ea;padding-bottom:.3rem}}\
table{{border-collapse:collapse;margin:.6rem 0}}td,th{{padding:.25rem .7rem;text-align:right;border-bottom:1px solid #eef1f4}}\
th{{background:#f5f7fa}}td:first-child,th:first-child{{text-align:left}}.muted{{color:#66737f}}\
.ok{{color:#1b7f3b;font-weight:600}}.bad{{color:#b42318;font-weight:600}}.kpi{{display:flex;gap:1rem;flex-wrap:wrap}}\
.kpi div{{background:#f5f7fa;border-radius:8px;padding:.6rem 1rem;min-width:140px}}.kpi b{{display:block;font-size:1.3rem}}\
svg text{{font:11px system-ui,sans-serif;fill:#3b4652}}</style></head><body>"
        );
        let _ = write!(
            h,
            "<h1>puhui demo report</h1><p class=\"muted\">Preset <b>{}</b>, seed {}, {} simulated days from {} \
(first {} warm-up), ruleset <b>{}</b>, {} accounts. Data directory: <code>{}</code></p>",
            escape(&self.preset),
            self.seed,
            self.days,
            &crate::calendar::rfc3339(self.start_unix_ms)[..10],
            self.warmup_days,
            escape(&self.ruleset_version),
            thousands(self.accounts),
            escape(&self.data_dir)
        );
        let [p50, p99, ..] = self.latency_us;
        let b = &self.scoreboard;
        let _ = write!(
            h,
            "<div class=\"kpi\"><div>ledger events<b>{}</b></div><div>transfers/s<b>{}</b></div>\
<div>decision p50 / p99<b>{p50:.0} / {p99:.0} µs</b></div><div>false-positive rate<b>{}</b></div>\
<div>journal<b class=\"{}\">{}</b></div></div>",
            thousands(self.ledger_events),
            thousands(self.transfers_per_sec() as u64),
            pct(Some(b.false_positive_rate())),
            if self.journal_ok { "ok" } else { "bad" },
            if self.journal_ok { "verified" } else { "FAILED" }
        );

        h.push_str("<h2>Volume over time</h2><p class=\"muted\">Transfers posted per simulated hour (bars) and abusive transfers decided per hour (red), with the share risk control flagged.</p>");
        h.push_str(&self.volume_svg());
        h.push_str("<h2>Detection by typology</h2><p class=\"muted\">Recall: share of the typology's transfers held or declined. Cases: share of injected cases with at least one transfer flagged. Precision: of the transfers flagged by the rules written for the typology, the share that are abusive; on-target: the share that are that very typology.</p>");
        h.push_str(&self.recall_svg());
        h.push_str("<table><tr><th>typology</th><th>labelled</th><th>flagged</th><th>recall</th><th>cases found</th><th>precision</th><th>on-target</th></tr>");
        for t in Typology::ALL {
            let c = b.typology(t);
            let (caught, seen) = b.cases(t);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{caught}/{seen}</td><td>{}</td><td>{}</td></tr>",
                t.as_str(),
                thousands(c.scored),
                thousands(c.flagged()),
                pct(b.recall(t)),
                pct(b.precision(t)),
                pct(b.on_target(t))
            );
        }
        let legit = b.legitimate();
        let _ = write!(
            h,
            "<tr><td>legitimate</td><td>{}</td><td>{}</td><td>{} (false positives)</td><td></td><td></td><td></td></tr></table>\
<p>Overall precision (flagged transfers that are abusive): <b>{}</b></p>",
            thousands(legit.scored),
            thousands(legit.flagged()),
            pct(Some(b.false_positive_rate())),
            pct(b.overall_precision())
        );
        h.push_str("<h2>Score distribution by label</h2><p class=\"muted\">Each row is one label; a cell is the share of that label's decisions with a score in the bin (darker = more). Review at 50, decline at 100 in the starter ruleset.</p>");
        h.push_str(&self.scores_svg());
        h.push_str("<h2>Decisions and the ledger</h2><table>");
        let [a, r, d] = self.outcomes;
        let [p50, p99, p999, max] = self.latency_us;
        for (k, v) in [
            ("risk decisions", thousands(self.decisions)),
            ("approve / review / decline", format!("{} / {} / {}", thousands(a), thousands(r), thousands(d))),
            (
                "review holds posted / voided by the analyst",
                format!("{} / {}", thousands(self.reviews_resolved.0), thousands(self.reviews_resolved.1)),
            ),
            (
                "decision latency p50 / p99 / p99.9 / max",
                format!("{p50:.1} / {p99:.1} / {p999:.1} / {max:.0} µs"),
            ),
            ("run phase (simulate, decide, post, fsync)", format!("{:.1} s", self.run_secs)),
            ("whole command", format!("{:.1} s", self.total_secs)),
            ("fees and cashback skipped (payment not posted)", thousands(self.children_skipped)),
        ] {
            let _ = write!(h, "<tr><td>{k}</td><td>{v}</td></tr>");
        }
        for (code, n) in &self.ledger_refused {
            let _ = write!(
                h,
                "<tr><td>refused by the ledger: <code>{}</code></td><td>{}</td></tr>",
                escape(code),
                thousands(*n)
            );
        }
        h.push_str("</table><h2>Volumes</h2><table><tr><th>kind</th><th>transfers</th>");
        let _ = write!(h, "<th>amount ({})</th></tr>", escape(&self.currency));
        for (kind, count, amount) in &self.volumes {
            let _ = write!(
                h,
                "<tr><td>{kind}</td><td>{}</td><td>{}</td></tr>",
                thousands(*count),
                money(*amount)
            );
        }
        h.push_str("</table><h2>Merchant revenue</h2>");
        let _ = write!(
            h,
            "<p class=\"muted\">Posted QR revenue per merchant, largest first (log scale): the top 10 % took {:.0} %.</p>",
            self.top_decile_share() * 100.0
        );
        h.push_str(&self.merchants_svg());
        let _ = writeln!(
            h,
            "<h2>Journal</h2><p class=\"{}\">{}</p><p class=\"muted\">Generated by <code>puhui demo</code>. Labels are the simulator's ground truth; the analyst resolving reviews uses them (a perfect analyst).</p></body></html>",
            if self.journal_ok { "ok" } else { "bad" },
            escape(&self.journal)
        );
        h
    }

    fn volume_svg(&self) -> String {
        let (w, ht, left, bottom) = (940.0, 240.0, 50.0, 30.0);
        let n = self.hourly.len().max(1);
        let max = self.hourly.iter().map(|p| p.posted).max().unwrap_or(0).max(1) as f64;
        let max_abuse = self.hourly.iter().map(|p| p.abusive).max().unwrap_or(0).max(1) as f64;
        let bw = (w - left - 10.0) / n as f64;
        let plot_h = ht - bottom - 10.0;
        let mut s = format!(
            "<svg viewBox=\"0 0 {w} {ht}\" width=\"100%\" role=\"img\" aria-label=\"transfers per hour\">"
        );
        for (i, p) in self.hourly.iter().enumerate() {
            let bh = p.posted as f64 / max * plot_h;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.2}\" height=\"{bh:.1}\" fill=\"#7aa7d8\"><title>hour {i}: {} transfers</title></rect>",
                left + i as f64 * bw,
                10.0 + plot_h - bh,
                (bw - 0.3).max(0.5),
                p.posted
            );
        }
        let mut line = String::new();
        for (i, p) in self.hourly.iter().enumerate() {
            let x = left + (i as f64 + 0.5) * bw;
            let y = 10.0 + plot_h - p.abusive as f64 / max_abuse * plot_h * 0.9;
            let _ = write!(line, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" });
        }
        let _ = write!(s, "<path d=\"{line}\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.4\"/>");
        let _ = write!(
            s,
            "<text x=\"{left}\" y=\"9\">max {} / h</text><text x=\"{}\" y=\"9\" text-anchor=\"end\" fill=\"#c0392b\">abusive decided (max {} / h)</text>",
            max as u64,
            w - 10.0,
            max_abuse as u64
        );
        for d in 0..=self.days {
            let x = left + (d as f64 * 24.0) * bw;
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"10\" y2=\"{:.1}\" stroke=\"#c9d2dc\" stroke-dasharray=\"2,3\"/>",
                10.0 + plot_h
            );
            if d < self.days {
                let date = crate::calendar::rfc3339(self.start_unix_ms + d as u64 * crate::calendar::DAY_MS);
                let weekday = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][crate::calendar::date_of_day(
                    self.start_unix_ms / crate::calendar::DAY_MS + d as u64,
                )
                .weekday
                    as usize];
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{weekday} {}</text>",
                    x + 12.0 * bw,
                    ht - 10.0,
                    &date[5..10]
                );
            }
        }
        s.push_str("</svg>");
        s
    }

    fn recall_svg(&self) -> String {
        let (w, row, left) = (940.0, 34.0, 170.0);
        let ht = row * Typology::ALL.len() as f64 + 30.0;
        let bar_w = w - left - 240.0;
        let mut s = format!(
            "<svg viewBox=\"0 0 {w} {ht}\" width=\"100%\" role=\"img\" aria-label=\"recall per typology\">"
        );
        for (i, t) in Typology::ALL.iter().enumerate() {
            let y = 10.0 + i as f64 * row;
            let recall = self.scoreboard.recall(*t).unwrap_or(0.0);
            let (caught, seen) = self.scoreboard.cases(*t);
            let case_recall = if seen == 0 { 0.0 } else { caught as f64 / seen as f64 };
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
<rect x=\"{left}\" y=\"{y:.1}\" width=\"{bar_w}\" height=\"22\" fill=\"#eef1f4\"/>\
<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"22\" fill=\"#b9d3ee\"><title>cases found {caught}/{seen}</title></rect>\
<rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"12\" fill=\"#2f6db3\"><title>transfer recall</title></rect>\
<text x=\"{:.1}\" y=\"{:.1}\">{} transfers · {} cases</text>",
                left - 8.0,
                y + 15.0,
                t.as_str(),
                case_recall * bar_w,
                y + 5.0,
                recall * bar_w,
                left + bar_w + 6.0,
                y + 15.0,
                pct(Some(recall)),
                pct(Some(case_recall))
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"#2f6db3\"/><text x=\"{:.1}\" y=\"{:.1}\">transfer recall</text>\
<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"#b9d3ee\"/><text x=\"{:.1}\" y=\"{:.1}\">case recall</text></svg>",
            ht - 16.0,
            left + 16.0,
            ht - 7.0,
            left + 130.0,
            ht - 16.0,
            left + 146.0,
            ht - 7.0
        );
        s
    }

    fn scores_svg(&self) -> String {
        let (left, cell_w, cell_h, top) = (170.0, 36.0, 26.0, 22.0);
        let w = left + cell_w * SCORE_BINS as f64 + 10.0;
        let ht = top + cell_h * self.scores.len() as f64 + 10.0;
        let mut s = format!("<svg viewBox=\"0 0 {w} {ht}\" width=\"100%\" role=\"img\" aria-label=\"score distribution by label\">");
        for bin in 0..SCORE_BINS {
            let label = if bin == SCORE_BINS - 1 {
                format!("≥{}", bin as i64 * SCORE_BIN_WIDTH)
            } else {
                (bin as i64 * SCORE_BIN_WIDTH).to_string()
            };
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"14\" text-anchor=\"middle\">{label}</text>",
                left + (bin as f64 + 0.5) * cell_w
            );
        }
        for (r, (label, bins)) in self.scores.iter().enumerate() {
            let y = top + r as f64 * cell_h;
            let total: u64 = bins.iter().sum();
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{} ({})</text>",
                left - 8.0,
                y + 17.0,
                escape(label),
                thousands(total)
            );
            for (bin, &n) in bins.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { n as f64 / total as f64 };
                let x = left + bin as f64 * cell_w;
                let opacity = if n == 0 { 0.0 } else { 0.08 + 0.92 * share.sqrt() };
                let colour = if bin as i64 * SCORE_BIN_WIDTH >= 100 {
                    "#b42318"
                } else if bin as i64 * SCORE_BIN_WIDTH >= 50 {
                    "#d97706"
                } else {
                    "#2f6db3"
                };
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"{opacity:.3}\" stroke=\"#fff\"><title>{}: {n} ({:.1} %)</title></rect>",
                    cell_w,
                    cell_h,
                    escape(label),
                    share * 100.0
                );
                if share >= 0.01 {
                    let _ = write!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" style=\"fill:{}\">{:.0}</text>",
                        x + cell_w / 2.0,
                        y + 17.0,
                        if share > 0.3 { "#fff" } else { "#1d2733" },
                        share * 100.0
                    );
                }
            }
        }
        s.push_str("</svg>");
        s
    }

    fn merchants_svg(&self) -> String {
        let (w, ht, left, bottom) = (940.0, 220.0, 60.0, 24.0);
        let values: Vec<u64> = self.merchant_revenue_minor.iter().copied().filter(|v| *v > 0).collect();
        let mut s = format!("<svg viewBox=\"0 0 {w} {ht}\" width=\"100%\" role=\"img\" aria-label=\"merchant revenue by rank\">");
        if values.len() >= 2 {
            let lmax = (values[0] as f64).log10();
            let lmin = (values[values.len() - 1] as f64).log10().min(lmax - 1.0);
            let plot_h = ht - bottom - 10.0;
            let mut d = String::new();
            for (i, v) in values.iter().enumerate() {
                let x = left + i as f64 / (values.len() - 1) as f64 * (w - left - 10.0);
                let y = 10.0 + (lmax - (*v as f64).log10()) / (lmax - lmin) * plot_h;
                let _ = write!(d, "{}{x:.1},{y:.1}", if i == 0 { "M" } else { " L" });
            }
            let _ = write!(s, "<path d=\"{d}\" fill=\"none\" stroke=\"#2f6db3\" stroke-width=\"1.6\"/>");
            let decile_x = left + 0.1 * (w - left - 10.0);
            let _ = write!(
                s,
                "<line x1=\"{decile_x:.1}\" x2=\"{decile_x:.1}\" y1=\"10\" y2=\"{:.1}\" stroke=\"#d97706\" stroke-dasharray=\"3,3\"/>\
<text x=\"{:.1}\" y=\"24\" fill=\"#d97706\">top 10 %: {:.0} % of revenue</text>\
<text x=\"4\" y=\"16\">{}</text><text x=\"4\" y=\"{:.1}\">{}</text>\
<text x=\"{left}\" y=\"{:.1}\">rank 1</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">rank {}</text>",
                10.0 + plot_h,
                decile_x + 6.0,
                self.top_decile_share() * 100.0,
                money(values[0]).split('.').next().unwrap_or(""),
                10.0 + plot_h,
                money(values[values.len() - 1]).split('.').next().unwrap_or(""),
                ht - 6.0,
                w - 10.0,
                ht - 6.0,
                values.len()
            );
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Verdict;

    #[test]
    fn the_report_renders_self_contained() {
        let mut r = RunReport {
            preset: "small".into(),
            days: 2,
            currency: "CNY".into(),
            hourly: vec![
                HourPoint {
                    posted: 10,
                    amount_minor: 1_000,
                    abusive: 1,
                    abusive_flagged: 1,
                    legitimate_flagged: 0
                };
                48
            ],
            scores: vec![("legitimate".into(), vec![1; SCORE_BINS])],
            merchant_revenue_minor: vec![100_000, 5_000, 300, 20],
            journal: "journal verify: OK".into(),
            journal_ok: true,
            ..Default::default()
        };
        r.scoreboard.record(
            Some(Typology::CardTesting),
            Some(0),
            Verdict::Reviewed,
            &[Typology::CardTesting],
        );
        let html = r.html();
        assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>\n"));
        assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(r.text().contains("card_testing"));
        assert_eq!(money(123_456_789), "1,234,567.89");
        assert_eq!(score_bin(-5), 0);
        assert_eq!(score_bin(55), 5);
        assert_eq!(score_bin(10_000), SCORE_BINS - 1);
    }
}
