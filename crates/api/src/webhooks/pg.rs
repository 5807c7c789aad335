//! The webhook state in PostgreSQL (the `serve --store postgres://…` storage of [`super::Webhooks`]):
//! endpoints (`puhui_webhook_endpoints`, each as its JSON with its secrets), deliveries and their log
//! (`puhui_webhook_deliveries`, numbered by the sequence `puhui_webhook_delivery_numbers`) and the
//! dispatcher's cursor (the `webhooks` row of `puhui_event_cursors`). Every node reads and changes
//! them; only the node holding the dispatcher lease ingests and attempts deliveries. The decisions
//! (which endpoint gets which event, retries, rotation, limits) are the parent module's functions:
//! this module only loads and stores.

use std::sync::Arc;

use puhui_events::EventType;
use puhui_store_pg::postgres::{self, Client, Row, Transaction};
use puhui_store_pg::PgStore;

use super::{
    check_endpoint_limits, new_delivery, pending_limit, redelivery_targets, Delivery, DeliveryStatus,
    Endpoint, HookError, DELIVERY_LOG_PER_ENDPOINT_MAX, INGEST_SPAN_ENTRIES_MAX, PENDING_DELIVERIES_MAX,
};

/// The dispatcher's row in `puhui_event_cursors`.
const CURSOR: &str = "webhooks";

const DELIVERY_COLUMNS: &str = "number, endpoint_id, tenant, event_seq, event_type, status, attempts, \
     created_at_ms, first_attempt_at_ms, next_attempt_at_ms, last_attempt_at_ms, last_status_code, last_error";

