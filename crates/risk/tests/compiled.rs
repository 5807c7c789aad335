//! Compiled rules against the `cel` interpreter: the same decisions, event for event — fired rules,
//! scores, outcomes, feature values, and every error with its message — over the starter ruleset,
//! the synthetic benchmark ruleset, the test rulesets, a ruleset of awkward expressions, and
//! randomly generated expressions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use puhui_risk::{Decision, Engine, Evaluation, FeatureLimits, FeatureStore, Lists, RiskEvent, Ruleset};

const S: u64 = 1_000_000_000;
const STARTER: &str = include_str!("../../../rulesets/starter.toml");

/// A small deterministic generator (splitmix64), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const PAYERS: [&str; 6] = ["w1", "w2", "w3", "w4", "mule", "m5"];
const PAYEES: [&str; 5] = ["grocer", "mule", "p", "m5", "w1"];
const ATTRIBUTES: [(&str, &[&str]); 8] = [
    ("device_id", &["d1", "d2", "new-phone", "dev7"]),
    ("ip", &["10.0.0.1", "10.9.9.9", "1.2.3.4"]),
    ("channel", &["app", "web", "ussd"]),
    ("kyc_tier", &["1", "2", "3", "x"]),
    ("txn_type", &["p2p", "cash_in", "merchant_payment"]),
    ("country", &["CN", "KE", ""]),
    ("mcc", &["5411", "6011"]),
    ("amount_log", &["3.5", "nan", "7"]),
];
const LISTS: [&str; 5] = ["deny_devices", "deny_ips", "deny_accounts", "allow_accounts", "deny"];

/// A random event: amounts from tiny to beyond `i64::MAX`, attributes present or not (sometimes a
/// key twice, where the interpreter's `ctx` map keeps the last value).
fn event_parts(rng: &mut Rng, t: u64) -> (String, String, u64, Vec<(String, String)>) {
    let amount = match rng.below(8) {
        0 => rng.next() % 500,
        1 => 50_000 + rng.next() % 100_000,
        2 => 4_000_000 + rng.next() % 1_000_000,
        3 => u64::MAX - rng.next() % 3,
        4 => i64::MAX as u64 / 2 + rng.next() % 4,
        5 => 0,
        _ => rng.next() % 10_000,
    };
    let mut attributes = Vec::new();
    for (name, values) in ATTRIBUTES {
        if rng.chance(70) {
            attributes.push((name.to_string(), rng.pick(values).to_string()));
        }
    }
    if rng.chance(5) && !attributes.is_empty() {
        let (k, _) = attributes[rng.below(attributes.len())].clone();
        attributes.push((k, "dup".to_string()));
    }
    let _ = t;
    (rng.pick(&PAYERS).to_string(), rng.pick(&PAYEES).to_string(), amount, attributes)
}

fn same(a: &Decision, b: &Decision, context: &str) {
    assert_eq!(a.fired, b.fired, "fired rules differ: {context}");
    assert_eq!(a.score, b.score, "score differs: {context}");
    assert_eq!(a.outcome, b.outcome, "outcome differs: {context}");
    assert_eq!(a.errors, b.errors, "errors differ: {context}");
    assert_eq!(a.degraded, b.degraded, "{context}");
    assert_eq!(a.ruleset_version, b.ruleset_version);
    let bits = |d: &Decision| d.features.iter().map(|(n, v)| (n.clone(), v.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b), "feature values differ: {context}");
}

