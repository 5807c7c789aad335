//! Rulesets (TOML) with CEL expressions, and the decision they make for one event.
//!
//! ```toml
//! version = "starter-3"
//! [thresholds]
//! review = 50        # score at which an event goes to review (a hold + an analyst)
//! decline = 100      # score at which it is declined
//!
//! [[features]]
//! name = "payer_count_1h"
//! entity = "payer"          # payer | payee | payer_inflow (what the payer received) | device | ip | attr:<name>
//! aggregate = "count"       # count | sum | max | distinct | zscore | first_seen | last_seen (seconds, -1: none)
//! window = "1h"
//!
//! [[rules]]
//! id = "burst_of_tiny_payments"
//! description = "Card/credential testing: many tiny payments in a minute"
//! expression = "f.payer_count_1m >= 10 && amount < 500"
//! score = 60                # or: outcome = "decline" | "review" | "approve"
//! reasons = ["velocity", "tiny_amounts"]
//!
//! [[models]]                # optional: gradient-boosted trees (XGBoost JSON, LightGBM text)
//! name = "fraud"            # its score (a probability) is a variable in expressions
//! path = "fraud.json"       # relative to the ruleset file
//! inputs = ["amount", "payer_count_1m", "new_device", "ctx.kyc_tier"]  # one per model feature,
//!                           # in its order; "missing" for one not supplied (NaN: the model's missing)
//! ```
//!
//! Expressions see: `amount` (int, minor units), `currency`, `payer`, `payee` (strings), `ctx` (a map
//! of the event's attributes: device_id, ip, channel, country, mcc, kyc_tier, …), every declared
//! feature by its bare name (also as `f.<name>`), each model's score by its name, `new_payee`,
//! `new_device` (bools), `payer_balance` (int: the payer's available balance before the event, in
//! minor units; -1 when unknown, e.g. a standalone decision that did not give it),
//! `payer_balance_known` (bool), and `in_list(list, value)`.
//!
//! Each expression is parsed by the `cel` crate and compiled once, at load (the `compile` module),
//! into a tree over pre-resolved slots; an expression the compiler does not reproduce exactly runs
//! on the `cel` interpreter ([`Ruleset::interpreted_rules`] names those). Compiled rules take the
//! lists' read lock at a decision's first lookup and keep it (and each (list, value) answer) until
//! the decision ends or an interpreted rule runs, so they see one state of the lists.
//!
//! Outcome: a fired `decline` rule declines; else a fired `approve` rule approves (allow lists);
//! else a fired `review` rule reviews; else the summed score against the thresholds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Deserialize;

use crate::compile;
use crate::features::{parse_window, FeatureStore, Namespace, WindowQuery, WindowStats};

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Post it.
    Approve,
    /// Hold it for an analyst.
    Review,
    /// Refuse it.
    Decline,
}

impl Outcome {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approve => "approve",
            Outcome::Review => "review",
            Outcome::Decline => "decline",
        }
    }
}

/// A ruleset that could not be loaded: which rule, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetError {
    /// The rule at fault, if the error is in one.
    pub rule_id: Option<String>,
    /// 1-based line in the file.
    pub line: usize,
    /// 1-based column in the file.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RulesetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule_id {
            Some(id) => write!(f, "rule {id} (line {}, column {}): {}", self.line, self.column, self.message),
            None => write!(f, "line {}, column {}: {}", self.line, self.column, self.message),
        }
    }
}

impl std::error::Error for RulesetError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileThresholds {
    review: toml::Spanned<i64>,
    decline: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFeature {
    name: toml::Spanned<String>,
    entity: toml::Spanned<String>,
    aggregate: toml::Spanned<String>,
    window: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    id: String,
    description: String,
    expression: toml::Spanned<String>,
    score: Option<i64>,
    outcome: Option<toml::Spanned<String>>,
    #[serde(default)]
    reasons: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    name: toml::Spanned<String>,
    path: toml::Spanned<String>,
    /// The model's input vector, in order: `amount`, `new_payee`, `new_device`, `payer_balance`
    /// (unknown = missing), a feature name, `ctx.<attribute>` (parsed as a number; missing or not
    /// a number = missing), or `missing`.
    inputs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBudget {
    /// Most microseconds a decision may take before the rest of its rules are skipped.
    decision_us: u64,
    /// The outcome when the budget is exceeded: `approve` (fail open), `review` or `decline` (fail
    /// closed). A rule that cannot be evaluated for an event (a `ctx` key it lacks, a type that does
    /// not fit) does not fire and is listed in the decision's `errors`; names no event could
    /// resolve are refused when the ruleset is parsed.
    on_exceeded: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: String,
    thresholds: FileThresholds,
    budget: Option<FileBudget>,
    #[serde(default)]
    features: Vec<FileFeature>,
    #[serde(default)]
    models: Vec<FileModel>,
    rules: Vec<FileRule>,
}

/// A gradient-boosted model whose score rules can use (as `<name>`, a probability for binary models).
pub struct ModelSlot {
    /// Name in expressions (shared with every decision's values).
    pub name: Arc<str>,
    /// The model.
    pub model: puhui_risk_model::Model,
    /// Its input vector, in order.
    pub inputs: Vec<String>,
    /// BLAKE3 of the model file's bytes, in hex.
    pub digest: String,
}

/// Which entity a feature is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    /// The payer.
    Payer,
    /// The payee.
    Payee,
    /// The payer's account as a payee: what it received (`distinct`: from how many payers).
    /// Money passed on soon after it came in from many is a mule's fan-in then fan-out.
    PayerInflow,
    /// `ctx.device_id`.
    Device,
    /// `ctx.ip`.
    Ip,
    /// Any attribute of `ctx`.
    Attribute(String),
}

/// How a feature aggregates its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Events.
    Count,
    /// Sum of amounts.
    Sum,
    /// Largest amount.
    Max,
    /// Distinct counterparties.
    Distinct,
    /// The event's amount in standard deviations from the window's mean.
    ZScore,
    /// Whole seconds since the window's oldest event of the entity (how long it has been seen,
    /// within the window); -1 if it has no event in the window.
    FirstSeen,
    /// Whole seconds since the entity's newest event before this one, within the window (how
    /// long it was quiet); -1 if it has no event in the window.
    LastSeen,
}

/// A declared feature.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Name under `f.` in expressions (shared with every decision's values).
    pub name: Arc<str>,
    /// Whose history.
    pub entity: Entity,
    /// What aggregate.
    pub aggregate: Aggregate,
    /// Window length.
    pub window_ns: u64,
}

struct Rule {
    id: Arc<str>,
    description: String,
    program: cel::Program,
    /// The expression compiled over pre-resolved slots; `None` = interpreted (`program`).
    compiled: Option<compile::Compiled>,
    score: i64,
    outcome: Option<Outcome>,
    reasons: Arc<[String]>,
}

