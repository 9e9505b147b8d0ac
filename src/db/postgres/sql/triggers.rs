//! Dual-write: the plpgsql trigger functions that apply every write to the live table to
//! its counterpart, forward (live → shadow) before cutover and reverse (new → old) after,
//! and the `INSERT … SELECT … ON CONFLICT` they share with the backfill.

use super::{Gen, has_identity_always, list, literal, loose_cast, quote};
use crate::db::{copiers, render_source};
use crate::plan::OnError;
use crate::schema::Mapped;

/// One direction of dual-write: rows of `source` applied to `target` through `mapped`.
pub(in crate::db::postgres) struct Direction<'a> {
    label: &'static str,
    source: String,
    target: String,
    /// The mappings written: none into a generated column of the target (see `written`).
    mapped: Vec<Mapped>,
    source_key: Vec<&'a str>,
    target_key: Vec<&'a str>,
    source_columns: Vec<&'a str>,
    /// The target has `GENERATED ALWAYS` identity columns that must take our values.
    overriding: bool,
    /// The target's DEFERRABLE INITIALLY IMMEDIATE unique constraints (qualified): the
    /// source checks its own at the end of the application's statement, but the trigger
    /// writes row by row, each its own statement, so a statement that passes through a
    /// duplicate (`SET b = b + 1`) would fail on the target. Deferred to the commit for
    /// the rest of the transaction, where the target's rows equal the source's again.
    deferred: Vec<String>,
    /// The backfill barriers' keys, one per copier (forward only): a delete waits for the
    /// open slices, which may have copied the row without this delete seeing it (see
    /// `backfill.rs`).
    barriers: Vec<String>,
    func: String,
    trunc_func: String,
    trigger: String,
    trunc_trigger: String,
}