/// Decides `events` random events with both evaluators over one store and one set of lists (which
/// change as it goes); returns how many rules fired and how many errors there were in total.
fn differential(ruleset: Ruleset, events: usize, seed: u64) -> (usize, usize) {
    let ruleset = Arc::new(ruleset);
    let lists: Lists = Arc::new(RwLock::new(HashMap::new()));
    let compiled = Engine::with_evaluation(Arc::clone(&ruleset), Arc::clone(&lists), Evaluation::Compiled);
    let interpreted =
        Engine::with_evaluation(Arc::clone(&ruleset), Arc::clone(&lists), Evaluation::Interpreted);
    let mut store = FeatureStore::new(FeatureLimits::default());
    let mut rng = Rng(seed);
    let (mut fired, mut errors) = (0, 0);
    for i in 0..events {
        if rng.chance(10) {
            let mut l = lists.write().unwrap();
            let name = rng.pick(&LISTS).to_string();
            let pool = ["d1", "new-phone", "10.9.9.9", "mule", "w2", "grocer", "CNY"];
            let set: puhui_risk::ListSet =
                pool.iter().filter(|_| rng.chance(30)).map(|s| s.to_string()).collect();
            l.insert(name, set);
        }
        let t = 1_000 * S + i as u64 * S * (1 + rng.next() % 120);
        let (payer, payee, amount_minor, attributes) = event_parts(&mut rng, t);
        let currency = if rng.chance(90) { "CNY" } else { "KES" };
        // Unknown, near either end of i64 (where `payer_balance - payer_balance / 10` and friends
        // must overflow alike), or near the amount (where a drain rule's edge is).
        let payer_balance_minor = match rng.below(6) {
            0 => None,
            1 => Some(i64::MIN + (rng.next() % 3) as i64),
            2 => Some(i64::MAX - (rng.next() % 3) as i64),
            3 => {
                Some((amount_minor.min(i64::MAX as u64) as i64).saturating_sub((rng.next() % 20_000) as i64))
            }
            _ => Some((rng.next() % 400_000) as i64 - 100_000),
        };
        let e = RiskEvent {
            payer: &payer,
            payee: &payee,
            amount_minor,
            currency,
            timestamp_ns: t,
            attributes: &attributes,
            payer_balance_minor,
        };
        let a = compiled.decide_within(&store, &e, false);
        let b = interpreted.decide_within(&store, &e, false);
        same(&a, &b, &format!("seed {seed}, event {i}: {e:?}"));
        fired += a.fired.len();
        errors += a.errors.len();
        if rng.chance(80) {
            compiled.observe(&mut store, &e);
        }
    }
    (fired, errors)
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../risk-model/tests/fixtures"))
}

#[test]
fn the_starter_ruleset_compiles_whole_and_decides_as_the_interpreter() {
    let ruleset = Ruleset::parse(STARTER).unwrap();
    assert_eq!(ruleset.interpreted_rules().collect::<Vec<_>>(), Vec::<&str>::new());
    let (fired, errors) = differential(ruleset, 6_000, 1);
    assert!(fired > 100 && errors > 100, "the events exercise the rules: {fired} fired, {errors} errors");
}

#[test]
fn the_synthetic_ruleset_compiles_whole_and_decides_as_the_interpreter() {
    let ruleset = Ruleset::parse(&puhui_risk::synthetic::ruleset_text(100)).unwrap();
    assert_eq!(ruleset.compiled_rules(), 100);
    let (fired, _) = differential(ruleset, 2_000, 2);
    assert!(fired > 100, "{fired}");
}

const TEST_RULESET: &str = r#"
version = "strict-1"
[thresholds]
review = 40
decline = 90

[[features]]
name = "payer_count_1h"
entity = "payer"
aggregate = "count"
window = "1h"

[[features]]
name = "tier_sum_24h"
entity = "attr:kyc_tier"
aggregate = "sum"
window = "24h"

[[rules]]
id = "deny_device"
description = "d"
expression = "in_list('deny_devices', ctx.device_id)"
outcome = "decline"

[[rules]]
id = "busy_payer"
description = "d"
expression = "payer_count_1h >= 3"
score = 50

[[rules]]
id = "big"
description = "d"
expression = "amount > 500000"
score = 40

[[rules]]
id = "tier"
description = "d"
expression = "f.tier_sum_24h > 100000 || tier_sum_24h < 0"
score = 10
"#;

#[test]
fn the_test_rulesets_decide_as_the_interpreter() {
    let ruleset = Ruleset::parse(TEST_RULESET).unwrap();
    assert_eq!(ruleset.compiled_rules(), 4);
    differential(ruleset, 3_000, 3);
    let many: String = (0..40)
        .map(|i| {
            format!(
                "[[rules]]\nid = \"r{i}\"\ndescription = \"d\"\nexpression = \"amount > {i}\"\nscore = 1\n"
            )
        })
        .collect();
    let text = format!("version = \"b\"\n[thresholds]\nreview = 1000\ndecline = 2000\n{many}");
    differential(Ruleset::parse(&text).unwrap(), 500, 4);
}

