//! The risk controller: the published rulesets, the active and shadow engines, the allow/deny lists
//! and the velocity features, as one state machine whose every change is a [`RiskRecord`].
//!
//! Online, the caller journals the record each call returns, in call order (the API holds one lock
//! around "change the controller, queue the record"). At start-up, [`Controller::apply`] replays the
//! journaled records in order and rebuilds the same state; a backtest ([`crate::backtest`]) replays
//! them through a candidate ruleset. No I/O and no clock here.
//!
//! With shared features ([`Controller::set_shared_features`], Redis in `puhui serve --redis`), the
//! features live in the backend, not in this controller: [`Controller::decide`] loads a per-decision
//! store within the ruleset's time budget (an error or a timeout makes a degraded decision that takes
//! `budget.on_exceeded`), [`Controller::commit_decision`] records into the backend (a failure is
//! counted in [`SharedStats`], never fatal), and [`Controller::apply`] does not re-record replayed
//! decisions (the other nodes saw them already; the backend's state, bounded by its TTLs, is what a
//! restarted node decides from). Backtests and [`Controller::replay_decision`] always use the local
//! store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::features::{FeatureLimits, FeatureStore};
use crate::records::{
    ActivationRecord, DecisionRecord, DecisionSource, EventRecord, FeatureLimitsRecord, ListOp, ListRecord,
    ModelDigest, RiskRecord, RulesetRecord, Verdict,
};
use crate::rules::{observe, Engine, Lists, Outcome, RiskEvent, Ruleset, RulesetError};
use crate::shared::{observation_of, query_of, SharedError, SharedFeatures};

/// Most rulesets kept published (each is compiled in memory).
pub const RULESETS_MAX: usize = 256;
/// Most lists.
pub const LISTS_MAX: usize = 256;
/// Most values in one list.
pub const LIST_VALUES_MAX: usize = 1_000_000;
/// Most values of one scope (a tenant's, [`crate::ListSet::scope_of`]) in one list, when changed
/// through [`Controller::change_list_in_scope`]: one tenant cannot fill a list all tenants share.
pub const LIST_VALUES_PER_SCOPE_MAX: usize = 100_000;
/// Most values in one list change.
pub const LIST_CHANGE_VALUES_MAX: usize = 10_000;
/// Longest list name.
pub const LIST_NAME_BYTES_MAX: usize = 64;
/// Longest ruleset text.
pub const RULESET_TEXT_BYTES_MAX: usize = 512 * 1024;

/// Why a controller call was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlError {
    /// The ruleset does not parse or compile (rule id, line, column).
    Ruleset(RulesetError),
    /// A version that is already published names another text.
    VersionConflict(String),
    /// No ruleset with this version is published.
    UnknownVersion(String),
    /// A bound is reached (rulesets, lists, list values, text size).
    Limit(String),
    /// A list name or value is not acceptable.
    InvalidList(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Ruleset(e) => write!(f, "the ruleset is invalid: {e}"),
            ControlError::VersionConflict(v) => {
                write!(f, "ruleset version {v:?} is already published with another text; pick a new version")
            }
            ControlError::UnknownVersion(v) => write!(f, "no ruleset with version {v:?} is published"),
            ControlError::Limit(why) => f.write_str(why),
            ControlError::InvalidList(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ControlError {}

struct Published {
    ruleset: Arc<Ruleset>,
    text: String,
    /// The model digests its record holds (as journaled: empty in records older than digests).
    models: Vec<ModelDigest>,
}

/// Rulesets, engines, lists and features.
pub struct Controller {
    rulesets: BTreeMap<String, Published>,
    active: Engine,
    shadow: Option<Engine>,
    features: FeatureStore,
    lists: Lists,
    models_dir: PathBuf,
    /// The version [`Controller::new`] published without a journal record yet: a journaled text
    /// of the same version replaces it on replay (the journal is the truth).
    provisional: Option<String>,
    /// Where the features live when they are shared by several nodes (`features` is then unused).
    shared: Option<Arc<dyn SharedFeatures>>,
    shared_stats: SharedStats,
    /// Whether the active or the shadow ruleset reads the payer's balance, kept current at each
    /// activation ([`Controller::reads_payer_balance`]).
    reads_payer_balance: Arc<std::sync::atomic::AtomicBool>,
}

/// Failures of the shared-features backend seen by this controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Decisions degraded because their features could not be loaded in time.
    pub loads_failed: u64,
    /// Observed events the backend did not take (their decisions stand; the windows miss them).
    pub records_failed: u64,
    /// The last failure.
    pub last_error: Option<SharedError>,
}

/// A published ruleset, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetInfo {
    /// Its version.
    pub version: String,
    /// Rules in it.
    pub rules: usize,
    /// Whether it is the active one.
    pub active: bool,
    /// Whether it runs in shadow.
    pub shadow: bool,
}