/// A loaded, compiled ruleset.
pub struct Ruleset {
    /// Version label (decisions record it).
    pub version: String,
    /// Score for review.
    pub review_at: i64,
    /// Score for decline.
    pub decline_at: i64,
    /// Declared features.
    pub features: Vec<Feature>,
    /// Declared models.
    pub models: Vec<ModelSlot>,
    /// The time budget of a decision and what to do when it is exceeded.
    pub budget: Budget,
    rules: Vec<Rule>,
    /// The names rules see and the slots compiled rules share.
    symbols: compile::Symbols,
    /// Features grouped by entity: one scan of the entity's events serves all its windows.
    feature_groups: Vec<FeatureGroup>,
    /// Each model's input vector, resolved to where its values come from.
    model_inputs: Vec<Vec<ModelInput>>,
    /// Whether a rule or a model reads `new_payee` / `new_device` (a decision looks them up in
    /// the store, a cold pair key each, only if so; otherwise they are `false`, unread).
    reads_new_payee: bool,
    reads_new_device: bool,
    /// Whether a rule or a model reads `payer_balance` or `payer_balance_known` (the ledger looks
    /// the balance up for a transfer only if so).
    reads_payer_balance: bool,
}

/// Features over the same entity (one `FeatureStore::windows` call serves them all).
struct FeatureGroup {
    entity: Entity,
    /// The entity's distinct windows, by ascending length (`distinct` if a member needs it).
    windows: Vec<WindowQuery>,
    /// `(index into windows, index into Ruleset::features)` of each member feature.
    members: Vec<(usize, usize)>,
}

/// The stack of the thread a ruleset is parsed on (only the pages it touches are committed).
pub const PARSE_STACK_BYTES: usize = 64 << 20;

/// Windows per entity computed into a stack buffer; an entity with more uses the heap.
const WINDOWS_INLINE: usize = 8;

/// Where one model input comes from, resolved at load.
enum ModelInput {
    Amount,
    NewPayee,
    NewDevice,
    /// The payer's available balance (unknown = NaN, i.e. missing).
    PayerBalance,
    /// `ctx.<name>` parsed as a number (missing or not a number = NaN, i.e. missing).
    Attribute(String),
    /// A feature, by index.
    Feature(usize),
    /// Not resolvable (cannot happen after load's check; kept total: missing).
    Missing,
}

/// A decision's time budget (`[budget]` in the ruleset file). Everything a decision depends on runs
/// in-process (features, models, lists), so the budget is checked between rules: once it is spent,
/// the remaining rules are skipped and the decision takes `on_exceeded` (marked degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most nanoseconds a decision may take.
    pub decision_ns: u64,
    /// The outcome of a decision over budget: approve = fail open, decline = fail closed.
    pub on_exceeded: Outcome,
}

/// The names every rule can read besides its ruleset's features and models (which may not reuse them).
pub const BUILTIN_NAMES: [&str; 10] = [
    "amount",
    "currency",
    "payer",
    "payee",
    "new_payee",
    "new_device",
    "payer_balance",
    "payer_balance_known",
    "ctx",
    "f",
];

/// Most evaluation steps all of a ruleset's rules may take together in the worst case (see
/// `compile::cost`): a decision runs every rule, and its time budget is checked only between rules.
pub const RULESET_COST_MAX: u64 = 200_000;

/// Most bytes of one rule's expression.
pub const EXPRESSION_BYTES_MAX: usize = 4_096;
/// Deepest expression a ruleset may hold (every accepted expression is compiled, never left to the
/// interpreter for its depth, and evaluating it cannot overflow a thread's stack).
pub const EXPRESSION_DEPTH_MAX: usize = compile::DEPTH_MAX;

/// The budget when a ruleset names none: 5 ms, then review (neither open nor closed: the money is
/// held and a person decides).
pub const BUDGET_DEFAULT: Budget = Budget { decision_ns: 5_000_000, on_exceeded: Outcome::Review };
/// Rules evaluated between two looks at the clock (~1 µs of compiled rules: the budget is checked
/// to about a microsecond, and a decision of 100 rules reads the clock 3 times, not 12).
const BUDGET_CHECK_EVERY_RULES: usize = 32;

fn parse_outcome(text: &str) -> Option<Outcome> {
    match text {
        "approve" => Some(Outcome::Approve),
        "review" => Some(Outcome::Review),
        "decline" => Some(Outcome::Decline),
        _ => None,
    }
}

/// Most bytes of a model file.
pub const MODEL_FILE_BYTES_MAX: u64 = 64 << 20;

/// `dir` joined with a ruleset's model path, which must stay inside `dir` (relative, no `..`) and
/// name a regular file of at most [`MODEL_FILE_BYTES_MAX`] bytes: a ruleset published over the API
/// must not read other files of the server (or a device that never ends).
fn model_path(dir: &std::path::Path, path: &str) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let relative = std::path::Path::new(path);
    if path.is_empty()
        || !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("the path {path:?} must be relative to the models directory, without \"..\""));
    }
    // Messages name the path as given: they reach API clients, who need not see the server's layout.
    let full = dir.join(relative);
    let meta = std::fs::metadata(&full).map_err(|e| format!("{path}: {e}"))?;
    // A symbolic link inside the directory may not lead out of it.
    let inside = match (full.canonicalize(), dir.canonicalize()) {
        (Ok(file), Ok(dir)) => file.starts_with(dir),
        _ => false,
    };
    if !inside {
        return Err(format!("{path} leads out of the models directory"));
    }
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    if meta.len() > MODEL_FILE_BYTES_MAX {
        return Err(format!(
            "{path} has {} bytes; a model file has at most {MODEL_FILE_BYTES_MAX}",
            meta.len()
        ));
    }
    Ok(full)
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

/// Most characters of a ruleset version.
pub const VERSION_CHARS_MAX: usize = 64;