fn db(e: postgres::Error) -> HookError {
    HookError::Io(format!("webhooks in PostgreSQL: {}", puhui_store_pg::describe(&e)))
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn status_code(s: DeliveryStatus) -> i16 {
    match s {
        DeliveryStatus::Pending => 0,
        DeliveryStatus::Succeeded => 1,
        DeliveryStatus::Failed => 2,
    }
}

fn delivery(r: &Row) -> Delivery {
    Delivery {
        number: u(r.get(0)),
        endpoint_id: r.get(1),
        tenant: r.get(2),
        event_seq: u(r.get(3)),
        event_type: r.get(4),
        status: match r.get::<_, i16>(5) {
            0 => DeliveryStatus::Pending,
            1 => DeliveryStatus::Succeeded,
            _ => DeliveryStatus::Failed,
        },
        attempts: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        created_at_ms: u(r.get(7)),
        first_attempt_at_ms: r.get::<_, Option<i64>>(8).map(u),
        next_attempt_at_ms: u(r.get(9)),
        last_attempt_at_ms: r.get::<_, Option<i64>>(10).map(u),
        last_status_code: r.get::<_, Option<i32>>(11).and_then(|c| u16::try_from(c).ok()),
        last_error: r.get(12),
    }
}

fn endpoint(body: &str) -> Result<Endpoint, HookError> {
    serde_json::from_str(body).map_err(|e| HookError::Io(format!("a stored webhook endpoint: {e}")))
}

fn endpoint_json(e: &Endpoint) -> String {
    serde_json::to_string(e).expect("an endpoint serialises")
}

/// The tenant's endpoints (only `id` if given), oldest first.
fn tenant_endpoints(
    tx: &mut Transaction<'_>,
    tenant: &str,
    id: Option<&str>,
) -> Result<Vec<Endpoint>, HookError> {
    tx.query(
        "SELECT body FROM puhui_webhook_endpoints WHERE tenant = $1 AND ($2::text IS NULL OR id = $2) \
         ORDER BY created_at_ms, id",
        &[&tenant, &id],
    )
    .map_err(db)?
    .iter()
    .map(|r| endpoint(r.get(0)))
    .collect()
}

/// The webhook tables, through the store's connections.
#[derive(Clone)]
pub(super) struct PgHooks {
    store: Arc<PgStore>,
}

impl PgHooks {
    pub(super) fn new(store: Arc<PgStore>) -> PgHooks {
        PgHooks { store }
    }

    /// Runs `f` in a transaction on one of the store's connections (blocking).
    fn tx<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T, HookError>) -> Result<T, HookError> {
        let mut out = None;
        self.store
            .with_connection(|c: &mut Client| {
                let result = (|| {
                    let mut tx = c.transaction().map_err(db)?;
                    let value = f(&mut tx)?;
                    tx.commit().map_err(db)?;
                    Ok(value)
                })();
                out = Some(result);
                Ok(())
            })
            .map_err(|e| HookError::Io(e.to_string()))?;
        out.unwrap_or_else(|| Err(HookError::Io("no connection".into())))
    }

    /// Creates the dispatcher's cursor at `start` (the durable end of the journal) unless it exists.
    pub(super) fn init_cursor(&self, start: u64) -> Result<(), HookError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO puhui_event_cursors (name, next_seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&CURSOR, &i(start)],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    /// Turns the events in `[cursor, indexed)` (at most [`INGEST_SPAN_ENTRIES_MAX`] entries) into
    /// deliveries with `plan(from, to, endpoints)` and moves the cursor, in one transaction (so a
    /// crash makes them all or none). Returns the cursor after it.
    pub(super) fn ingest(
        &self,
        indexed: u64,
        now: u64,
        plan: impl FnOnce(u64, u64, &[Endpoint]) -> Vec<(String, String, u64, EventType)>,
    ) -> Result<u64, HookError> {
        self.tx(|tx| {
            let row = tx
                .query_opt("SELECT next_seq FROM puhui_event_cursors WHERE name = $1 FOR UPDATE", &[&CURSOR])
                .map_err(db)?
                .ok_or_else(|| HookError::Io("the webhook dispatcher's cursor row is missing".into()))?;
            let from = u(row.get(0));
            if indexed <= from {
                return Ok(from);
            }
            let pending: i64 = tx
                .query_one("SELECT count(*) FROM puhui_webhook_deliveries WHERE status = 0", &[])
                .map_err(db)?
                .get(0);
            metrics::gauge!("puhui_webhook_deliveries_pending").set(pending as f64);
            if u(pending) >= PENDING_DELIVERIES_MAX as u64 {
                return Ok(from);
            }
            let to = indexed.min(from + INGEST_SPAN_ENTRIES_MAX);
            let endpoints = tx
                .query("SELECT body FROM puhui_webhook_endpoints ORDER BY created_at_ms, id", &[])
                .map_err(db)?
                .iter()
                .map(|r| endpoint(r.get(0)))
                .collect::<Result<Vec<_>, _>>()?;
            let created = plan(from, to, &endpoints);
            if !created.is_empty() {
                let endpoint_ids: Vec<&str> = created.iter().map(|c| c.0.as_str()).collect();
                let tenants: Vec<&str> = created.iter().map(|c| c.1.as_str()).collect();
                let seqs: Vec<i64> = created.iter().map(|c| i(c.2)).collect();
                let kinds: Vec<&str> = created.iter().map(|c| c.3.as_str()).collect();
                tx.execute(
                    &format!(
                        "INSERT INTO puhui_webhook_deliveries ({DELIVERY_COLUMNS}) \
                         SELECT nextval('puhui_webhook_delivery_numbers'), x.e, x.t, x.s, x.k, 0, 0, $5, NULL, $5, \
                         NULL, NULL, NULL \
                         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY \
                         AS x(e, t, s, k, n) ORDER BY x.n"
                    ),
                    &[&endpoint_ids, &tenants, &seqs, &kinds, &i(now)],
                )
                .map_err(db)?;
            }
            tx.execute("UPDATE puhui_event_cursors SET next_seq = $2 WHERE name = $1", &[&CURSOR, &i(to)])
                .map_err(db)?;
            Ok(to)
        })
    }

    /// Pending deliveries due at `now` and not in `in_flight`, oldest due first, at most `room`, with
    /// their endpoints.
    pub(super) fn due(
        &self,
        now: u64,
        room: usize,
        in_flight: &[u64],
    ) -> Result<Vec<(u64, u64, Endpoint)>, HookError> {
        let busy: Vec<i64> = in_flight.iter().map(|n| i(*n)).collect();
        let room = i64::try_from(room).unwrap_or(i64::MAX);
        self.tx(|tx| {
            let rows = tx
                .query(
                    "SELECT d.number, d.event_seq, e.body FROM puhui_webhook_deliveries d \
                     JOIN puhui_webhook_endpoints e ON e.id = d.endpoint_id \
                     WHERE d.status = 0 AND d.next_attempt_at_ms <= $1 AND NOT (d.number = ANY($2)) \
                     ORDER BY d.next_attempt_at_ms, d.number LIMIT $3",
                    &[&i(now), &busy, &room],
                )
                .map_err(db)?;
            rows.iter().map(|r| Ok((u(r.get(0)), u(r.get(1)), endpoint(r.get(2))?))).collect()
        })
    }

    /// Records an attempt of delivery `number` with `apply`, and trims the endpoint's log of finished
    /// deliveries to [`DELIVERY_LOG_PER_ENDPOINT_MAX`]. A delivery deleted meanwhile (its endpoint
    /// was) is left alone.
    pub(super) fn finish(&self, number: u64, apply: impl FnOnce(&mut Delivery)) -> Result<(), HookError> {
        self.tx(|tx| {
            let sql = format!("SELECT {DELIVERY_COLUMNS} FROM puhui_webhook_deliveries WHERE number = $1 FOR UPDATE");
            let Some(row) = tx.query_opt(&sql, &[&i(number)]).map_err(db)? else { return Ok(()) };
            let mut d = delivery(&row);
            apply(&mut d);
            tx.execute(
                "UPDATE puhui_webhook_deliveries SET event_type = $2, status = $3, attempts = $4, \
                 first_attempt_at_ms = $5, next_attempt_at_ms = $6, last_attempt_at_ms = $7, \
                 last_status_code = $8, last_error = $9 WHERE number = $1",
                &[
                    &i(d.number),
                    &d.event_type,
                    &status_code(d.status),
                    &i32::try_from(d.attempts).unwrap_or(i32::MAX),
                    &d.first_attempt_at_ms.map(i),
                    &i(d.next_attempt_at_ms),
                    &d.last_attempt_at_ms.map(i),
                    &d.last_status_code.map(i32::from),
                    &d.last_error,
                ],
            )
            .map_err(db)?;
            if d.status != DeliveryStatus::Pending {
                let keep = i64::try_from(DELIVERY_LOG_PER_ENDPOINT_MAX).unwrap_or(i64::MAX) - 1;
                tx.execute(
                    "DELETE FROM puhui_webhook_deliveries WHERE endpoint_id = $1 AND status <> 0 AND number < \
                     (SELECT number FROM puhui_webhook_deliveries WHERE endpoint_id = $1 AND status <> 0 \
                      ORDER BY number DESC OFFSET $2 LIMIT 1)",
                    &[&d.endpoint_id, &keep],
                )
                .map_err(db)?;
            }
            Ok(())
        })
    }

    /// Adds an endpoint within the limits (counted under a lock, so two nodes cannot both pass).
    pub(super) fn add_endpoint(&self, e: &Endpoint) -> Result<(), HookError> {
        self.tx(|tx| {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema()), hashtext('puhui-webhook-endpoints'))",
                &[],
            )
            .map_err(db)?;
            let row = tx
                .query_one(
                    "SELECT count(*) FILTER (WHERE tenant = $1), count(*) FROM puhui_webhook_endpoints",
                    &[&e.tenant],
                )
                .map_err(db)?;
            let (ours, all): (i64, i64) = (row.get(0), row.get(1));
            check_endpoint_limits(u(ours) as usize, u(all) as usize)?;
            tx.execute(
                "INSERT INTO puhui_webhook_endpoints (id, tenant, created_at_ms, body) VALUES ($1, $2, $3, $4)",
                &[&e.id, &e.tenant, &i(e.created_at_ms), &endpoint_json(e)],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    /// The tenant's endpoints (only `id` if given), oldest first.
    pub(super) fn endpoints(&self, tenant: &str, id: Option<&str>) -> Result<Vec<Endpoint>, HookError> {
        self.tx(|tx| tenant_endpoints(tx, tenant, id))
    }

    /// Deletes one of the tenant's endpoints (and, by the foreign key, its deliveries).
    pub(super) fn remove_endpoint(&self, tenant: &str, id: &str) -> Result<(), HookError> {
        self.tx(|tx| {
            let n = tx
                .execute("DELETE FROM puhui_webhook_endpoints WHERE id = $1 AND tenant = $2", &[&id, &tenant])
                .map_err(db)?;
            if n == 0 {
                return Err(HookError::NotFound("webhook endpoint"));
            }
            Ok(())
        })
    }

    /// Changes one of the tenant's endpoints with `f` (under its row lock); returns it after.
    pub(super) fn update_endpoint(
        &self,
        tenant: &str,
        id: &str,
        f: impl FnOnce(&mut Endpoint),
    ) -> Result<Endpoint, HookError> {
        self.tx(|tx| {
            let row = tx
                .query_opt(
                    "SELECT body FROM puhui_webhook_endpoints WHERE id = $1 AND tenant = $2 FOR UPDATE",
                    &[&id, &tenant],
                )
                .map_err(db)?
                .ok_or(HookError::NotFound("webhook endpoint"))?;
            let mut e = endpoint(row.get(0))?;
            f(&mut e);
            tx.execute(
                "UPDATE puhui_webhook_endpoints SET body = $2 WHERE id = $1",
                &[&id, &endpoint_json(&e)],
            )
            .map_err(db)?;
            Ok(e)
        })
    }

    /// A page of an endpoint's deliveries with numbers below `before`, newest first, and whether
    /// more follow.
    pub(super) fn deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), HookError> {
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        self.tx(|tx| {
            let ours = tx
                .query_opt(
                    "SELECT 1 FROM puhui_webhook_endpoints WHERE id = $1 AND tenant = $2",
                    &[&endpoint_id, &tenant],
                )
                .map_err(db)?;
            if ours.is_none() {
                return Err(HookError::NotFound("webhook endpoint"));
            }
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM puhui_webhook_deliveries WHERE endpoint_id = $1 AND number < $2 \
                 ORDER BY number DESC LIMIT $3"
            );
            let mut page: Vec<Delivery> =
                tx.query(&sql, &[&endpoint_id, &i(before), &fetch]).map_err(db)?.iter().map(delivery).collect();
            let more = page.len() > limit;
            page.truncate(limit);
            Ok((page, more))
        })
    }

    /// New deliveries, due now, of the tenant's event `seq` to the endpoint named or to every endpoint
    /// of the tenant that takes `kind`.
    pub(super) fn redeliver(
        &self,
        tenant: &str,
        seq: u64,
        kind: EventType,
        named: Option<&str>,
        now: u64,
    ) -> Result<Vec<Delivery>, HookError> {
        self.tx(|tx| {
            let endpoints = tenant_endpoints(tx, tenant, None)?;
            let targets = redelivery_targets(&endpoints, tenant, named, kind)?;
            let pending: i64 = tx
                .query_one("SELECT count(*) FROM puhui_webhook_deliveries WHERE status = 0", &[])
                .map_err(db)?
                .get(0);
            pending_limit(u(pending) as usize, targets.len())?;
            let mut created = Vec::with_capacity(targets.len());
            for endpoint_id in targets {
                let row =
                    tx.query_one("SELECT nextval('puhui_webhook_delivery_numbers')", &[]).map_err(db)?;
                let d = new_delivery(u(row.get(0)), endpoint_id, tenant.to_string(), seq, kind.as_str(), now);
                tx.execute(
                    &format!(
                        "INSERT INTO puhui_webhook_deliveries ({DELIVERY_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, 0, 0, $6, NULL, $6, NULL, NULL, NULL)"
                    ),
                    &[&i(d.number), &d.endpoint_id, &d.tenant, &i(seq), &d.event_type, &i(now)],
                )
                .map_err(db)?;
                created.push(d);
            }
            Ok(created)
        })
    }
}
