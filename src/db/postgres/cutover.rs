//! Cutover, cleanup and rollback: each looks at the catalog first, so a step that crashed
//! is finished or found done; cutover and rollback take their locks, read the facts their
//! statements depend on (primary key names, identities, owned sequences) and run them in
//! one transaction with the state row. Also the rows recorded by `on_error: record`
//! triggers and the plan's throttle query.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::errors::{is_conflict, is_lock_timeout};
use super::sql::{CutoverFacts, Gen, Grant, KeyType, RollbackFacts, lock_wait, qualified, quote};
use super::state::save_in;
use super::{Postgres, run_all, sql};

/// How long each lock request of a rollback waits (see `roll_back`).
const ROLLBACK_LOCK_WAIT: Duration = Duration::from_millis(50);

/// Rollback attempts before giving up with a lock timeout, about half a minute in all.
const ROLLBACK_ATTEMPTS: u32 = 40;
use crate::db::{CutoverOutcome, StateRow};
use crate::error::{Error, Result};
use crate::schema::{Generated, Migration};

/// What one table's cutover reads under the share lock.
struct Held {
    pk_name: Option<String>,
    triggers: Vec<(String, String)>,
    furniture: super::carry::Before,
}

impl Postgres {
    /// Swaps every table of the plan in one transaction: all or none. Each table's
    /// statements run after the previous table's, so a foreign key between two tables of
    /// the plan is read where the earlier swap left it: a child's reference to its parent,
    /// re-pointed at the new parent by the parent's swap, is then carried to the new child.
    pub(super) async fn swap(
        &self,
        ms: &[Migration],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let gens: Vec<Gen<'_>> = ms.iter().map(|m| self.gen_for(m)).collect();
        let tables = table_list(ms);
        let ctx = |e| Error::db(format!("cutover of {tables}"), e);
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let mut swapped = Vec::new();
        for g in &gens {
            swapped.push(
                self.relation_exists(&mut tx, &g.old()).await?
                    && !self.relation_exists(&mut tx, &g.shadow()).await?,
            );
        }
        if swapped.iter().all(|s| *s) {
            // A previous attempt committed; only its state row is missing.
            save_in(&mut tx, &self.home, save).await?;
            tx.commit().await.map_err(ctx)?;
            return Ok(CutoverOutcome::Swapped);
        }
        if swapped.iter().any(|s| *s) {
            let done: Vec<&str> = ms
                .iter()
                .zip(&swapped)
                .filter(|(_, s)| **s)
                .map(|(m, _)| m.table.as_str())
                .collect();
            return Err(Error::State(format!(
                "only some tables of the plan are swapped ({}); turnout swaps them in one transaction, so the catalog was changed by hand. Inspect {tables}",
                done.join(", ")
            )));
        }
        drop(tx);
        // Fresh statistics before the new tables serve queries (outside the lock).
        for g in &gens {
            sqlx::raw_sql(sql(format!("ANALYZE {}", g.shadow())))
                .execute(&self.pool)
                .await
                .map_err(ctx)?;
        }
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let attempt: std::result::Result<(), sqlx::Error> = async {
            sqlx::raw_sql(sql(lock_wait(lock_timeout)))
                .execute(&mut *tx)
                .await?;
            // What a share lock freezes is read while the application still runs; then
            // every exclusive lock, then the facts that need it, each table's after the
            // previous table's statements.
            for g in &gens {
                sqlx::raw_sql(sql(g.hold_both())).execute(&mut *tx).await?;
            }
            let mut held = Vec::new();
            for g in &gens {
                let h = self.read_held(&mut tx, g).await?;
                self.rehearse_reads(&mut tx, g, &h).await?;
                held.push(h);
            }
            for g in &gens {
                sqlx::raw_sql(sql(g.lock_both())).execute(&mut *tx).await?;
            }
            for (g, h) in gens.iter().zip(held) {
                self.swap_one(&mut tx, g, h).await?;
            }
            Ok(())
        }
        .await;
        match attempt {
            Ok(()) => {}
            // A deadlock with an application transaction holding a child table: retried too.
            Err(e) if is_lock_timeout(&e) || is_conflict(&e) => {
                tx.rollback().await.map_err(ctx)?;
                return Ok(CutoverOutcome::LockTimeout);
            }
            Err(e) => return Err(ctx(e)),
        }
        crate::fault::point("cutover.inside");
        save_in(&mut tx, &self.home, save).await?;
        tx.commit().await.map_err(ctx)?;
        for g in &gens {
            self.validate_children(g).await?;
        }
        Ok(CutoverOutcome::Swapped)
    }