impl Ruleset {
    /// For a ruleset about to be published: why its names are unfit, or `None`. The `version` must be
    /// 1–64 of `[A-Za-z0-9_.-]` starting with a letter or digit (it appears in URLs, logs and
    /// decision records); rule ids 1–64 of the same; feature and model names identifiers
    /// (`[A-Za-z_][A-Za-z0-9_]*`, what an expression can name) other than CEL's `true`, `false`,
    /// `null` and `in_list`. Not part of [`Ruleset::parse`], so that rulesets journaled before
    /// these rules replay unchanged.
    pub fn publish_problem(text: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Named {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Head {
            version: String,
            #[serde(default)]
            rules: Vec<Named>,
            #[serde(default)]
            features: Vec<Named>,
            #[serde(default)]
            models: Vec<Named>,
        }
        let head = toml::from_str::<Head>(text).ok()?;
        let label = |v: &str| {
            !v.is_empty()
                && v.len() <= VERSION_CHARS_MAX
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        };
        if !label(&head.version) {
            return Some(format!(
                "a ruleset version is 1-{VERSION_CHARS_MAX} characters of A-Z, a-z, 0-9, _ . -, starting with a letter or digit (got {:?})",
                head.version
            ));
        }
        if let Some(id) = head.rules.iter().filter_map(|r| r.id.as_deref()).find(|id| !label(id)) {
            return Some(format!(
                "a rule id is 1-{VERSION_CHARS_MAX} characters of A-Z, a-z, 0-9, _ . - (got {id:?})"
            ));
        }
        let identifier = |v: &str| {
            v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && v.len() <= VERSION_CHARS_MAX
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !matches!(v, "true" | "false" | "null" | "in_list")
        };
        let mut names = head.features.iter().chain(&head.models).filter_map(|n| n.name.as_deref());
        if let Some(name) = names.find(|n| !identifier(n)) {
            return Some(format!(
                "a feature or model name is an identifier ([A-Za-z_][A-Za-z0-9_]*, at most {VERSION_CHARS_MAX}) other than true, false, null, in_list (got {name:?})"
            ));
        }
        None
    }

    /// Parses and compiles a ruleset; the first problem is reported with rule id, line and column.
    /// Model paths are relative to the working directory (see [`Ruleset::parse_in`]).
    pub fn parse(text: &str) -> Result<Ruleset, RulesetError> {
        Ruleset::parse_in(text, std::path::Path::new("."))
    }

    /// Like [`Ruleset::parse`], with model paths relative to `dir` (the ruleset file's directory).
    pub fn parse_in(text: &str, dir: &std::path::Path) -> Result<Ruleset, RulesetError> {
        Ruleset::parse_with(text, dir, true)
    }

    /// A ruleset read back from the journal: parsed as it was when published, without the checks
    /// added since (expression bounds and costs, resolvable names, bool results, the window
    /// horizon, built-in names, model paths inside `dir`), so that an older journal still replays.
    /// Its rules decide exactly as before; only a new publication must pass the checks.
    pub fn parse_journaled(text: &str, dir: &std::path::Path) -> Result<Ruleset, RulesetError> {
        Ruleset::parse_with(text, dir, false)
    }

    /// Parses on a thread of its own with a [`PARSE_STACK_BYTES`] stack: the expression parser
    /// recurses once per level of nesting, and at the bounds a publication may reach (4,096 bytes
    /// of brackets) a debug build needs more than a 2 MiB thread (a runtime worker's, a test's)
    /// has. Publishing is rare; the thread costs tens of microseconds.
    fn parse_with(text: &str, dir: &std::path::Path, strict: bool) -> Result<Ruleset, RulesetError> {
        std::thread::scope(|scope| {
            let parser = std::thread::Builder::new()
                .name("puhui-ruleset-parse".into())
                .stack_size(PARSE_STACK_BYTES)
                .spawn_scoped(scope, || Ruleset::parse_here(text, dir, strict));
            match parser {
                Ok(parser) => parser.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had (resource limits): parse on this one.
                Err(_) => Ruleset::parse_here(text, dir, strict),
            }
        })
    }

    fn parse_here(text: &str, dir: &std::path::Path, strict: bool) -> Result<Ruleset, RulesetError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| position(text, s.start)).unwrap_or((1, 1));
            RulesetError { rule_id: None, line, column, message: e.message().to_string() }
        })?;
        let at = |span: std::ops::Range<usize>, rule: Option<&str>, message: String| {
            let (line, column) = position(text, span.start);
            RulesetError { rule_id: rule.map(Into::into), line, column, message }
        };
        if *file.thresholds.review.get_ref() > file.thresholds.decline {
            return Err(at(
                file.thresholds.review.span(),
                None,
                "thresholds.review must not exceed thresholds.decline".into(),
            ));
        }
        let budget = match &file.budget {
            None => BUDGET_DEFAULT,
            Some(b) => Budget {
                decision_ns: b.decision_us.saturating_mul(1_000),
                on_exceeded: parse_outcome(b.on_exceeded.get_ref()).ok_or_else(|| {
                    at(
                        b.on_exceeded.span(),
                        None,
                        format!("unknown outcome {:?} (approve, review, decline)", b.on_exceeded.get_ref()),
                    )
                })?,
            },
        };
        let mut features = Vec::new();
        for f in file.features {
            let entity = match f.entity.get_ref().as_str() {
                "payer" => Entity::Payer,
                "payee" => Entity::Payee,
                "payer_inflow" => Entity::PayerInflow,
                "device" => Entity::Device,
                "ip" => Entity::Ip,
                other => match other.strip_prefix("attr:") {
                    Some(name) if !name.is_empty() => Entity::Attribute(name.to_string()),
                    _ => {
                        return Err(at(
                            f.entity.span(),
                            None,
                            format!(
                            "unknown entity {other:?} (payer, payee, payer_inflow, device, ip, attr:<name>)"
                        ),
                        ))
                    }
                },
            };
            let aggregate = match f.aggregate.get_ref().as_str() {
                "count" => Aggregate::Count,
                "sum" => Aggregate::Sum,
                "max" => Aggregate::Max,
                "distinct" => Aggregate::Distinct,
                "zscore" => Aggregate::ZScore,
                "first_seen" => Aggregate::FirstSeen,
                "last_seen" => Aggregate::LastSeen,
                other => return Err(at(
                    f.aggregate.span(),
                    None,
                    format!("unknown aggregate {other:?} (count, sum, max, distinct, zscore, first_seen, last_seen)"),
                )),
            };
            let window_ns = parse_window(f.window.get_ref()).ok_or_else(|| {
                at(
                    f.window.span(),
                    None,
                    format!("bad window {:?} (e.g. 1m, 1h, 24h, 7d)", f.window.get_ref()),
                )
            })?;
            // The store keeps events this long: a longer window would be cut short, silently.
            let horizon_ns = crate::features::FeatureLimits::default().horizon_ns;
            if strict && window_ns > horizon_ns {
                return Err(at(
                    f.window.span(),
                    None,
                    format!(
                        "window {:?} is longer than the {} days of events the feature store keeps",
                        f.window.get_ref(),
                        horizon_ns / 86_400_000_000_000
                    ),
                ));
            }
            if strict && BUILTIN_NAMES.contains(&f.name.get_ref().as_str()) {
                return Err(at(
                    f.name.span(),
                    None,
                    format!(
                        "feature name {:?} is a built-in name ({})",
                        f.name.get_ref(),
                        BUILTIN_NAMES.join(", ")
                    ),
                ));
            }
            if features.iter().any(|x: &Feature| *x.name == **f.name.get_ref()) {
                return Err(at(
                    f.name.span(),
                    None,
                    format!("feature {} is declared twice", f.name.get_ref()),
                ));
            }
            features.push(Feature { name: f.name.into_inner().into(), entity, aggregate, window_ns });
        }
        let mut models = Vec::new();
        for m in file.models {
            if strict
                && (BUILTIN_NAMES.contains(&m.name.get_ref().as_str())
                    || features.iter().any(|f: &Feature| *f.name == **m.name.get_ref()))
            {
                return Err(at(
                    m.name.span(),
                    None,
                    format!("model name {:?} is taken (a built-in name or a feature)", m.name.get_ref()),
                ));
            }
            let path = if strict {
                model_path(dir, m.path.get_ref())
                    .map_err(|e| at(m.path.span(), None, format!("model {}: {e}", m.name.get_ref())))?
            } else {
                dir.join(m.path.get_ref())
            };
            let bytes = std::fs::read(&path).map_err(|e| {
                at(m.path.span(), None, format!("model {}: {}: {e}", m.name.get_ref(), m.path.get_ref()))
            })?;
            let digest = blake3::hash(&bytes).to_hex().to_string();
            let model = puhui_risk_model::Model::from_bytes(&bytes)
                .map_err(|e| at(m.path.span(), None, format!("model {}: {e}", m.name.get_ref())))?;
            if strict && m.inputs.len() != model.num_features() {
                return Err(at(
                    m.name.span(),
                    None,
                    format!(
                        "model {} takes {} features and `inputs` lists {}: one input per model feature, in the \
                         model's order (`missing` for a feature not supplied)",
                        m.name.get_ref(),
                        model.num_features(),
                        m.inputs.len()
                    ),
                ));
            }
            for input in &m.inputs {
                let known = matches!(
                    input.as_str(),
                    "amount" | "new_payee" | "new_device" | "payer_balance" | "missing"
                ) || input.starts_with("ctx.")
                    || features.iter().any(|f: &Feature| *f.name == **input);
                if !known {
                    return Err(at(m.name.span(), None, format!("model input {input:?} is not amount, new_payee, new_device, payer_balance, ctx.<name>, missing or a declared feature")));
                }
            }
            models.push(ModelSlot { name: m.name.into_inner().into(), model, inputs: m.inputs, digest });
        }
        let mut symbols = compile::Symbols::new(
            features.iter().map(|f| (&*f.name, f.aggregate == Aggregate::ZScore)),
            models.iter().map(|m| &*m.name),
        );
        let mut rules = Vec::new();
        let mut ids = HashSet::new();
        let mut ruleset_cost = 0u64;
        for r in file.rules {
            if !ids.insert(r.id.clone()) {
                return Err(at(r.expression.span(), Some(&r.id), "rule id is used twice".into()));
            }
            let span = r.expression.span();
            // Bounded before parsing: the parser, the compiler and the interpreter recurse over the
            // expression, and a deep enough one would overflow a thread's stack.
            if strict && r.expression.get_ref().len() > EXPRESSION_BYTES_MAX {
                return Err(at(
                    span,
                    Some(&r.id),
                    format!(
                        "an expression has at most {EXPRESSION_BYTES_MAX} bytes; this one has {}",
                        r.expression.get_ref().len()
                    ),
                ));
            }
            let program = cel::Program::compile(r.expression.get_ref()).map_err(|e| {
                let first = e.errors.first();
                let (cel_line, cel_col) =
                    first.map(|p| (p.pos.0.max(1) as usize, p.pos.1.max(0) as usize)).unwrap_or((1, 0));
                let (line, column) = position(text, span.start);
                // The expression starts one character after the opening quote.
                let (line, column) = if cel_line <= 1 {
                    (line, column + 1 + cel_col)
                } else {
                    (line + cel_line - 1, cel_col + 1)
                };
                let message = first.map(|p| p.msg.clone()).unwrap_or_else(|| e.to_string());
                RulesetError {
                    rule_id: Some(r.id.clone()),
                    line,
                    column,
                    message: format!("expression does not parse: {message}"),
                }
            })?;
            if strict && compile::deeper_than(program.expression(), EXPRESSION_DEPTH_MAX) {
                return Err(at(
                    span,
                    Some(&r.id),
                    format!(
                        "the expression nests deeper than {EXPRESSION_DEPTH_MAX} levels (a long chain of \
                         operators counts one level per operator): split it into several rules"
                    ),
                ));
            }
            // A name no decision can resolve would fail every time (and the rule never fire).
            let known = |name: &str| {
                BUILTIN_NAMES.contains(&name)
                    || features.iter().any(|f: &Feature| *f.name == *name)
                    || models.iter().any(|m: &ModelSlot| *m.name == *name)
            };
            let feature = |name: &str| features.iter().any(|f: &Feature| *f.name == *name);
            if let Some(problem) = compile::static_problem(program.expression()).filter(|_| strict) {
                return Err(at(span, Some(&r.id), format!("the expression has {problem}")));
            }
            if strict {
                ruleset_cost = ruleset_cost.saturating_add(compile::cost(program.expression()));
            }
            if ruleset_cost > RULESET_COST_MAX {
                return Err(at(
                    span,
                    Some(&r.id),
                    format!(
                        "the rules up to this one take a worst case of {ruleset_cost} evaluation steps per \
                         decision (at most {RULESET_COST_MAX})"
                    ),
                ));
            }
            if let Some(name) =
                compile::unknown_name(program.expression(), &known, &feature).filter(|_| strict)
            {
                return Err(at(
                    span,
                    Some(&r.id),
                    format!(
                        "unknown name {name:?}: a rule reads {}, f.<feature>, a declared feature or a model",
                        BUILTIN_NAMES.join(", ")
                    ),
                ));
            }
            if let Some(problem) = compile::type_problem(program.expression(), &symbols).filter(|_| strict) {
                return Err(at(span, Some(&r.id), format!("the expression has {problem}")));
            }
            let outcome = match &r.outcome {
                None => None,
                Some(o) => Some(parse_outcome(o.get_ref()).ok_or_else(|| {
                    at(o.span(), Some(&r.id), format!("unknown outcome {:?}", o.get_ref()))
                })?),
            };
            if outcome.is_none() && r.score.is_none() {
                return Err(at(span, Some(&r.id), "a rule needs a score or an outcome".into()));
            }
            let compiled = match compile::compile(program.expression(), &mut symbols) {
                Ok(compiled) => compiled,
                Err(ty) if strict => {
                    return Err(at(
                        span.clone(),
                        Some(&r.id),
                        format!("the expression gives {ty}, never the bool a rule must give"),
                    ))
                }
                Err(_) => None,
            };
            rules.push(Rule {
                id: r.id.into(),
                description: r.description,
                program,
                compiled,
                score: r.score.unwrap_or(0),
                outcome,
                reasons: r.reasons.into(),
            });
        }
        let mut feature_groups: Vec<FeatureGroup> = Vec::new();
        for f in &features {
            if !feature_groups.iter().any(|g| g.entity == f.entity) {
                feature_groups.push(FeatureGroup {
                    entity: f.entity.clone(),
                    windows: Vec::new(),
                    members: Vec::new(),
                });
            }
        }
        for group in &mut feature_groups {
            let mine = || features.iter().filter(|f| f.entity == group.entity);
            let mut windows: Vec<u64> = mine().map(|f| f.window_ns).collect();
            windows.sort_unstable();
            windows.dedup();
            group.windows = windows
                .iter()
                .map(|&window_ns| WindowQuery {
                    window_ns,
                    distinct: mine()
                        .any(|f| f.window_ns == window_ns && matches!(f.aggregate, Aggregate::Distinct)),
                    edges: mine().any(|f| {
                        f.window_ns == window_ns
                            && matches!(f.aggregate, Aggregate::FirstSeen | Aggregate::LastSeen)
                    }),
                })
                .collect();
            for (i, f) in features.iter().enumerate().filter(|(_, f)| f.entity == group.entity) {
                let w = group.windows.partition_point(|q| q.window_ns < f.window_ns);
                assert_eq!(group.windows[w].window_ns, f.window_ns);
                group.members.push((w, i));
            }
        }
        // The same precedence as the names were checked with: amount, new_payee, new_device,
        // ctx.<name>, then the first feature of that name.
        let model_inputs = models
            .iter()
            .map(|m| {
                m.inputs
                    .iter()
                    .map(|input| match input.as_str() {
                        "amount" => ModelInput::Amount,
                        "new_payee" => ModelInput::NewPayee,
                        "new_device" => ModelInput::NewDevice,
                        "payer_balance" => ModelInput::PayerBalance,
                        other => match other.strip_prefix("ctx.") {
                            Some(attr) => ModelInput::Attribute(attr.to_string()),
                            // `missing` is NaN, unless a feature has that name (as before it was a word).
                            None => features
                                .iter()
                                .position(|f| &*f.name == other)
                                .map_or(ModelInput::Missing, ModelInput::Feature),
                        },
                    })
                    .collect()
            })
            .collect::<Vec<Vec<ModelInput>>>();
        let reads = |name: &str, input: fn(&ModelInput) -> bool| {
            rules.iter().any(|r| r.program.references().has_variable(name))
                || model_inputs.iter().flatten().any(input)
        };
        let reads_new_payee = reads("new_payee", |i| matches!(i, ModelInput::NewPayee));
        let reads_new_device = reads("new_device", |i| matches!(i, ModelInput::NewDevice));
        let reads_payer_balance = reads("payer_balance", |i| matches!(i, ModelInput::PayerBalance))
            || reads("payer_balance_known", |_| false);
        Ok(Ruleset {
            version: file.version,
            review_at: *file.thresholds.review.get_ref(),
            decline_at: file.thresholds.decline,
            features,
            models,
            budget,
            rules,
            symbols,
            feature_groups,
            model_inputs,
            reads_new_payee,
            reads_new_device,
            reads_payer_balance,
        })
    }

    /// Whether a rule or a model reads the payer's balance (`payer_balance`, `payer_balance_known`):
    /// a transfer's decision then needs [`RiskEvent::payer_balance_minor`].
    pub fn reads_payer_balance(&self) -> bool {
        self.reads_payer_balance
    }

    /// How many rules are compiled (the rest run on the `cel` interpreter).
    pub fn compiled_rules(&self) -> usize {
        self.rules.iter().filter(|r| r.compiled.is_some()).count()
    }

    /// The ids of the rules that run on the `cel` interpreter (their expression uses something the
    /// compiler does not reproduce exactly).
    pub fn interpreted_rules(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter(|r| r.compiled.is_none()).map(|r| &*r.id)
    }

    /// Rules, in file order: (id, description).
    pub fn rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().map(|r| (&*r.id, r.description.as_str()))
    }

    /// The digests of the model files it read, in file order.
    pub fn model_digests(&self) -> Vec<crate::records::ModelDigest> {
        self.models
            .iter()
            .map(|m| crate::records::ModelDigest { name: m.name.to_string(), blake3: m.digest.clone() })
            .collect()
    }
}