impl Controller {
    /// A controller running `text` (parsed with model paths relative to `models_dir`); also returns
    /// the records that publish and activate it.
    pub fn new(
        text: &str,
        models_dir: &Path,
        limits: FeatureLimits,
    ) -> Result<(Controller, Vec<RiskRecord>), ControlError> {
        Controller::new_parsed(text, models_dir, limits, Ruleset::parse_in)
    }

    /// [`Controller::new`] for a text that may already be in the journal: parsed as a journaled
    /// ruleset ([`Ruleset::parse_journaled`], without the publish-time checks), so that a node can
    /// start with `--ruleset` naming a ruleset it published before those checks existed. The caller
    /// must check a text the journal does not hold with [`Ruleset::parse_in`] before journaling it.
    pub fn new_journaled(
        text: &str,
        models_dir: &Path,
        limits: FeatureLimits,
    ) -> Result<(Controller, Vec<RiskRecord>), ControlError> {
        Controller::new_parsed(text, models_dir, limits, Ruleset::parse_journaled)
    }

    fn new_parsed(
        text: &str,
        models_dir: &Path,
        limits: FeatureLimits,
        parse: fn(&str, &Path) -> Result<Ruleset, crate::RulesetError>,
    ) -> Result<(Controller, Vec<RiskRecord>), ControlError> {
        let ruleset = Arc::new(parse(text, models_dir).map_err(ControlError::Ruleset)?);
        let version = ruleset.version.clone();
        let models = ruleset.model_digests();
        let lists: Lists = Arc::default();
        let mut rulesets = BTreeMap::new();
        rulesets.insert(
            version.clone(),
            Published {
                ruleset: Arc::clone(&ruleset),
                text: text.to_string(),
                models: ruleset.model_digests(),
            },
        );
        let reads_payer_balance = Arc::new(ruleset.reads_payer_balance().into());
        let controller = Controller {
            rulesets,
            active: Engine::new(ruleset, Arc::clone(&lists)),
            shadow: None,
            features: FeatureStore::new(limits),
            lists,
            models_dir: models_dir.to_path_buf(),
            provisional: Some(version.clone()),
            shared: None,
            shared_stats: SharedStats::default(),
            reads_payer_balance,
        };
        let records = vec![
            RiskRecord::Ruleset(RulesetRecord { version: version.clone(), text: text.to_string(), models }),
            RiskRecord::Activation(ActivationRecord { active: version, shadow: None }),
        ];
        Ok((controller, records))
    }

    /// Seeds the feature store's placement hash ([`FeatureStore::with_seed`]): give the seed the
    /// online run used before replaying its records, so that evictions past `keys_max` match.
    /// Only an empty store can be seeded (its keys would be misplaced); `false` if it held some.
    pub fn seed_features(&mut self, seed: u64) -> bool {
        if self.features.keys() > 0 {
            return false;
        }
        self.features = FeatureStore::with_seed(self.features.limits(), seed);
        true
    }

    /// Takes `store` (loaded from a snapshot) as the velocity features, if it fits: the controller's
    /// own store is still empty, local (no shared backend), and has the same placement seed (so
    /// that what it goes on to evict is what a full replay would). Its bounds are the journal's at
    /// the snapshot's position; a start given others changes them after the replay
    /// ([`Controller::change_feature_limits`]). Gives `store` back otherwise.
    pub fn restore_features(&mut self, store: FeatureStore) -> Result<(), FeatureStore> {
        let fits = self.features.keys() == 0
            && self.shared.is_none()
            && store.seed() == self.features.seed()
            && store.limits().horizon_ns == self.features.limits().horizon_ns;
        if !fits {
            return Err(store);
        }
        self.features = store;
        Ok(())
    }