/// Awkward expressions: CEL's typing (int + double is an error, comparisons across numeric types
/// are not), errors inside `&&` and `||`, overflow, division by zero, a missing key, presence tests,
/// string functions, `in`, conditionals, a model score, names the compiler leaves to the
/// interpreter.
const AWKWARD: &[(&str, bool)] = &[
    ("amount + 1 > 0", true),
    ("amount * 4 > 10", true),
    ("amount * amount > 0 || true", true),
    ("true || amount * amount > 0", true),
    ("amount * amount > 0 && false", true),
    ("false && amount * amount > 0", true),
    ("amount * amount > 0 || false", true),
    ("amount / (amount - amount) > 0", true),
    ("amount % 0 == 0", true),
    ("-amount < 0", true),
    ("-(-9223372036854775807 - 1) < 0", true),
    ("z > 1.5", true),
    ("z > 1", true),
    ("f.z >= -1 && c1h > 0.5", true),
    ("c1h == 1.0 || c1h == 1u", true),
    ("c1h < 2u", true),
    ("z + 1.0 > 2.0 && z * 2.0 < 10.0 && z - 0.5 != z / 2.0", true),
    ("-z < 0.0", true),
    ("z + 1 > 2", false),
    ("c1h + z > 2.0", false),
    ("ctx.kyc_tier == '1'", true),
    ("ctx.kyc_tier == 1", true),
    ("ctx.country == 'CN' || ctx.country != '' && ctx.channel != 'app'", true),
    ("'CN' == ctx.country", true),
    ("1000 < amount && 2.5 >= z", true),
    ("ctx.kyc_tier < 1", true),
    ("ctx.kyc_tier < 'b'", true),
    ("new_payee < true", true),
    ("has(ctx.kyc_tier) && ctx.kyc_tier == '2'", true),
    ("ctx.kyc_tier == '2' && has(ctx.kyc_tier)", true),
    ("ctx.txn_type == 'p2p' || ctx.channel == 'app'", true),
    ("ctx.channel == 'app' || ctx.txn_type == 'p2p'", true),
    ("ctx.txn_type == 'p2p' && ctx.channel == 'app'", true),
    ("!(ctx.country == '')", true),
    ("has(f.c1h) && has(f.z)", true),
    ("ctx.channel in ['app', 'web']", true),
    ("amount in [0, 1u, 2.0, 'x']", true),
    ("size(payer) > 2 && ctx.device_id.size() >= 2", true),
    ("ctx.device_id.startsWith('d') || payer.endsWith('1') || ctx.ip.contains('9.9')", true),
    ("payer.contains(ctx.device_id)", true),
    ("new_device ? amount > 100 : c1h > 2", true),
    ("payer_balance_known && amount >= payer_balance - payer_balance / 10", true),
    ("payer_balance * 2 > amount || !payer_balance_known", true),
    ("(ctx.kyc_tier == '1' ? z : 2.5) > 1.0", true),
    ("ctx.missing_attribute == 'x' || true", true),
    ("in_list('deny_devices', ctx.device_id) || in_list('deny_ips', ctx.ip) || in_list('deny_accounts', payer)", true),
    ("in_list('allow_accounts', payee) && in_list('nope', currency)", true),
    ("in_list('deny', 'CNY') == in_list('deny', currency)", true),
    ("fraud > 0.3 || fraud < 0.0001", true),
    ("fraud > 0", true),
    ("fraud + 0.1 > 0.5", true),
    ("int(ctx.kyc_tier) > 1", false),
    ("amount > 5 ? true : 'x'", false),
    ("payer + payee == 'w1grocer'", false),
    ("ctx.size() > 2", false),
    ("[1, 2].exists(x, x > amount)", false),
    ("null == amount", false),
    ("uint(amount) > 5u", false),
    ("amount > 1000 && (amount > 2000 || (amount > 3000 && !(amount > 4000 || c1h > 1)))", true),
];