/// One event to decide.
#[derive(Debug, Clone)]
pub struct RiskEvent<'a> {
    /// Paying account.
    pub payer: &'a str,
    /// Receiving account.
    pub payee: &'a str,
    /// Amount in minor units.
    pub amount_minor: u64,
    /// Currency code.
    pub currency: &'a str,
    /// Event time (the ledger's timestamp for transfers).
    pub timestamp_ns: u64,
    /// Attributes: device_id, ip, channel, country, mcc, kyc_tier, …
    pub attributes: &'a [(String, String)],
    /// The payer's available balance before this event, in minor units of `currency` (posted
    /// credits less posted and pending debits; negative on an overdrawn or credit account), if the
    /// caller knows it: the ledger fills it in for a transfer whose ruleset reads it
    /// (`payer_balance`), a standalone decision may carry it.
    pub payer_balance_minor: Option<i64>,
}

impl RiskEvent<'_> {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Most fired rules a decision makes room for up front (more grow the list as usual).
const FIRED_CAPACITY_MAX: usize = 32;

/// A rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct FiredRule {
    /// Its id (shared with the ruleset: a decision that fires many rules allocates nothing for them).
    pub id: Arc<str>,
    /// Its score contribution.
    pub score: i64,
    /// Its direct outcome, if it has one.
    pub outcome: Option<Outcome>,
    /// Its reason codes (shared with the ruleset).
    pub reasons: Arc<[String]>,
}