    /// What the cutover reads under its share lock ([`Gen::hold_both`]), before the
    /// exclusive one.
    async fn read_held(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> std::result::Result<Held, sqlx::Error> {
        let pk_name = primary_key_name(&mut *conn, &g.live()).await?;
        let triggers = sqlx::query(sql(format!(
            "SELECT tgname::text, pg_get_triggerdef(oid) FROM pg_trigger \
             WHERE tgrelid = to_regclass($1) AND NOT tgisinternal AND tgname::text NOT LIKE {} ORDER BY tgname",
            g.own_names_like()
        )))
        .bind(g.live())
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        Ok(Held {
            pk_name,
            triggers,
            furniture: super::carry::read_before(&mut *conn, g).await?,
        })
    }

    /// The reads the exclusive lock needs, done once while the application still runs
    /// and their answers dropped: under the lock each then runs an already prepared
    /// statement over warm catalog caches, which halves the lock's hold time on a plan
    /// of four tables.
    async fn rehearse_reads(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
        held: &Held,
    ) -> std::result::Result<(), sqlx::Error> {
        self.cutover_facts(&mut *conn, g, held.pk_name.clone(), held.triggers.clone())
            .await?;
        self.carried_names(&mut *conn, g, &g.live(), &|n| g.carried_new(n))
            .await?;
        super::carry::rehearse_views(&mut *conn, g).await?;
        self.unvalidated_checks(&mut *conn, g).await?;
        Ok(())
    }

    /// One table's swap, inside the cutover's transaction, its locks held.
    async fn swap_one(
        &self,
        tx: &mut PgConnection,
        g: &Gen<'_>,
        held: Held,
    ) -> std::result::Result<(), sqlx::Error> {
        let Held {
            pk_name,
            triggers,
            mut furniture,
        } = held;
        let facts = self.cutover_facts(&mut *tx, g, pk_name, triggers).await?;
        let carried = self
            .carried_names(&mut *tx, g, &g.live(), &|n| g.carried_new(n))
            .await?;
        super::carry::read_views(&mut *tx, g, &mut furniture).await?;
        super::carry::prepare(&mut *tx, g, &furniture).await?;
        let unvalidated = self.unvalidated_checks(&mut *tx, g).await?;
        let stmts = g.carry_unvalidated(&unvalidated);
        run_all(
            &mut *tx,
            &stmts.into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        )
        .await?;
        run_all(&mut *tx, &g.cutover(&facts)).await?;
        let to_itself: Vec<String> = facts
            .parents
            .iter()
            .filter(|(_, parent)| *parent == g.live())
            .map(|(fk, _)| fk.name.clone())
            .collect();
        run_all(&mut *tx, &g.self_references_cutover(&to_itself)).await?;
        run_all(&mut *tx, &g.carried_cutover(&carried)).await?;
        super::carry::carry(&mut *tx, g, &self.home, &furniture).await
    }

    pub(super) async fn clean_up(
        &self,
        m: &Migration,
        keep_old: bool,
        save: &StateRow,
    ) -> Result<()> {
        let g = self.gen_for(m);
        // A crash may have come between the cutover's commit and its validation.
        self.validate_children(&g).await?;
        // While the old table they read is still there.
        self.finish_matviews(&g).await?;
        self.ddl_txn(
            &format!("cleanup of {}", m.table),
            &[
                g.cleanup(keep_old),
                vec![super::sql::forget_undo(&self.home, m)],
            ]
            .concat(),
            save,
            Some("cleanup.inside"),
        )
        .await
    }

    /// Puts every table of the plan back in one transaction, the last swapped first, so
    /// each table's references are read where the later table's rollback left them.
    pub(super) async fn roll_back(&self, ms: &[Migration], save: &StateRow) -> Result<()> {
        let gens: Vec<Gen<'_>> = ms.iter().rev().map(|m| self.gen_for(m)).collect();
        let tables = table_list(ms);
        let ctx = |e| Error::db(format!("rollback of {tables}"), e);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.pool.begin().await.map_err(ctx)?;
            let mut swapped = Vec::new();
            for g in &gens {
                let old_exists = self.relation_exists(&mut tx, &g.old()).await?;
                let shadow_exists = self.relation_exists(&mut tx, &g.shadow()).await?;
                if old_exists && shadow_exists {
                    return Err(Error::State(format!(
                        "both {} and {} exist next to {}; turnout cannot tell which holds the original rows. Inspect them and drop the wrong one, then run rollback again",
                        g.m.old, g.m.shadow, g.m.table
                    )));
                }
                swapped.push(old_exists);
            }
            // Every table the rollback changes, locked in one statement before anything
            // else: an application transaction that writes a child and then its parent
            // cannot hold one of them while the rollback waits for it.
            let mut relations = Vec::new();
            for (g, swapped) in gens.iter().zip(&swapped) {
                relations.push(g.live());
                if *swapped {
                    relations.push(g.old());
                } else if self.relation_exists(&mut tx, &g.shadow()).await? {
                    relations.push(g.shadow());
                }
            }
            // Ok(Some(why)): the rollback would lose rows, and is refused.
            let result: std::result::Result<Option<String>, sqlx::Error> = async {
                // Each lock wait stays below the server's deadlock_timeout (1 s by default),
                // so a lock cycle with the application ends in this transaction's lock
                // timeout, retried, never in the deadlock detector aborting the
                // application's; and a write queued behind a request waits that long at most.
                sqlx::raw_sql(sql(lock_wait(ROLLBACK_LOCK_WAIT)))
                    .execute(&mut *tx)
                    .await?;
                sqlx::raw_sql(sql(format!(
                    "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                    relations.join(", ")
                )))
                .execute(&mut *tx)
                .await?;
                for (g, swapped) in gens.iter().zip(&swapped) {
                    if let Some(why) = self.roll_back_one(&mut tx, g, *swapped).await? {
                        return Ok(Some(why));
                    }
                }
                Ok(None)
            }
            .await;
            match result {
                Ok(None) => {}
                Ok(Some(why)) => {
                    tx.rollback().await.map_err(ctx)?;
                    return Err(Error::State(why));
                }
                Err(e)
                    if (is_lock_timeout(&e) || is_conflict(&e)) && attempt < ROLLBACK_ATTEMPTS =>
                {
                    drop(tx);
                    tracing::info!(attempt, "rollback: lock not granted, retrying");
                    let backoff = Duration::from_millis(100 * u64::from(attempt));
                    tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
                    continue;
                }
                Err(e) => return Err(ctx(e)),
            }
            crate::fault::point("rollback.inside");
            save_in(&mut tx, &self.home, save).await?;
            tx.commit().await.map_err(ctx)?;
            for g in &gens {
                self.validate_children(g).await?;
            }
            return Ok(());
        }
    }