/// A plpgsql body delimiter that the body does not contain.
fn dollar_tag(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = if n == 0 {
            "$turnout$".to_string()
        } else {
            format!("$turnout{n}$")
        };
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

impl<'a> Gen<'a> {
    pub(in crate::db::postgres) fn forward(&self) -> Direction<'a> {
        Direction {
            label: "forward",
            source: self.live(),
            target: self.shadow(),
            mapped: self.forward_written(),
            source_key: self.old_key(),
            target_key: self.new_key(),
            source_columns: self.old_cols(),
            // The shadow has no identity while rows are copied (see the module doc of `postgres`).
            overriding: false,
            deferred: Vec::new(),
            // Each copier's slice holds its own barrier; a delete waits for every one.
            barriers: (0..copiers::MAX).map(|c| self.barrier_key(c)).collect(),
            func: self.rel(&self.n.func("fwd")),
            trunc_func: self.rel(&self.n.trunc_func("fwd")),
            trigger: self.n.func("fwd"),
            trunc_trigger: self.n.trunc_func("fwd"),
        }
    }

    /// After cutover: the new table (now named `<table>`) feeds `_<table>_old`.
    pub(super) fn reverse(&self) -> Direction<'a> {
        Direction {
            label: "reverse",
            source: self.live(),
            target: self.old(),
            mapped: self.reverse_written(),
            source_key: self.new_key(),
            target_key: self.old_key(),
            source_columns: self.new_cols(),
            overriding: has_identity_always(&self.m.before),
            deferred: Vec::new(),
            barriers: Vec::new(),
            func: self.rel(&self.n.func("rev")),
            trunc_func: self.rel(&self.n.trunc_func("rev")),
            trigger: self.n.func("rev"),
            trunc_trigger: self.n.trunc_func("rev"),
        }
    }

    /// `d` with the target's DEFERRABLE INITIALLY IMMEDIATE unique constraints, named as
    /// the target has them when the trigger is created (the shadow's temporary names
    /// before cutover, the old table's stepped-aside ones after: see `sql/shape.rs`), so
    /// each exists: `SET CONSTRAINTS` on a missing one would fail every write.
    pub(in crate::db::postgres) fn deferring(
        &self,
        mut d: Direction<'a>,
        names: &[String],
    ) -> Direction<'a> {
        d.deferred = names.iter().map(|n| self.rel(n)).collect();
        d
    }

    // --- dual-write ----------------------------------------------------------------------

    /// `INSERT INTO target … SELECT <mapped> FROM (<rows>) AS t ON CONFLICT (key) …`; the
    /// plan's expressions read the source row's columns unqualified, whatever `rows` is.
    /// `INSERT INTO target (…) SELECT <mapped> FROM (<rows>) AS t`, no conflict clause.
    pub(in crate::db::postgres) fn insert_select(
        &self,
        target: &str,
        mapped: &[Mapped],
        overriding: bool,
        rows: &str,
    ) -> String {
        let targets: Vec<&str> = mapped.iter().map(|mp| mp.target.as_str()).collect();
        let exprs = mapped
            .iter()
            .map(|mp| render_source(mp, &|c| quote(c), &loose_cast))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {target} ({}){} SELECT {exprs} FROM ({rows}) AS t",
            list(&targets),
            if overriding {
                " OVERRIDING SYSTEM VALUE"
            } else {
                ""
            },
        )
    }

    pub(in crate::db::postgres) fn upsert(
        &self,
        d: &Direction,
        rows: &str,
        update: bool,
    ) -> String {
        let targets: Vec<&str> = d.mapped.iter().map(|mp| mp.target.as_str()).collect();
        let sets: Vec<String> = targets
            .iter()
            .filter(|t| !d.target_key.contains(t))
            .map(|t| format!("{q} = EXCLUDED.{q}", q = quote(t)))
            .collect();
        let action = if update && !sets.is_empty() {
            format!("DO UPDATE SET {}", sets.join(", "))
        } else {
            "DO NOTHING".to_string()
        };
        format!(
            "{} ON CONFLICT ({}) {action}",
            self.insert_select(&d.target, &d.mapped, d.overriding, rows),
            list(&d.target_key)
        )
    }

    pub(in crate::db::postgres) fn dual_write(&self, d: &Direction) -> Vec<String> {
        let row = |rec: &str| {
            format!(
                "SELECT {}",
                d.source_columns
                    .iter()
                    .map(|c| format!("{rec}.{q} AS {q}", q = quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let matches = |rec: &str| {
            d.target_key
                .iter()
                .zip(&d.source_key)
                .map(|(t, s)| format!("{} = {rec}.{}", quote(t), quote(s)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let key_of = |rec: &str| {
            format!(
                "ROW({})",
                d.source_key
                    .iter()
                    .map(|k| format!("{rec}.{}", quote(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let shown_key = |rec: &str| {
            format!(
                "jsonb_build_array({})::text",
                d.source_key
                    .iter()
                    .map(|k| format!("{rec}.{}", quote(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let target = &d.target;
        let defer = if d.deferred.is_empty() {
            String::new()
        } else {
            format!("SET CONSTRAINTS {} DEFERRED;\n  ", d.deferred.join(", "))
        };
        let wait = if d.barriers.is_empty() {
            String::new()
        } else {
            let each: Vec<String> = d
                .barriers
                .iter()
                .map(|key| format!("pg_advisory_xact_lock_shared({key})"))
                .collect();
            format!("PERFORM {};\n    ", each.join(", "))
        };
        let apply = format!(
            "{defer}IF TG_OP = 'DELETE' THEN\n    {wait}DELETE FROM {target} WHERE {};\n    RETURN NULL;\n  END IF;\n  \
             IF TG_OP = 'UPDATE' AND {} IS DISTINCT FROM {} THEN\n    {wait}DELETE FROM {target} WHERE {};\n  END IF;\n  \
             {};\n  RETURN NULL;",
            matches("OLD"),
            key_of("OLD"),
            key_of("NEW"),
            matches("OLD"),
            self.upsert(d, &row("NEW"), true),
        );
        let body = match self.m.on_error {
            // The error propagates: the application's statement fails and nothing diverges.
            OnError::Reject => format!("BEGIN\n  {apply}\nEND"),
            // The application's write stands; the target loses the row for that key, so
            // verify flags it, and the failure is recorded for status and verify.
            OnError::Record => format!(
                "BEGIN\n  BEGIN\n  {apply}\n  EXCEPTION WHEN OTHERS THEN\n    \
                 IF TG_OP <> 'INSERT' THEN\n      DELETE FROM {target} WHERE {};\n    END IF;\n    \
                 IF TG_OP <> 'DELETE' THEN\n      DELETE FROM {target} WHERE {};\n      \
                 INSERT INTO {} (migration, direction, key, error) VALUES ({}, '{}', {}, SQLERRM);\n    ELSE\n      \
                 INSERT INTO {} (migration, direction, key, error) VALUES ({}, '{}', {}, SQLERRM);\n    END IF;\n    \
                 RETURN NULL;\n  END;\nEND",
                matches("OLD"),
                matches("NEW"),
                self.failures(),
                literal(&self.m.name),
                d.label,
                shown_key("NEW"),
                self.failures(),
                literal(&self.m.name),
                d.label,
                shown_key("OLD"),
            ),
        };
        // Column names win over plpgsql variables (a column may be called `found`).
        let body = format!("#variable_conflict use_column\n{body}");
        let tag = dollar_tag(&body);
        // SECURITY DEFINER: the application's role may not be allowed to write the shadow.
        // `search_path FROM CURRENT`: expressions resolve as they did for backfill.
        let header =
            "RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT";
        vec![
            format!(
                "CREATE OR REPLACE FUNCTION {}() {header} AS {tag}\n{body}\n{tag}",
                d.func
            ),
            format!(
                "CREATE OR REPLACE FUNCTION {}() {header} AS $turnout$\nBEGIN\n  TRUNCATE {target};\n  RETURN NULL;\nEND\n$turnout$",
                d.trunc_func
            ),
            format!(
                "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()",
                quote(&d.trigger),
                d.source,
                d.func
            ),
            format!(
                "CREATE OR REPLACE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()",
                quote(&d.trunc_trigger),
                d.source,
                d.trunc_func
            ),
        ]
    }

    /// Dropping the functions drops their triggers, on whichever table they now sit.
    pub(super) fn drop_dual_write(&self, d: &Direction) -> Vec<String> {
        vec![
            format!("DROP FUNCTION IF EXISTS {}() CASCADE", d.func),
            format!("DROP FUNCTION IF EXISTS {}() CASCADE", d.trunc_func),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn record_mode_triggers_catch_and_record() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let f = g.dual_write(&g.forward());
        assert!(f[0].contains("EXCEPTION WHEN OTHERS"));
        assert!(f[0].contains("\"public\".\"turnout_failures\""));
        assert!(f[0].contains("'forward'"));
        let mut reject = m.clone();
        reject.on_error = OnError::Reject;
        let g = Gen::new(&reject, "public");
        assert!(!g.dual_write(&g.forward())[0].contains("EXCEPTION"));
    }

    /// Before cutover a delete or key change waits for the backfill's open slice; after
    /// it there is no backfill to wait for.
    #[test]
    fn only_the_forward_trigger_waits_for_the_backfill_barrier() {
        let m = migration();
        let g = Gen::new(&m, "public");
        for copier in 0..copiers::MAX {
            let wait = format!("pg_advisory_xact_lock_shared({})", g.barrier_key(copier));
            assert_eq!(g.dual_write(&g.forward())[0].matches(&wait).count(), 2);
        }
        assert!(!g.dual_write(&g.reverse())[0].contains("pg_advisory"));
    }

    #[test]
    fn deferrable_immediate_constraints_are_deferred_on_the_target_by_their_current_names() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let (new, old) = (
            g.carried_new("orders_rank_key"),
            g.carried_old("orders_rank_key"),
        );
        let fwd = g.dual_write(&g.deferring(g.forward(), std::slice::from_ref(&new)));
        let rev = g.dual_write(&g.deferring(g.reverse(), std::slice::from_ref(&old)));
        let set = |n: &str| format!("SET CONSTRAINTS \"sales\".\"{n}\" DEFERRED;");
        assert!(fwd[0].contains(&set(&new)), "{}", fwd[0]);
        assert!(rev[0].contains(&set(&old)), "{}", rev[0]);
        assert!(!g.dual_write(&g.forward())[0].contains("SET CONSTRAINTS"));
    }

    /// The forward trigger of `on_error: record`, reviewed as a whole: a change to the
    /// trigger SQL shows up here.
    #[test]
    fn forward_trigger_function_snapshot() {
        let m = migration();
        let g = Gen::new(&m, "public");
        insta::assert_snapshot!(g.dual_write(&g.forward())[0], @r#"
        CREATE OR REPLACE FUNCTION "sales"."turnout_orders_amount_35db6da0_fwd"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $turnout$
        #variable_conflict use_column
        BEGIN
          BEGIN
          IF TG_OP = 'DELETE' THEN
            PERFORM pg_advisory_xact_lock_shared(1953854062, hashtext(E'turnout backfill "sales"."_orders_new"')), pg_advisory_xact_lock_shared(1953854062, hashtext(E'turnout backfill "sales"."_orders_new" 1'));
            DELETE FROM "sales"."_orders_new" WHERE "id" = OLD."id";
            RETURN NULL;
          END IF;
          IF TG_OP = 'UPDATE' AND ROW(OLD."id") IS DISTINCT FROM ROW(NEW."id") THEN
            PERFORM pg_advisory_xact_lock_shared(1953854062, hashtext(E'turnout backfill "sales"."_orders_new"')), pg_advisory_xact_lock_shared(1953854062, hashtext(E'turnout backfill "sales"."_orders_new" 1'));
            DELETE FROM "sales"."_orders_new" WHERE "id" = OLD."id";
          END IF;
          INSERT INTO "sales"."_orders_new" ("id", "comment", "amount") SELECT "id", "note", CAST((amount_cents / 100.0) AS numeric) FROM (SELECT NEW."id" AS "id", NEW."amount_cents" AS "amount_cents", NEW."note" AS "note") AS t ON CONFLICT ("id") DO UPDATE SET "comment" = EXCLUDED."comment", "amount" = EXCLUDED."amount";
          RETURN NULL;
          EXCEPTION WHEN OTHERS THEN
            IF TG_OP <> 'INSERT' THEN
              DELETE FROM "sales"."_orders_new" WHERE "id" = OLD."id";
            END IF;
            IF TG_OP <> 'DELETE' THEN
              DELETE FROM "sales"."_orders_new" WHERE "id" = NEW."id";
              INSERT INTO "public"."turnout_failures" (migration, direction, key, error) VALUES (E'orders-amount', 'forward', jsonb_build_array(NEW."id")::text, SQLERRM);
            ELSE
              INSERT INTO "public"."turnout_failures" (migration, direction, key, error) VALUES (E'orders-amount', 'forward', jsonb_build_array(OLD."id")::text, SQLERRM);
            END IF;
            RETURN NULL;
          END;
        END
        $turnout$
        "#);
    }
}