/// A decision, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Approve, review or decline.
    pub outcome: Outcome,
    /// Sum of fired rules' scores.
    pub score: i64,
    /// Fired rules, in ruleset order.
    pub fired: Vec<FiredRule>,
    /// Feature values the rules saw.
    pub features: Vec<(Arc<str>, f64)>,
    /// Rules whose expression failed (not fired), with the error.
    pub errors: Vec<(String, String)>,
    /// The ruleset's version.
    pub ruleset_version: String,
    /// Time taken.
    pub latency_ns: u64,
    /// Why the decision is degraded (its budget was spent, so later rules were skipped, and it took
    /// the ruleset's `on_exceeded` outcome); `None` for a full decision.
    pub degraded: Option<String>,
}

/// Allow and deny lists, by name (`in_list("deny_devices", ctx.device_id)`).
pub type Lists = Arc<RwLock<HashMap<String, ListSet>>>;

/// The values of one list: a set of strings in [`ListSet::SHARDS`] shards that grow, and rehash,
/// each on its own, each value kept with its keyed hash (SipHash under a random key, computed once)
/// so that a rehash reads the tables and not every string. Choice, over one `HashSet<String>`: a
/// list change that crossed a power of two rehashed the whole list — every string read and hashed
/// again — under the controller's lock and the lists' write lock, and every decision waited
/// (up to 218 ms at ~920,000 values, and p99 111 ms for transfers with risk control while a list
/// grew to a million values; 12–14 ms now: docs/BENCHMARKS.md).
#[derive(Clone)]
pub struct ListSet {
    shards: Box<[hashbrown::HashTable<(u64, String)>]>,
    hasher: std::hash::RandomState,
    len: usize,
    /// Values per scope ([`ListSet::scope_of`]: a tenant's values are `<tenant>:<value>`), so a
    /// tenant's share of a list is known without reading the list.
    per_scope: HashMap<Box<str>, usize>,
}

impl std::fmt::Debug for ListSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListSet").field("len", &self.len).finish_non_exhaustive()
    }
}

impl Default for ListSet {
    fn default() -> Self {
        ListSet {
            shards: (0..ListSet::SHARDS).map(|_| hashbrown::HashTable::new()).collect(),
            hasher: std::hash::RandomState::new(),
            len: 0,
            per_scope: HashMap::new(),
        }
    }
}