    /// One table's rollback inside the rollback's transaction; `swapped`: the catalog
    /// shows its cutover (`<table>` is the new table), whose locks are held.
    async fn roll_back_one(
        &self,
        tx: &mut PgConnection,
        g: &Gen<'_>,
        swapped: bool,
    ) -> std::result::Result<Option<String>, sqlx::Error> {
        let stmts = if swapped {
            if let Some(why) = self.narrower_key_refusal(&mut *tx, g).await? {
                return Ok(Some(why));
            }
            let facts = self.rollback_facts(&mut *tx, g).await?;
            let carried = self
                .carried_names(&mut *tx, g, &g.live(), &|n| g.carried_old(n))
                .await?;
            let to_itself = self.self_references_back(&mut *tx, g).await?;
            // What cutover carried goes back first, while the new table exists.
            let mut stmts = super::carry::take_undo(&mut *tx, g, &self.home).await?;
            stmts.extend(g.rollback_swapped(&facts));
            stmts.extend(g.carried_rollback(&carried));
            stmts.extend(g.self_references_rollback(&to_itself));
            stmts
        } else {
            g.rollback_unprepared()
        };
        run_all(&mut *tx, &stmts).await.map(|()| None)
    }

    pub(super) async fn read_trigger_failures(&self, m: &Migration) -> Result<Vec<String>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db("reading turnout_failures", e))?;
        let table = qualified(&self.home, "turnout_failures");
        if !self.relation_exists(&mut conn, &table).await? {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(sql(format!(
            "SELECT direction || ': row with key ' || coalesce(key, '?') || ': ' || coalesce(error, '') \
             FROM {table} WHERE migration = $1 ORDER BY at"
        )))
        .bind(&m.name)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::db("reading turnout_failures", e))
    }

    pub(super) async fn read_throttle_value(&self, query: &str) -> Result<f64> {
        let row = sqlx::query(sql(query.to_string()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("running the throttle query", e))?;
        row.try_get::<f64, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v as f64))
            .or_else(|_| row.try_get::<i32, _>(0).map(f64::from))
            .or_else(|_| row.try_get::<f32, _>(0).map(f64::from))
            .or_else(|_| {
                row.try_get::<sqlx::types::Decimal, _>(0)
                    .map(|d| d.to_string().parse().unwrap_or(f64::NAN))
            })
            .map_err(|e| Error::db("reading the throttle query's value", e))
    }

    /// Under the exclusive lock: the sequences' values, the references (which an earlier
    /// table's swap in this transaction may have moved) and the grants (`GRANT` takes no
    /// lock on the table).
    async fn cutover_facts(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
        pk_name: Option<String>,
        triggers: Vec<(String, String)>,
    ) -> std::result::Result<CutoverFacts, sqlx::Error> {
        let seqs = sqlx::query(
            "SELECT sn.nspname::text, s.relname::text, a.attname::text, d.deptype::text, \
             coalesce(pg_sequence_last_value(s.oid), 0)::bigint, \
             (SELECT format_type(q.seqtypid, NULL) FROM pg_sequence q WHERE q.seqrelid = s.oid) \
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND d.refobjid = to_regclass($1) AND d.deptype IN ('a', 'i')",
        )
        .bind(g.live())
        .fetch_all(&mut *conn)
        .await?;
        // A copied column, or a widened key (its only cast).
        let new_of_old = |old: &str| {
            g.m.forward.iter().find_map(|mp| match &mp.source {
                crate::schema::Source::Column(c)
                    if c == old
                        && (mp.cast.is_none() || g.m.key.iter().any(|k| k.new == mp.target)) =>
                {
                    Some(mp.target.clone())
                }
                _ => None,
            })
        };
        let mut sequences = Vec::new();
        let mut retyped = Vec::new();
        let mut last_of_old: std::collections::HashMap<String, i64> = Default::default();
        for r in seqs {
            let (schema, seq, col, kind, last): (String, String, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let seq_type: Option<String> = r.get(5);
            if kind == "a" {
                if let Some(new) = new_of_old(&col) {
                    let grow =
                        g.m.after
                            .column(&new)
                            .and_then(|c| KeyType::parse(&c.sql_type));
                    let had = seq_type.as_deref().and_then(KeyType::parse);
                    if let (Some(KeyType::Int(to)), Some(KeyType::Int(from))) = (grow, had)
                        && to > from
                        && let Some(t) = KeyType::Int(to).int_name()
                    {
                        retyped.push((schema.clone(), seq.clone(), t.to_string()));
                    }
                    sequences.push((schema, seq, new));
                }
            } else {
                last_of_old.insert(col, last);
            }
        }
        let mut identities = Vec::new();
        for c in &g.m.after.columns {
            let Some(Generated::Identity { always }) = c.generated else {
                continue;
            };
            let old_col = g.m.forward.iter().find_map(|mp| match &mp.source {
                crate::schema::Source::Column(o) if mp.target == c.name => Some(o.clone()),
                _ => None,
            });
            let max: Option<i64> = sqlx::query_scalar(sql(format!(
                "SELECT max({})::bigint FROM {}",
                quote(&c.name),
                g.shadow()
            )))
            .fetch_one(&mut *conn)
            .await?;
            let last = old_col
                .and_then(|o| last_of_old.get(&o).copied())
                .unwrap_or(0);
            let start = max.unwrap_or(0).max(last).saturating_add(1);
            identities.push((c.name.clone(), always, start.to_string()));
        }
        let children =
            super::children::renamed_children(&mut *conn, &g.live(), &|c| g.new_name_of(c)).await?;
        let parents = super::children::carried_parents(&mut *conn, g).await?;
        let grants = table_grants(&mut *conn, g).await?;
        // The old table's that the shadow carries, by the names the cutover gives them.
        let carried = super::shape::deferrable_immediate(&mut *conn, &g.shadow()).await?;
        let deferrable_immediate = super::shape::deferrable_immediate(&mut *conn, &g.live())
            .await?
            .into_iter()
            .filter(|n| carried.contains(&g.carried_new(n)))
            .map(|n| g.carried_old(&n))
            .collect();
        Ok(CutoverFacts {
            pk_name,
            identities,
            sequences,
            retyped,
            children,
            parents,
            triggers,
            grants,
            deferrable_immediate,
        })
    }

    /// After a key widened: a row of the new table, or an id its sequence handed out,
    /// that the old key type cannot hold makes the rollback lose data, so it is refused.
    async fn narrower_key_refusal(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> std::result::Result<Option<String>, sqlx::Error> {
        let Some(query) = g.keys_beyond_old_type() else {
            return Ok(None);
        };
        let t = &g.m.table;
        let found: Option<String> = sqlx::query_scalar(sql(query))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(key) = found {
            return Ok(Some(format!(
                "rollback of {t}: the row with key {key} does not fit the old table's key type, so a rollback would lose it; finish the migration (cleanup) instead, or delete such rows first"
            )));
        }
        for k in g.m.key_type_changes() {
            let Some(max) =
                g.m.key
                    .iter()
                    .find(|c| c.new == k.column)
                    .and_then(|c| g.m.before.column(&c.old))
                    .and_then(|c| KeyType::parse(&c.sql_type))
                    .and_then(KeyType::int_max)
            else {
                continue;
            };
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT pg_sequence_last_value(pg_get_serial_sequence($1, $2)::regclass)",
            )
            .bind(g.live())
            .bind(&k.column)
            .fetch_one(&mut *conn)
            .await?;
            if let Some(last) = last.filter(|l| *l > max) {
                return Ok(Some(format!(
                    "rollback of {t}: the sequence of column {:?} has handed out id {last}, above what the old key type {} holds; finish the migration (cleanup) instead",
                    k.column, k.from
                )));
            }
        }
        Ok(None)
    }

    async fn rollback_facts(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> std::result::Result<RollbackFacts, sqlx::Error> {
        let pk_name = primary_key_name(&mut *conn, &g.live()).await?;
        let seq_query = "SELECT sn.nspname::text, s.relname::text, a.attname::text, s.oid::bigint, \
             (SELECT format_type(q.seqtypid, NULL) FROM pg_sequence q WHERE q.seqrelid = s.oid) \
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND d.refobjid = to_regclass($1) AND d.deptype = $2";
        let owned = sqlx::query(seq_query)
            .bind(g.live())
            .bind("a")
            .fetch_all(&mut *conn)
            .await?;
        let mut retyped = Vec::new();
        let sequences = owned
            .into_iter()
            .map(|r| {
                let new_col: String = r.get(2);
                let old_col = g.m.reverse.iter().find_map(|mp| match &mp.source {
                    crate::schema::Source::Column(c)
                        if *c == new_col
                            && (mp.cast.is_none()
                                || g.m.key.iter().any(|k| k.old == mp.target)) =>
                    {
                        Some(mp.target.clone())
                    }
                    _ => None,
                });
                let (schema, seq): (String, String) = (r.get(0), r.get(1));
                // The old key's type again (cutover widened the sequence with the key).
                let seq_type: Option<String> = r.get(4);
                let narrow = old_col
                    .as_ref()
                    .and_then(|c| g.m.before.column(c))
                    .and_then(|c| KeyType::parse(&c.sql_type));
                if let (Some(KeyType::Int(to)), Some(KeyType::Int(from))) =
                    (narrow, seq_type.as_deref().and_then(KeyType::parse))
                    && to < from
                    && let Some(t) = KeyType::Int(to).int_name()
                {
                    retyped.push((schema.clone(), seq.clone(), t.to_string()));
                }
                (schema, seq, old_col)
            })
            .collect();
        let identities = sqlx::query(seq_query)
            .bind(g.old())
            .bind("i")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| (r.get(3), r.get(2)))
            .collect();
        let children =
            super::children::renamed_children(&mut *conn, &g.live(), &|c| g.old_name_of(c)).await?;
        // Preflight refuses disabled user triggers: every disabled one is cutover's.
        let triggers = sqlx::query_scalar(sql(format!(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal \
             AND tgenabled = 'D' AND tgname::text NOT LIKE {} ORDER BY tgname",
            g.own_names_like()
        )))
        .bind(g.old())
        .fetch_all(&mut *conn)
        .await?;
        Ok(RollbackFacts {
            pk_name,
            sequences,
            identities,
            retyped,
            children,
            triggers,
        })
    }
}