fn awkward_text() -> String {
    let mut text = String::from(
        "version = \"awkward\"\n[thresholds]\nreview = 30\ndecline = 60\n\
         [[features]]\nname = \"c1h\"\nentity = \"payer\"\naggregate = \"count\"\nwindow = \"1h\"\n\
         [[features]]\nname = \"z\"\nentity = \"payer\"\naggregate = \"zscore\"\nwindow = \"30d\"\n\
         [[features]]\nname = \"dev\"\nentity = \"device\"\naggregate = \"distinct\"\nwindow = \"24h\"\n\
         [[features]]\nname = \"tier_max\"\nentity = \"attr:kyc_tier\"\naggregate = \"max\"\nwindow = \"24h\"\n\
         [[models]]\nname = \"fraud\"\npath = \"xgb_bench_300x6.json\"\n\
         inputs = [\"amount\", \"new_payee\", \"new_device\", \"ctx.kyc_tier\", \"ctx.amount_log\", \"c1h\", \"z\", \"dev\", \"tier_max\", \"payer_balance\"]\n",
    );
    for (i, (expr, _)) in AWKWARD.iter().enumerate() {
        let expr = expr.replace('\\', "\\\\").replace('"', "\\\"");
        text += &format!(
            "[[rules]]\nid = \"a{i}\"\ndescription = \"d\"\nexpression = \"{expr}\"\nscore = {}\n",
            1 + i % 9
        );
    }
    text
}

#[test]
fn awkward_expressions_compile_or_fall_back_and_decide_as_the_interpreter() {
    // Ill-typed expressions on purpose (errors must match the interpreter's): publication refuses
    // them, a journaled ruleset (parsed as published) may still hold them.
    let ruleset = Ruleset::parse_journaled(&awkward_text(), fixtures()).unwrap();
    let interpreted: Vec<String> = ruleset.interpreted_rules().map(String::from).collect();
    for (i, (expr, compiles)) in AWKWARD.iter().enumerate() {
        let id = format!("a{i}");
        assert_eq!(!interpreted.contains(&id), *compiles, "{expr}: compiled = {}", !*compiles);
    }
    let (fired, errors) = differential(ruleset, 4_000, 5);
    assert!(fired > 1_000 && errors > 1_000, "{fired} fired, {errors} errors");
}

/// Random expressions over the ruleset's variables, well and ill typed.
struct Gen<'r> {
    rng: &'r mut Rng,
}