impl ListSet {
    /// The scope of a value: what comes before its first `:` (a tenant's values are
    /// `<tenant>:<value>`), or "" for a value without one.
    pub fn scope_of(value: &str) -> &str {
        value.split_once(':').map_or("", |(scope, _)| scope)
    }

    /// Values held in `scope` ([`ListSet::scope_of`]).
    pub fn len_in_scope(&self, scope: &str) -> usize {
        self.per_scope.get(scope).copied().unwrap_or(0)
    }

    fn count_scope(per_scope: &mut HashMap<Box<str>, usize>, value: &str, added: bool) {
        let scope = ListSet::scope_of(value);
        if added {
            match per_scope.get_mut(scope) {
                Some(n) => *n += 1,
                None => {
                    per_scope.insert(scope.into(), 1);
                }
            }
        } else if let Some(n) = per_scope.get_mut(scope) {
            *n -= 1;
            if *n == 0 {
                per_scope.remove(scope);
            }
        }
    }

    /// Shards of a list.
    pub const SHARDS: usize = 256;

    /// The value's hash, and its shard: bits 32–39 of the hash, which a shard's table uses for
    /// neither its slot (the low bits, up to its size) nor its control byte (the top seven).
    fn place(&self, value: &str) -> (u64, usize) {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(value);
        (hash, (hash >> 32) as usize % ListSet::SHARDS)
    }

    /// Whether `value` is in the list.
    pub fn contains(&self, value: &str) -> bool {
        let (hash, shard) = self.place(value);
        self.shards[shard].find(hash, |(h, v)| *h == hash && v == value).is_some()
    }

    /// Adds `value`; `false` if it was there.
    pub fn insert(&mut self, value: String) -> bool {
        let (hash, shard) = self.place(&value);
        let ListSet { shards, len, per_scope, .. } = self;
        match shards[shard].entry(hash, |(h, v)| *h == hash && *v == value, |(h, _)| *h) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                ListSet::count_scope(per_scope, &value, true);
                slot.insert((hash, value));
                *len += 1;
                true
            }
        }
    }

    /// Removes `value`; `false` if it was not there.
    pub fn remove(&mut self, value: &str) -> bool {
        let (hash, shard) = self.place(value);
        match self.shards[shard].find_entry(hash, |(h, v)| *h == hash && v == value) {
            Ok(entry) => {
                entry.remove();
                self.len -= 1;
                ListSet::count_scope(&mut self.per_scope, value, false);
                true
            }
            Err(_) => false,
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.shards.iter().flat_map(|shard| shard.iter().map(|(_, v)| v))
    }
}

impl FromIterator<String> for ListSet {
    fn from_iter<I: IntoIterator<Item = String>>(values: I) -> ListSet {
        let mut set = ListSet::default();
        set.extend(values);
        set
    }
}

impl Extend<String> for ListSet {
    fn extend<I: IntoIterator<Item = String>>(&mut self, values: I) {
        for value in values {
            self.insert(value);
        }
    }
}

/// Decides events with a ruleset against a feature store.
pub struct Engine {
    ruleset: Arc<Ruleset>,
    root: cel::Context<'static, 'static>,
    lists: Lists,
    evaluation: Evaluation,
}

/// How an engine evaluates rule expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// Compiled rules over pre-resolved slots (the default), the `cel` interpreter for the rules
    /// the compiler does not take.
    Compiled,
    /// Every rule on the `cel` interpreter: the reference the compiled rules are tested against,
    /// and the benchmarks' peer.
    Interpreted,
}

/// Model inputs kept on the stack (a model with more takes a heap buffer).
const MODEL_INPUTS_INLINE: usize = 64;

/// Whole seconds from `at_ns` to `now_ns`, or -1 without a time (`first_seen`, `last_seen`).
fn seconds_since(now_ns: u64, at_ns: Option<u64>) -> f64 {
    at_ns.map_or(-1.0, |at_ns| (now_ns.saturating_sub(at_ns) / 1_000_000_000) as f64)
}

/// The outcome of the rules that fired (`fired`, adding up to `score`), or, when the time budget
/// ran out (`exceeded`: the ruleset's `on_exceeded`), that outcome, except that a rule that fired
/// with a direct decline before the budget ran out still declines: a decline already certain is
/// not given up to fail open.
fn settle(fired: &[FiredRule], score: i64, ruleset: &Ruleset, exceeded: Option<Outcome>) -> Outcome {
    let direct = |o: Outcome| fired.iter().any(|r| r.outcome == Some(o));
    if direct(Outcome::Decline) {
        Outcome::Decline
    } else if let Some(outcome) = exceeded {
        outcome
    } else if direct(Outcome::Approve) {
        Outcome::Approve
    } else if direct(Outcome::Review) {
        Outcome::Review
    } else if score >= ruleset.decline_at {
        Outcome::Decline
    } else if score >= ruleset.review_at {
        Outcome::Review
    } else {
        Outcome::Approve
    }
}

impl Engine {
    /// An engine for `ruleset`, with `lists` shared (they can change while it runs).
    pub fn new(ruleset: Arc<Ruleset>, lists: Lists) -> Engine {
        Engine::with_evaluation(ruleset, lists, Evaluation::Compiled)
    }

    /// Like [`Engine::new`], evaluating rules as `evaluation` says.
    pub fn with_evaluation(ruleset: Arc<Ruleset>, lists: Lists, evaluation: Evaluation) -> Engine {
        let mut root = cel::Context::default();
        let for_fn = Arc::clone(&lists);
        root.add_function("in_list", move |name: Arc<String>, value: Arc<String>| -> bool {
            let lists = for_fn.read().unwrap_or_else(|p| p.into_inner());
            lists.get(name.as_str()).is_some_and(|set| set.contains(value.as_str()))
        })
        .expect("in_list is not a standard function");
        Engine { ruleset, root, lists, evaluation }
    }

    /// The lists this engine reads.
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    /// The ruleset.
    pub fn ruleset(&self) -> &Arc<Ruleset> {
        &self.ruleset
    }

    /// How this engine evaluates rules.
    pub fn evaluation(&self) -> Evaluation {
        self.evaluation
    }

    /// Decides `event` from what `store` has recorded before it (point-in-time).
    pub fn decide(&self, store: &FeatureStore, event: &RiskEvent<'_>) -> Decision {
        self.decide_within(store, event, true)
    }