    /// A flag, kept current, saying whether the active or the shadow ruleset reads the payer's
    /// balance: a caller that must look the balance up for an event ([`RiskEvent::payer_balance_minor`])
    /// reads it without the controller (the ledger then asks for the balance only when a rule or
    /// model uses it). Read just before a decision, it may be a change of ruleset behind: that
    /// decision sees the balance as unknown (`payer_balance_known` false) or carries one it does
    /// not read; the record keeps what it saw, so a replay decides the same.
    pub fn reads_payer_balance(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.reads_payer_balance)
    }

    fn note_reads(&self) {
        let reads = self.active.ruleset().reads_payer_balance()
            || self.shadow.as_ref().is_some_and(|s| s.ruleset().reads_payer_balance());
        self.reads_payer_balance.store(reads, std::sync::atomic::Ordering::Relaxed);
    }

    /// The active engine.
    pub fn active(&self) -> &Engine {
        &self.active
    }

    /// The shadow engine, if one runs.
    pub fn shadow(&self) -> Option<&Engine> {
        self.shadow.as_ref()
    }

    /// The velocity features.
    pub fn features(&self) -> &FeatureStore {
        &self.features
    }

    /// Keeps the velocity features in `shared` (several nodes, one set of windows) instead of this
    /// controller's own store; `None` goes back to the local store. Set it before replaying the
    /// journal: replayed decisions then skip the local store too.
    pub fn set_shared_features(&mut self, shared: Option<Arc<dyn SharedFeatures>>) {
        self.shared = shared;
    }

    /// Whether the features are shared, and the backend's failures so far.
    pub fn shared_stats(&self) -> Option<&SharedStats> {
        self.shared.as_ref().map(|_| &self.shared_stats)
    }

    /// Waits until the events recorded in shared features (if any) are confirmed there; for a
    /// node that stops.
    pub fn confirm_shared(&self) -> Result<(), SharedError> {
        self.shared.as_ref().map_or(Ok(()), |s| s.confirm())
    }

    /// The lists the engines read.
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    /// Published rulesets, by version.
    pub fn rulesets(&self) -> Vec<RulesetInfo> {
        let active = &self.active.ruleset().version;
        let shadow = self.shadow.as_ref().map(|e| &e.ruleset().version);
        self.rulesets
            .iter()
            .map(|(v, p)| RulesetInfo {
                version: v.clone(),
                rules: p.ruleset.rules().count(),
                active: v == active,
                shadow: Some(v) == shadow,
            })
            .collect()
    }

    /// A published ruleset's text.
    pub fn ruleset_text(&self, version: &str) -> Option<&str> {
        self.rulesets.get(version).map(|p| p.text.as_str())
    }

    /// Decides `event` with the active ruleset (and the shadow one, logged only). The record says
    /// whether the event is to enter the velocity features (`record` and not declined); it enters
    /// them with [`Controller::commit_decision`], once the caller has queued the record for the
    /// journal (so features never hold an event the journal lacks).
    pub fn decide(
        &mut self,
        id: String,
        source: DecisionSource,
        event: &RiskEvent<'_>,
        record: bool,
    ) -> DecisionRecord {
        self.decide_record(id, source, EventRecord::of(event), record)
    }

    /// [`Controller::decide`] with the event moved into the record instead of copied.
    pub fn decide_record(
        &mut self,
        id: String,
        source: DecisionSource,
        event_record: EventRecord,
        record: bool,
    ) -> DecisionRecord {
        let event = &event_record.as_event();
        let (active, shadow) = match self.shared.clone() {
            None => (
                Verdict::from(self.active.decide(&self.features, event)),
                self.shadow.as_ref().map(|e| Verdict::from(e.decide(&self.features, event))),
            ),
            Some(shared) => self.decide_shared(shared.as_ref(), event),
        };
        let observed = record && active.outcome != Outcome::Decline;
        DecisionRecord { id, source, event: event_record, observed, active, shadow }
    }

    /// Loads the features from the shared backend within the active ruleset's budget, then decides
    /// on them; a failed load makes degraded verdicts with each ruleset's `on_exceeded` outcome.
    /// The verdicts' latency includes the load.
    fn decide_shared(
        &mut self,
        shared: &dyn SharedFeatures,
        event: &RiskEvent<'_>,
    ) -> (Verdict, Option<Verdict>) {
        let started = std::time::Instant::now();
        let mut engines = vec![&self.active];
        engines.extend(self.shadow.as_ref());
        let query = query_of(&engines, event);
        let budget_ns = self.active.ruleset().budget.decision_ns;
        match shared.load(&query, budget_ns) {
            Ok(store) => {
                let load_ns = started.elapsed().as_nanos() as u64;
                let verdict = |engine: &Engine| {
                    let mut v = Verdict::from(engine.decide(&store, event));
                    v.latency_ns = v.latency_ns.saturating_add(load_ns);
                    v
                };
                (verdict(&self.active), self.shadow.as_ref().map(verdict))
            }
            Err(e) => {
                let latency_ns = started.elapsed().as_nanos() as u64;
                let degraded = |engine: &Engine| {
                    let ruleset = engine.ruleset();
                    Verdict {
                        ruleset_version: ruleset.version.clone(),
                        outcome: ruleset.budget.on_exceeded,
                        score: 0,
                        fired: Vec::new(),
                        features: Vec::new(),
                        errors: Vec::new(),
                        degraded: Some(format!("no features: {e}")),
                        latency_ns,
                    }
                };
                let verdicts = (degraded(&self.active), self.shadow.as_ref().map(degraded));
                self.shared_stats.loads_failed += 1;
                self.shared_stats.last_error = Some(e);
                verdicts
            }
        }
    }

    /// Records a decided event in the velocity features if its record says so (online, after the
    /// record is queued; at start-up, [`Controller::apply`] does the same for the local store).
    /// With shared features the event goes to the backend; a failure is counted, not returned.
    pub fn commit_decision(&mut self, d: &DecisionRecord) {
        if !d.observed {
            return;
        }
        let event = d.event.as_event();
        match self.shared.clone() {
            None => self.observe(&event),
            Some(shared) => {
                let names = attribute_entities(&self.active, self.shadow.as_ref());
                if let Err(e) = shared.record(&observation_of(&d.id, &event, &names)) {
                    self.shared_stats.records_failed += 1;
                    self.shared_stats.last_error = Some(e);
                }
            }
        }
    }

    /// Decides a recorded decision's event again (active and shadow, without a time budget), then
    /// records the event in the features if it was recorded online: what a backtest and a
    /// reproduction check run.
    pub fn replay_decision(&mut self, d: &DecisionRecord) -> (Verdict, Option<Verdict>) {
        let event = d.event.as_event();
        // No time budget in a replay: the result must not depend on how busy the machine is.
        let active = Verdict::from(self.active.decide_within(&self.features, &event, false));
        let shadow =
            self.shadow.as_ref().map(|e| Verdict::from(e.decide_within(&self.features, &event, false)));
        if d.observed {
            self.observe(&event);
        }
        (active, shadow)
    }

    fn observe(&mut self, event: &RiskEvent<'_>) {
        let names = attribute_entities(&self.active, self.shadow.as_ref());
        observe(&mut self.features, event, &names);
    }

    /// Marks the records [`Controller::new`] returned as journaled.
    pub fn confirm_initial(&mut self) {
        self.provisional = None;
    }

    /// After a replay that activated a journaled ruleset: forgets the ruleset [`Controller::new`]
    /// was given if the journal never published it (and it is neither active nor in shadow), so
    /// that only journaled rulesets are listed and activatable. Publishing it again
    /// ([`Controller::publish`]) then returns the record that journals it.
    pub fn drop_unjournaled_initial(&mut self) {
        let Some(version) = self.provisional.take() else { return };
        let in_use = self.active.ruleset().version == version
            || self.shadow.as_ref().is_some_and(|e| e.ruleset().version == version);
        if !in_use {
            self.rulesets.remove(&version);
        }
    }

    /// Publishes a ruleset. `Ok(None)` if this exact text is already published under its version.
    pub fn publish(&mut self, text: &str) -> Result<(String, Option<RiskRecord>), ControlError> {
        self.publish_parsed(text, Ruleset::parse_in)
    }

    /// The parse [`Controller::publish`] makes, done without the controller (so without holding
    /// its lock): parsing reads and checks the ruleset's model files (~10 ms for a 300-tree model),
    /// which every decision would wait for under the lock. Hand the result to
    /// [`Controller::publish_prepared`]; `models_dir` is [`Controller::models_dir`].
    pub fn prepare(text: &str, models_dir: &Path) -> Result<Ruleset, ControlError> {
        check_text_len(text)?;
        Ruleset::parse_in(text, models_dir).map_err(ControlError::Ruleset)
    }

    /// [`Controller::publish`] with the parse [`Controller::prepare`] made (its error is returned
    /// only if the text is not published already: a published text is answered as such).
    pub fn publish_prepared(
        &mut self,
        text: &str,
        prepared: Result<Ruleset, ControlError>,
    ) -> Result<(String, Option<RiskRecord>), ControlError> {
        self.publish_with(text, |_, _| prepared)
    }

    /// Where the rulesets' model paths are resolved.
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    fn publish_parsed(
        &mut self,
        text: &str,
        parse: fn(&str, &Path) -> Result<Ruleset, crate::RulesetError>,
    ) -> Result<(String, Option<RiskRecord>), ControlError> {
        self.publish_with(text, |text, models_dir| parse(text, models_dir).map_err(ControlError::Ruleset))
    }

    fn publish_with(
        &mut self,
        text: &str,
        parse: impl FnOnce(&str, &Path) -> Result<Ruleset, ControlError>,
    ) -> Result<(String, Option<RiskRecord>), ControlError> {
        check_text_len(text)?;
        // The same text always names the same version: already published (perhaps before a check
        // it would now fail existed), it is answered without parsing it again.
        if let Some((version, _)) = self.rulesets.iter().find(|(_, p)| p.text == text) {
            return Ok((version.clone(), None));
        }
        let ruleset = parse(text, &self.models_dir)?;
        let version = ruleset.version.clone();
        if let Some(existing) = self.rulesets.get(&version) {
            return if existing.text == text {
                Ok((version, None))
            } else {
                Err(ControlError::VersionConflict(version))
            };
        }
        if self.rulesets.len() >= RULESETS_MAX {
            return Err(ControlError::Limit(format!("at most {RULESETS_MAX} rulesets can be published")));
        }
        let models = ruleset.model_digests();
        self.rulesets.insert(
            version.clone(),
            Published { ruleset: Arc::new(ruleset), text: text.to_string(), models: models.clone() },
        );
        Ok((
            version.clone(),
            Some(RiskRecord::Ruleset(RulesetRecord { version, text: text.to_string(), models })),
        ))
    }

    /// [`Controller::publish`] for a journaled ruleset, parsed as when it was published
    /// ([`Ruleset::parse_journaled`]): its model files must be the ones it was published with
    /// (same digests), or the decisions made with it could not be reproduced.
    fn publish_journaled(&mut self, r: &RulesetRecord) -> Result<(), ControlError> {
        let (version, _) = self.publish_parsed(&r.text, Ruleset::parse_journaled)?;
        let now = self.rulesets[&version].ruleset.model_digests();
        if r.models.is_empty() || now == r.models {
            if let Some(published) = self.rulesets.get_mut(&version) {
                published.models = r.models.clone();
            }
            return Ok(());
        }
        self.rulesets.remove(&version);
        let changed: Vec<&str> =
            r.models.iter().filter(|m| !now.contains(m)).map(|m| m.name.as_str()).collect();
        Err(ControlError::Ruleset(crate::RulesetError {
            rule_id: None,
            line: 1,
            column: 1,
            message: format!(
                "ruleset {version}: the model file of {} changed since it was published (BLAKE3 differs); \
                 restore the file it was published with, or publish the new one under a new version",
                changed.join(", ")
            ),
        }))
    }

    /// Makes `active` the acted-on ruleset and `shadow` (if any) the logged one, atomically: the
    /// next decision uses both. `None` if nothing changes.
    pub fn activate(
        &mut self,
        active: &str,
        shadow: Option<&str>,
    ) -> Result<Option<RiskRecord>, ControlError> {
        let find = |v: &str| {
            self.rulesets
                .get(v)
                .map(|p| Arc::clone(&p.ruleset))
                .ok_or_else(|| ControlError::UnknownVersion(v.to_string()))
        };
        let active_ruleset = find(active)?;
        let shadow_ruleset = shadow.map(find).transpose()?;
        let same = self.active.ruleset().version == active
            && self.shadow.as_ref().map(|e| e.ruleset().version.as_str()) == shadow;
        if same {
            return Ok(None);
        }
        self.active = Engine::new(active_ruleset, Arc::clone(&self.lists));
        self.shadow = shadow_ruleset.map(|r| Engine::new(r, Arc::clone(&self.lists)));
        self.note_reads();
        Ok(Some(RiskRecord::Activation(ActivationRecord {
            active: active.to_string(),
            shadow: shadow.map(str::to_string),
        })))
    }

    /// Adds values to a list or removes them.
    pub fn change_list(
        &mut self,
        name: &str,
        op: ListOp,
        values: Vec<String>,
    ) -> Result<RiskRecord, ControlError> {
        let record = ListRecord { name: name.to_string(), op, values };
        self.apply_list(&record, None)?;
        Ok(RiskRecord::List(record))
    }

    /// [`Controller::change_list`] on behalf of `scope` (a tenant, whose values are
    /// `<tenant>:<value>`): an addition that would leave more than
    /// [`LIST_VALUES_PER_SCOPE_MAX`] of the scope's values in the list is refused. Replays apply
    /// the record without this check (it was made when the change was).
    pub fn change_list_in_scope(
        &mut self,
        name: &str,
        op: ListOp,
        values: Vec<String>,
        scope: &str,
    ) -> Result<RiskRecord, ControlError> {
        let record = ListRecord { name: name.to_string(), op, values };
        self.apply_list(&record, Some(scope))?;
        Ok(RiskRecord::List(record))
    }

    /// `Ok` if `name` can name a list: 1–[`LIST_NAME_BYTES_MAX`] characters of `[A-Za-z0-9_-]`.
    pub fn check_list_name(name: &str) -> Result<(), ControlError> {
        let name_ok = !name.is_empty()
            && name.len() <= LIST_NAME_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(ControlError::InvalidList(format!(
                "a list name is 1–{LIST_NAME_BYTES_MAX} characters of [A-Za-z0-9_-]"
            )));
        }
        Ok(())
    }

    fn apply_list(&mut self, record: &ListRecord, scope: Option<&str>) -> Result<(), ControlError> {
        Controller::check_list_name(&record.name)?;
        if record.values.len() > LIST_CHANGE_VALUES_MAX {
            return Err(ControlError::Limit(format!(
                "at most {LIST_CHANGE_VALUES_MAX} values per change; this one has {}",
                record.values.len()
            )));
        }
        let mut lists = self.lists.write().unwrap_or_else(|p| p.into_inner());
        if !lists.contains_key(&record.name) && lists.len() >= LISTS_MAX {
            return Err(ControlError::Limit(format!("at most {LISTS_MAX} lists")));
        }
        let list = lists.entry(record.name.clone()).or_default();
        match record.op {
            ListOp::Add => {
                if list.len() + record.values.len() > LIST_VALUES_MAX {
                    return Err(ControlError::Limit(format!(
                        "a list holds at most {LIST_VALUES_MAX} values"
                    )));
                }
                if let Some(scope) = scope {
                    let adding =
                        record.values.iter().filter(|v| crate::ListSet::scope_of(v) == scope).count();
                    if list.len_in_scope(scope) + adding > LIST_VALUES_PER_SCOPE_MAX {
                        return Err(ControlError::Limit(format!(
                            "a tenant holds at most {LIST_VALUES_PER_SCOPE_MAX} values in a list; this one \
                             holds {} and the change adds up to {adding}",
                            list.len_in_scope(scope)
                        )));
                    }
                }
                list.extend(record.values.iter().cloned());
            }
            ListOp::Remove => {
                for v in &record.values {
                    list.remove(v);
                }
            }
        }
        Ok(())
    }

    /// The values of a list, sorted (at most `limit`), and whether there are more
    /// ([`list_page`] on [`Controller::lists`]).
    pub fn list_values(
        &self,
        name: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Option<(Vec<String>, bool)> {
        list_page(&self.lists, name, prefix, after, limit)
    }

    /// Records that rebuild this controller's rulesets, activation, lists and feature bounds when
    /// applied ([`Controller::apply`]) to a new controller in order: the feature store's bounds,
    /// each journaled ruleset as its record held it, the activation (unless the active ruleset is
    /// still the provisional one [`Controller::new`] was given), and each list's values, at most
    /// [`LIST_CHANGE_VALUES_MAX`] per record. Risk control's snapshot carries them, so that a start
    /// reads the journal from the snapshot's position instead of from its beginning.
    pub fn state_records(&self) -> Vec<RiskRecord> {
        let provisional = self.provisional.as_deref();
        let limits = self.features.limits();
        let mut records = vec![RiskRecord::FeatureLimits(FeatureLimitsRecord {
            keys_max: limits.keys_max as u64,
            events_per_key_max: limits.events_per_key_max as u64,
        })];
        records.extend(
            self.rulesets.iter().filter(|(version, _)| Some(version.as_str()) != provisional).map(
                |(version, p)| {
                    RiskRecord::Ruleset(RulesetRecord {
                        version: version.clone(),
                        text: p.text.clone(),
                        models: p.models.clone(),
                    })
                },
            ),
        );
        let active = self.active.ruleset().version.as_str();
        if Some(active) != provisional {
            records.push(RiskRecord::Activation(ActivationRecord {
                active: active.to_string(),
                shadow: self.shadow.as_ref().map(|e| e.ruleset().version.clone()),
            }));
        }
        let lists = self.lists.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = lists.keys().collect();
        names.sort();
        for name in names {
            let values: Vec<String> = lists[name].iter().cloned().collect();
            if values.is_empty() {
                records.push(RiskRecord::List(ListRecord { name: name.clone(), op: ListOp::Add, values }));
                continue;
            }
            for chunk in values.chunks(LIST_CHANGE_VALUES_MAX) {
                records.push(RiskRecord::List(ListRecord {
                    name: name.clone(),
                    op: ListOp::Add,
                    values: chunk.to_vec(),
                }));
            }
        }
        records
    }

    /// [`Controller::apply`] of a decision read as its head
    /// ([`crate::records::binary::decode_head`]): the event re-enters the features if it did
    /// online (`observed`); with shared features it is not recorded again.
    pub fn apply_observed(&mut self, observed: bool, event: &crate::records::EventRecord) {
        if self.shared.is_none() && observed {
            self.observe(&event.as_event());
        }
    }

    /// Replays a journaled record (start-up): a decision re-enters the features if it did online
    /// (it is not decided again), rulesets are published, activations switched, lists changed.
    /// With shared features a decision is not recorded again: the backend holds it already.
    pub fn apply(&mut self, record: &RiskRecord) -> Result<(), ControlError> {
        match record {
            RiskRecord::Decision(d) => self.apply_observed(d.observed, &d.event),
            RiskRecord::Label(_) => {}
            RiskRecord::Ruleset(r) => {
                if self.provisional.as_deref() == Some(r.version.as_str()) {
                    self.provisional = None;
                    let replaced = self.rulesets.remove(&r.version);
                    if let Err(e) = self.publish_journaled(r) {
                        if let Some(p) = replaced {
                            self.rulesets.insert(r.version.clone(), p);
                        }
                        return Err(e);
                    }
                    if self.active.ruleset().version == r.version {
                        let ruleset = Arc::clone(&self.rulesets[&r.version].ruleset);
                        self.active = Engine::new(ruleset, Arc::clone(&self.lists));
                        self.note_reads();
                    }
                } else {
                    self.publish_journaled(r)?;
                }
            }
            RiskRecord::Activation(a) => {
                self.activate(&a.active, a.shadow.as_deref())?;
            }
            RiskRecord::List(l) => self.apply_list(l, None)?,
            RiskRecord::FeatureLimits(l) => self.apply_feature_limits(l)?,
        }
        Ok(())
    }

    /// Bounds the feature store by `limits` from now on: the record that journals the change, or
    /// `None` if they are the bounds already. A start given other bounds than the journal's last
    /// calls it after the replay, so that the next replay changes them at the same place.
    pub fn change_feature_limits(
        &mut self,
        limits: FeatureLimits,
    ) -> Result<Option<RiskRecord>, ControlError> {
        let current = self.features.limits();
        if (current.keys_max, current.events_per_key_max) == (limits.keys_max, limits.events_per_key_max) {
            return Ok(None);
        }
        let record = FeatureLimitsRecord {
            keys_max: limits.keys_max as u64,
            events_per_key_max: limits.events_per_key_max as u64,
        };
        self.apply_feature_limits(&record)?;
        Ok(Some(RiskRecord::FeatureLimits(record)))
    }

    fn apply_feature_limits(&mut self, l: &FeatureLimitsRecord) -> Result<(), ControlError> {
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        self.features
            .set_limits(as_usize(l.keys_max), as_usize(l.events_per_key_max))
            .map_err(ControlError::Limit)
    }
}