/// The plan's tables as messages name them.
/// The name of `relation`'s primary key constraint, if it has one.
async fn primary_key_name(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'",
    )
    .bind(relation)
    .fetch_optional(conn)
    .await
}

fn table_list(ms: &[Migration]) -> String {
    ms.iter()
        .map(|m| m.table.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every privilege others hold on a relation and its columns (the owner's excepted).
pub(super) async fn grants_on(
    conn: &mut PgConnection,
    oid: i64,
) -> std::result::Result<Vec<Grant>, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
         a.privilege_type::text, NULL::text, a.is_grantable \
         FROM pg_class c, aclexplode(c.relacl) a \
         WHERE c.oid = $1::bigint::oid AND a.grantee <> c.relowner \
         UNION ALL \
         SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
         a.privilege_type::text, att.attname::text, a.is_grantable \
         FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 \
         AND NOT att.attisdropped, aclexplode(att.attacl) a \
         WHERE c.oid = $1::bigint::oid AND a.grantee <> c.relowner \
         ORDER BY 3 NULLS FIRST, 1 NULLS FIRST, 2",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| Grant {
        grantee: r.get(0),
        privilege: r.get(1),
        column: r.get(2),
        grantable: r.get(3),
    })
    .collect())
}

/// The privileges others hold on the live table and its columns, each column named as
/// in the new table; a column the plan drops takes its grants along.
async fn table_grants(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Vec<Grant>, sqlx::Error> {
    let oid: i64 = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
        .bind(g.live())
        .fetch_one(&mut *conn)
        .await?;
    let carried = |old: &str| {
        g.m.forward.iter().find_map(|mp| match &mp.source {
            crate::schema::Source::Column(c) if c == old => Some(mp.target.clone()),
            _ => None,
        })
    };
    Ok(grants_on(conn, oid)
        .await?
        .into_iter()
        .filter_map(|grant| match grant.column {
            None => Some(grant),
            Some(ref old) => {
                let column = Some(carried(old)?);
                Some(Grant { column, ..grant })
            }
        })
        .collect())
}