    /// The interpreter's scope for one event: what interpreted rules evaluate against. `values` are
    /// the feature values then the model scores.
    fn scope(
        &self,
        event: &RiskEvent<'_>,
        values: &[(Arc<str>, f64)],
        new_payee: bool,
        new_device: bool,
    ) -> cel::Context<'_, 'static> {
        let ruleset = &self.ruleset;
        let (features, scores) = values.split_at(ruleset.features.len().min(values.len()));
        let mut scope = self.root.new_inner_scope();
        for (slot, (_, score)) in ruleset.models.iter().zip(scores) {
            scope.add_variable_from_value(&*slot.name, *score);
        }
        scope.add_variable_from_value("amount", event.amount_minor.min(i64::MAX as u64) as i64);
        scope.add_variable_from_value("currency", event.currency.to_string());
        scope.add_variable_from_value("payer", event.payer.to_string());
        scope.add_variable_from_value("payee", event.payee.to_string());
        scope.add_variable_from_value("new_payee", new_payee);
        scope.add_variable_from_value("new_device", new_device);
        scope.add_variable_from_value("payer_balance", event.payer_balance_minor.unwrap_or(-1));
        scope.add_variable_from_value("payer_balance_known", event.payer_balance_minor.is_some());
        let cel_value = |f: &Feature, value: f64| {
            if f.aggregate == Aggregate::ZScore {
                cel::Value::Float(value)
            } else {
                cel::Value::Int(value as i64)
            }
        };
        let feature_map: HashMap<String, cel::Value> = ruleset
            .features
            .iter()
            .zip(features)
            .map(|(f, (_, v))| (f.name.to_string(), cel_value(f, *v)))
            .collect();
        scope.add_variable_from_value("f", feature_map);
        for (f, (_, v)) in ruleset.features.iter().zip(features) {
            scope.add_variable_from_value(&*f.name, cel_value(f, *v));
        }
        let ctx_map: HashMap<String, cel::Value> = event
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), cel::Value::String(Arc::new(v.clone()))))
            .collect();
        scope.add_variable_from_value("ctx", ctx_map);
        scope
    }

    /// Fills `values` (pre-filled with the feature names) with the features' values, one window
    /// scan per (entity, window).
    fn compute_features(&self, store: &FeatureStore, event: &RiskEvent<'_>, values: &mut [(Arc<str>, f64)]) {
        let mut attribute_key = String::new();
        for group in &self.ruleset.feature_groups {
            let key: Option<(Namespace, &str)> = match &group.entity {
                Entity::Payer => Some((Namespace::Payer, event.payer)),
                Entity::Payee => Some((Namespace::Payee, event.payee)),
                Entity::PayerInflow => Some((Namespace::Payee, event.payer)),
                Entity::Device => event.attribute("device_id").map(|d| (Namespace::Device, d)),
                Entity::Ip => event.attribute("ip").map(|d| (Namespace::Ip, d)),
                Entity::Attribute(name) => match event.attribute(name) {
                    None => None,
                    Some(v) => {
                        attribute_key.clear();
                        write_attribute_key(&mut attribute_key, event.payer, name, v);
                        Some((Namespace::Attribute, attribute_key.as_str()))
                    }
                },
            };
            let mut inline = [WindowStats::default(); WINDOWS_INLINE];
            let mut heap: Vec<WindowStats> = Vec::new();
            let stats: &mut [WindowStats] = if group.windows.len() <= WINDOWS_INLINE {
                &mut inline[..group.windows.len()]
            } else {
                heap.resize(group.windows.len(), WindowStats::default());
                &mut heap
            };
            if let Some((ns, key)) = key {
                store.windows(ns, key, event.timestamp_ns, &group.windows, stats);
            }
            for &(w, i) in &group.members {
                let value = match key.and(stats.get(w)) {
                    // No such entity on the event (no device id, say): nothing seen, nothing counted.
                    None => match self.ruleset.features[i].aggregate {
                        Aggregate::FirstSeen | Aggregate::LastSeen => -1.0,
                        _ => 0.0,
                    },
                    Some(w) => match self.ruleset.features[i].aggregate {
                        Aggregate::Count => w.count as f64,
                        Aggregate::Sum => w.sum_minor as f64,
                        Aggregate::Max => w.max_minor as f64,
                        Aggregate::Distinct => w.distinct_counterparties as f64,
                        Aggregate::ZScore => w.z_score(event.amount_minor),
                        Aggregate::FirstSeen => seconds_since(event.timestamp_ns, w.oldest_ns),
                        Aggregate::LastSeen => seconds_since(event.timestamp_ns, w.newest_ns),
                    },
                };
                if let Some(slot) = values.get_mut(i) {
                    slot.1 = value;
                }
            }
        }
    }

    /// Appends each model's score to `values` (after the features).
    fn score_models(
        &self,
        event: &RiskEvent<'_>,
        values: &mut Vec<(Arc<str>, f64)>,
        new_payee: bool,
        new_device: bool,
    ) {
        let mut inline = [0f32; MODEL_INPUTS_INLINE];
        let mut heap: Vec<f32> = Vec::new();
        let features = self.ruleset.features.len();
        for (slot, sources) in self.ruleset.models.iter().zip(&self.ruleset.model_inputs) {
            let inputs: &mut [f32] = if sources.len() <= MODEL_INPUTS_INLINE {
                &mut inline[..sources.len()]
            } else {
                heap.resize(sources.len(), 0.0);
                &mut heap[..]
            };
            for (input, source) in inputs.iter_mut().zip(sources) {
                *input = match source {
                    ModelInput::Amount => event.amount_minor as f32,
                    ModelInput::NewPayee => new_payee as u8 as f32,
                    ModelInput::NewDevice => new_device as u8 as f32,
                    ModelInput::PayerBalance => event.payer_balance_minor.map_or(f32::NAN, |b| b as f32),
                    ModelInput::Attribute(attr) => {
                        event.attribute(attr).and_then(|v| v.parse::<f32>().ok()).unwrap_or(f32::NAN)
                    }
                    ModelInput::Feature(i) => values[..features].get(*i).map_or(f32::NAN, |(_, v)| *v as f32),
                    ModelInput::Missing => f32::NAN,
                };
            }
            let score = slot.model.predict(inputs);
            values.push((slot.name.clone(), score));
        }
    }

    /// Like [`Engine::decide`], with the time budget applied or not: a replay (backtest, the
    /// reproduction check) decides without one, since a budget makes the result depend on timing.
    pub fn decide_within(&self, store: &FeatureStore, event: &RiskEvent<'_>, budgeted: bool) -> Decision {
        let started = Instant::now();
        let ruleset = &*self.ruleset;
        // The output vector doubles as the rules' feature slots: features, then model scores.
        let mut values: Vec<(Arc<str>, f64)> =
            Vec::with_capacity(ruleset.features.len() + ruleset.models.len());
        values.extend(ruleset.features.iter().map(|f| (f.name.clone(), 0.0)));
        self.compute_features(store, event, &mut values);
        let new_payee = ruleset.reads_new_payee && store.is_new_payee(event.payer, event.payee);
        let new_device = ruleset.reads_new_device
            && event.attribute("device_id").is_some_and(|d| store.is_new_device(event.payer, d));
        self.score_models(event, &mut values, new_payee, new_device);

        // `ctx` as the interpreter's map sees it: the last value of a repeated attribute.
        let names = ruleset.symbols.attributes();
        let mut attributes: [Option<&str>; compile::ATTRIBUTES_MAX] = [None; compile::ATTRIBUTES_MAX];
        for (slot, name) in attributes.iter_mut().zip(names) {
            *slot = event.attributes.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        }
        let split = ruleset.features.len().min(values.len());
        let mut frame = compile::Frame::new(
            event.amount_minor.min(i64::MAX as u64) as i64,
            event.currency,
            event.payer,
            event.payee,
            new_payee,
            new_device,
            event.payer_balance_minor,
            &values[..split],
            &values[split..],
            &attributes[..names.len().min(compile::ATTRIBUTES_MAX)],
            names,
            &self.lists,
        );
        let mut scope: Option<cel::Context<'_, 'static>> = None;

        // Room for the rules that usually fire, so that a decision firing many does not regrow
        // (and copy) its list several times.
        let mut fired = Vec::with_capacity(ruleset.rules.len().min(FIRED_CAPACITY_MAX));
        let mut errors = Vec::new();
        let mut score = 0i64;
        let mut degraded = None;
        let budget = ruleset.budget;
        for (index, rule) in ruleset.rules.iter().enumerate() {
            // The first look is before any rule: the features' and models' time counts too.
            if budgeted && index % BUDGET_CHECK_EVERY_RULES == 0 {
                let spent_ns = started.elapsed().as_nanos() as u64;
                if spent_ns > budget.decision_ns {
                    degraded = Some(format!(
                        "budget of {} µs spent after {index} of {} rules",
                        budget.decision_ns / 1_000,
                        ruleset.rules.len()
                    ));
                    break;
                }
            }
            let outcome: Result<bool, String> = match (&rule.compiled, self.evaluation) {
                (Some(compiled), Evaluation::Compiled) => frame.eval(compiled).map_err(|e| e.to_string()),
                _ => {
                    frame.release_lists();
                    let scope =
                        scope.get_or_insert_with(|| self.scope(event, &values, new_payee, new_device));
                    match rule.program.execute(scope) {
                        Ok(cel::Value::Bool(b)) => Ok(b),
                        Ok(other) => Err(format!("expression gave {other:?}, not a bool")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            match outcome {
                Ok(true) => {
                    score = score.saturating_add(rule.score);
                    fired.push(FiredRule {
                        id: rule.id.clone(),
                        score: rule.score,
                        outcome: rule.outcome,
                        reasons: rule.reasons.clone(),
                    });
                }
                Ok(false) => {}
                Err(message) => errors.push((rule.id.to_string(), message)),
            }
        }
        drop(frame);
        drop(scope);
        let outcome = settle(&fired, score, ruleset, degraded.is_some().then_some(budget.on_exceeded));
        Decision {
            outcome,
            score,
            fired,
            features: values,
            errors,
            ruleset_version: ruleset.version.clone(),
            latency_ns: started.elapsed().as_nanos() as u64,
            degraded,
        }
    }

    /// Records `event` in `store` (after it was decided), for every declared entity plus the
    /// payer→payee and payer→device pairs.
    pub fn observe(&self, store: &mut FeatureStore, event: &RiskEvent<'_>) {
        observe(store, event, &self.attribute_entities());
    }

    /// The attributes this ruleset keeps velocity features for (`attr:<name>` entities).
    pub fn attribute_entities(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for f in &self.ruleset.features {
            if let Entity::Attribute(name) = &f.entity {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }
}

/// The feature-store key of attribute `name` = `value` in an event paid by `payer`:
/// `<scope>:<name>=<value>`, where the scope is the payer's up to its first `:` (the API scopes
/// account ids by tenant as `<tenant>:<id>`), so that two tenants' events with the same attribute
/// value never share windows; `<name>=<value>` for an unscoped payer.
pub fn attribute_key(payer: &str, name: &str, value: &str) -> String {
    let mut key = String::with_capacity(payer.len().min(64) + name.len() + value.len() + 2);
    write_attribute_key(&mut key, payer, name, value);
    key
}

fn write_attribute_key(key: &mut String, payer: &str, name: &str, value: &str) {
    if let Some((scope, _)) = payer.split_once(':') {
        key.push_str(scope);
        key.push(':');
    }
    key.push_str(name);
    key.push('=');
    key.push_str(value);
}

/// Records `event` in `store` for the payer, payee, device and IP, the payer→payee and payer→device
/// pairs, and the named attributes (the union over the rulesets that read `store`, so that two
/// rulesets sharing one store record each event once).
pub fn observe(store: &mut FeatureStore, event: &RiskEvent<'_>, attribute_entities: &[&str]) {
    {
        let (t, a) = (event.timestamp_ns, event.amount_minor);
        store.record(Namespace::Payer, event.payer, t, a, event.payee);
        store.record(Namespace::Payee, event.payee, t, a, event.payer);
        store.record_pair(Namespace::PayerPayee, event.payer, event.payee, t);
        if let Some(device) = event.attribute("device_id") {
            store.record(Namespace::Device, device, t, a, event.payer);
            store.record_pair(Namespace::AccountDevice, event.payer, device, t);
        }
        if let Some(ip) = event.attribute("ip") {
            store.record(Namespace::Ip, ip, t, a, event.payer);
        }
        for name in attribute_entities {
            if let Some(v) = event.attribute(name) {
                store.record(Namespace::Attribute, &attribute_key(event.payer, name, v), t, a, event.payer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_takes_the_rulesets_outcome_but_does_not_undo_a_direct_decline() {
        let ruleset = Ruleset::parse(
            "version = \"v\"\n[thresholds]\nreview = 50\ndecline = 100\n[[rules]]\nid = \"r\"\ndescription = \"d\"\nexpression = \"amount > 1\"\nscore = 1\n",
        )
        .unwrap();
        let fired = |outcome: Option<Outcome>, score: i64| FiredRule {
            id: Arc::from("x"),
            score,
            outcome,
            reasons: Arc::from(Vec::new()),
        };
        let (decline, approve) = (Some(Outcome::Decline), Some(Outcome::Approve));
        // Within the budget: direct outcomes first (decline, approve, review), then the thresholds.
        assert_eq!(settle(&[fired(approve, 0), fired(decline, 0)], 0, &ruleset, None), Outcome::Decline);
        assert_eq!(settle(&[fired(approve, 0)], 500, &ruleset, None), Outcome::Approve);
        assert_eq!(settle(&[fired(None, 60)], 60, &ruleset, None), Outcome::Review);
        assert_eq!(settle(&[], 0, &ruleset, None), Outcome::Approve);
        // Out of budget: the ruleset's outcome (fail open or closed), whatever the score so far...
        assert_eq!(settle(&[fired(None, 500)], 500, &ruleset, approve), Outcome::Approve);
        assert_eq!(settle(&[fired(approve, 0)], 0, &ruleset, decline), Outcome::Decline);
        assert_eq!(settle(&[], 0, &ruleset, Some(Outcome::Review)), Outcome::Review);
        // ...but a direct decline that fired before it ran out stands (a deny list is not failed open).
        assert_eq!(settle(&[fired(decline, 0)], 0, &ruleset, approve), Outcome::Decline);
        assert_eq!(settle(&[fired(decline, 0)], 0, &ruleset, Some(Outcome::Review)), Outcome::Decline);
    }
}