/// The attributes the active and shadow rulesets keep features for (their union).
fn attribute_entities<'e>(active: &'e Engine, shadow: Option<&'e Engine>) -> Vec<&'e str> {
    let mut names: Vec<&str> = active.attribute_entities();
    if let Some(shadow) = shadow {
        for name in shadow.attribute_entities() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// A page of the list `name`: its values that start with `prefix` and sort after `after`, the
/// first `limit` of them in order, and whether there are more (`None`: no such list).
///
/// Takes only the lists' read lock, so decisions (which read the lists too) go on meanwhile; call
/// it without the controller's lock. One pass over the list keeping the `limit + 1` smallest
/// candidates in a heap: O(n log limit) and no copy of the list. Choice, over collecting and
/// sorting every candidate per page: on a list of a million values that sort took hundreds of
/// milliseconds (under the controller's lock, then: every decision waited), and a list kept sorted
/// (a B-tree) would make every `in_list` of a decision a walk of string comparisons instead of a
/// hash lookup.
pub fn list_page(
    lists: &Lists,
    name: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Option<(Vec<String>, bool)> {
    let lists = lists.read().unwrap_or_else(|p| p.into_inner());
    let list = lists.get(name)?;
    let keep = limit.saturating_add(1);
    let mut smallest: std::collections::BinaryHeap<&str> =
        std::collections::BinaryHeap::with_capacity(keep.min(1_024));
    let candidates =
        list.iter().map(String::as_str).filter(|v| v.starts_with(prefix) && after.is_none_or(|a| *v > a));
    for value in candidates {
        if smallest.len() < keep {
            smallest.push(value);
        } else if let Some(mut largest) = smallest.peek_mut() {
            if value < *largest {
                *largest = value;
            }
        }
    }
    let mut values = smallest.into_sorted_vec();
    let more = values.len() > limit;
    values.truncate(limit);
    Some((values.into_iter().map(str::to_string).collect(), more))
}

/// `Err` for a ruleset text over [`RULESET_TEXT_BYTES_MAX`].
fn check_text_len(text: &str) -> Result<(), ControlError> {
    if text.len() > RULESET_TEXT_BYTES_MAX {
        return Err(ControlError::Limit(format!(
            "a ruleset has at most {RULESET_TEXT_BYTES_MAX} bytes; this one has {}",
            text.len()
        )));
    }
    Ok(())
}