impl Gen<'_> {
    fn num(&mut self, depth: u32) -> String {
        let leaf = depth == 0 || self.rng.chance(40);
        if leaf {
            let leaves = [
                "amount",
                "payer_balance",
                "c1h",
                "f.c1h",
                "z",
                "f.z",
                "dev",
                "tier_max",
                "fraud",
                "0",
                "1",
                "3",
                "500000",
                "-7",
                "2.5",
                "0.0",
                "3u",
                "9223372036854775807",
                "1e300",
            ];
            return self.rng.pick(&leaves).to_string();
        }
        match self.rng.below(5) {
            0 | 1 => {
                let op = self.rng.pick(&["+", "-", "*", "/", "%"]);
                format!("({} {op} {})", self.num(depth - 1), self.num(depth - 1))
            }
            2 => format!("-({})", self.num(depth - 1)),
            3 => format!("size({})", self.string(depth - 1)),
            _ => format!("({} ? {} : {})", self.boolean(depth - 1), self.num(depth - 1), self.num(depth - 1)),
        }
    }

    fn string(&mut self, depth: u32) -> String {
        let _ = depth;
        let attrs = ["device_id", "ip", "channel", "kyc_tier", "txn_type", "country", "nothing"];
        match self.rng.below(6) {
            0 => "payer".to_string(),
            1 => "payee".to_string(),
            2 => "currency".to_string(),
            3 => format!("'{}'", self.rng.pick(&["app", "1", "d1", "CNY", "", "w"])),
            _ => format!("ctx.{}", self.rng.pick(&attrs)),
        }
    }

    fn boolean(&mut self, depth: u32) -> String {
        if depth == 0 || self.rng.chance(15) {
            return self
                .rng
                .pick(&["true", "false", "new_payee", "new_device", "payer_balance_known"])
                .to_string();
        }
        let d = depth - 1;
        match self.rng.below(14) {
            0 | 1 => {
                let op = self.rng.pick(&["<", "<=", ">", ">=", "==", "!="]);
                format!("{} {op} {}", self.num(d), self.num(d))
            }
            2 => {
                let op = self.rng.pick(&["<", "==", "!=", ">="]);
                format!("{} {op} {}", self.string(d), self.string(d))
            }
            3 => {
                let op = self.rng.pick(&["==", "<", "!="]);
                format!("{} {op} {}", self.string(d), self.num(d))
            }
            4 | 5 => format!("({} && {})", self.boolean(d), self.boolean(d)),
            6 | 7 => format!("({} || {})", self.boolean(d), self.boolean(d)),
            8 => format!("!({})", self.boolean(d)),
            9 => format!("in_list('{}', {})", self.rng.pick(&LISTS), self.string(d)),
            10 => format!("has(ctx.{})", self.rng.pick(&["device_id", "kyc_tier", "nothing"])),
            11 => format!(
                "{}.{}({})",
                self.rng.pick(&["payer", "ctx.device_id", "ctx.ip"]),
                self.rng.pick(&["startsWith", "endsWith", "contains"]),
                self.string(d)
            ),
            12 => format!("{} in ['app', 'd1', 1, 2.5]", self.string(d)),
            _ => format!("({} ? {} : {})", self.boolean(d), self.boolean(d), self.boolean(d)),
        }
    }
}

#[test]
fn random_expressions_decide_as_the_interpreter() {
    let mut compiled_total = 0;
    for seed in 0..12u64 {
        let mut rng = Rng(1_000 + seed);
        let mut text = awkward_text();
        text.truncate(text.find("[[rules]]").unwrap());
        for i in 0..60 {
            let expr = Gen { rng: &mut rng }.boolean(4);
            text += &format!(
                "[[rules]]\nid = \"g{i}\"\ndescription = \"d\"\nexpression = \"{expr}\"\nscore = {}\n",
                1 + i % 5
            );
        }
        // Generated expressions may be ill-typed (publication refuses those; see above).
        let ruleset = Ruleset::parse_journaled(&text, fixtures()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        compiled_total += ruleset.compiled_rules();
        differential(ruleset, 400, seed);
    }
    assert!(compiled_total > 12 * 60 / 2, "most random expressions compile: {compiled_total}");
}

#[test]
fn long_chains_compile_up_to_the_depth_bound_and_beyond_it_are_refused() {
    // `&&` chains are balanced by the parser; a sum nests as deep as it is long.
    let chain = |n: usize| format!("amount{} > 5", " + 1".repeat(n));
    let ruleset = |exprs: &[String]| {
        let mut text = String::from("version = \"deep\"\n[thresholds]\nreview = 1\ndecline = 2\n");
        for (i, e) in exprs.iter().enumerate() {
            text +=
                &format!("[[rules]]\nid = \"r{i}\"\ndescription = \"d\"\nexpression = \"{e}\"\nscore = 1\n");
        }
        Ruleset::parse(&text)
    };
    let short = ruleset(&[chain(100)]).expect("within the bound");
    assert_eq!(short.interpreted_rules().count(), 0, "compiled whole");
    // Evaluated on a runtime worker's 2 MiB stack, as the server does, in the release builds that
    // run; a debug build's frames are several times larger (the interpreter recurses per level).
    let stack_bytes = if cfg!(debug_assertions) { 64 << 20 } else { 2 << 20 };
    std::thread::Builder::new()
        .stack_size(stack_bytes)
        .spawn(move || differential(short, 200, 6))
        .unwrap()
        .join()
        .expect("no overflow");
    let e = ruleset(&[chain(100), chain(400)]).err().expect("beyond the bound");
    assert_eq!(e.rule_id.as_deref(), Some("r1"), "{e}");
}
