//! What the new table carries beyond `TableShape`: column collations, UNIQUE, CHECK and
//! EXCLUDE constraints and every index `Index` cannot describe (expression, partial, descending / NULLS FIRST, operator
//! class, collation, INCLUDE, storage parameters, GIN / GiST / BRIN / hash / SP-GiST).
//!
//! They are added to the shadow in the prepare transaction, while it is empty (instant,
//! and every row the backfill and the triggers write is checked from the first). Their
//! definitions come from the live table's catalog, so they name the old columns: around
//! them the shadow's renamed columns take their old names for the length of the
//! transaction (PostgreSQL stores expressions as trees over column numbers, so renaming
//! them back afterwards makes every definition follow the rename, exactly as an
//! `ALTER TABLE … RENAME COLUMN` would on the live table).
//!
//! Names: a CHECK constraint's name is per table, so the shadow's takes the original at
//! once. Index names (an EXCLUDE or DEFERRABLE UNIQUE constraint's included) are schema-wide: the shadow's carry
//! `<base>_x<hash of the name>` until cutover, when the old table's step aside to
//! `<base>_y<hash>` and the new ones take the original names; rollback reverses it. The
//! hash of the original name makes both temporary names computable from the original
//! alone, whichever table holds it.

use super::{ChildFk, Gen, literal, quote, short_hash};

/// One index, in the catalog's parts (see `shape.rs` for where each comes from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct IndexParts {
    pub(in crate::db::postgres) name: String,
    pub(in crate::db::postgres) unique: bool,
    pub(in crate::db::postgres) nulls_not_distinct: bool,
    /// `pg_am.amname`: btree, gin, gist, brin, hash, spgist.
    pub(in crate::db::postgres) method: String,
    pub(in crate::db::postgres) keys: Vec<KeyPart>,
    /// INCLUDE columns, as `pg_get_indexdef(index, n, true)` writes them.
    pub(in crate::db::postgres) include: Vec<String>,
    /// Storage parameters as `pg_class.reloptions` holds them (`fillfactor=70`).
    pub(in crate::db::postgres) options: Vec<String>,
    /// `pg_get_expr(indpred, indrelid, true)`.
    pub(in crate::db::postgres) predicate: Option<String>,
}

/// One key column or expression of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct KeyPart {
    /// The column (quoted) or the expression, as `pg_get_indexdef(index, n, true)` writes it.
    pub(in crate::db::postgres) expr: String,
    /// An expression needs its own parentheses in CREATE INDEX; a column does not.
    pub(in crate::db::postgres) is_expression: bool,
    /// Qualified and quoted, when set on the key.
    pub(in crate::db::postgres) collation: Option<String>,
    /// Qualified and quoted, when not the type's default.
    pub(in crate::db::postgres) opclass: Option<String>,
    pub(in crate::db::postgres) desc: bool,
    pub(in crate::db::postgres) nulls_first: bool,
}

impl KeyPart {
    fn sql(&self) -> String {
        let mut s = if self.is_expression {
            format!("({})", self.expr)
        } else {
            self.expr.clone()
        };
        if let Some(c) = &self.collation {
            s.push_str(&format!(" COLLATE {c}"));
        }
        if let Some(o) = &self.opclass {
            s.push_str(&format!(" {o}"));
        }
        match (self.desc, self.nulls_first) {
            (true, false) => s.push_str(" DESC NULLS LAST"),
            (true, true) => s.push_str(" DESC"),
            (false, true) => s.push_str(" NULLS FIRST"),
            (false, false) => {}
        }
        s
    }
}

/// Everything of this kind the live table carries, read once at prepare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::db::postgres) struct Furniture {
    /// CHECK constraints: (name, `pg_get_constraintdef`).
    pub(in crate::db::postgres) checks: Vec<(String, String)>,
    /// NOT VALID CHECK constraints, added NOT VALID at cutover (`carry_unvalidated`):
    /// the backfill copies rows that may break them.
    pub(in crate::db::postgres) unvalidated_checks: Vec<(String, String)>,
    /// EXCLUDE constraints: (name, `pg_get_constraintdef`).
    pub(in crate::db::postgres) excludes: Vec<(String, String)>,
    /// DEFERRABLE UNIQUE constraints: (name, `pg_get_constraintdef`, which keeps the
    /// deferral). Never an `ON CONFLICT` arbiter: the triggers and the backfill name the
    /// primary key, which preflight requires NOT DEFERRABLE.
    pub(in crate::db::postgres) deferrable_uniques: Vec<(String, String)>,
    pub(in crate::db::postgres) indexes: Vec<IndexParts>,
    /// Renamed columns: (old name, new name), taken back for the length of the build.
    pub(in crate::db::postgres) renamed: Vec<(String, String)>,
    /// Columns of a collation other than their type's: (new column, qualified collation).
    pub(in crate::db::postgres) collations: Vec<(String, String)>,
    /// The plain unique indexes (`TableShape`'s) that are a UNIQUE constraint on the live
    /// table: the shadow's index becomes one too (`ADD CONSTRAINT … USING INDEX`).
    pub(in crate::db::postgres) unique_constraints: Vec<String>,
}

impl<'a> Gen<'a> {
    /// The shadow's temporary name for a carried index (or EXCLUDE constraint).
    pub(in crate::db::postgres) fn carried_new(&self, name: &str) -> String {
        format!("{}_x{}", self.n.base, short_hash(name))
    }

    /// The old table's name for a carried index once the new table holds the original.
    pub(in crate::db::postgres) fn carried_old(&self, name: &str) -> String {
        format!("{}_y{}", self.n.base, short_hash(name))
    }

    /// The statements that add the furniture to the (empty) shadow, each with what it
    /// builds (for preflight's messages); they run right after `create_shadow`.
    pub(in crate::db::postgres) fn carry(&self, f: &Furniture) -> Vec<(String, String)> {
        if f.checks.is_empty()
            && f.excludes.is_empty()
            && f.deferrable_uniques.is_empty()
            && f.indexes.is_empty()
            && f.collations.is_empty()
            && f.unique_constraints.is_empty()
        {
            return Vec::new();
        }
        let shadow = self.shadow();
        let rename = |from: &str, to: &str| {
            format!(
                "ALTER TABLE {shadow} RENAME COLUMN {} TO {}",
                quote(from),
                quote(to)
            )
        };
        // Through temporary names, so a swap of two names (or a new column that took an
        // old one's name) never collides.
        let new_names: Vec<&str> = self.new_cols();
        let mut moves: Vec<(String, String, String)> = Vec::new();
        for (i, (old, new)) in f.renamed.iter().enumerate() {
            moves.push((new.clone(), format!("turnout_r{i}"), old.clone()));
        }
        for (j, c) in new_names.iter().enumerate() {
            let in_the_way = f.renamed.iter().any(|(old, _)| old == c)
                && !f.renamed.iter().any(|(_, new)| new == c);
            if in_the_way {
                moves.push((
                    c.to_string(),
                    format!("turnout_s{j}"),
                    format!("turnout_s{j}"),
                ));
            }
        }
        let mut out = Vec::new();
        let step = |what: &str, stmt: String| (what.to_string(), stmt);
        // First, so the indexes and constraints below are built over the collated column.
        for (col, collation) in &f.collations {
            let Some(c) = self.m.after.column(col) else {
                continue;
            };
            out.push(step(
                &format!("the collation {collation} of column {col:?}"),
                format!(
                    "ALTER TABLE {shadow} ALTER COLUMN {} TYPE {} COLLATE {collation}",
                    quote(col),
                    c.sql_type
                ),
            ));
        }
        for (cur, tmp, _) in &moves {
            out.push(step("the renamed columns", rename(cur, tmp)));
        }
        for (_, tmp, during) in &moves {
            if tmp != during {
                out.push(step("the renamed columns", rename(tmp, during)));
            }
        }
        // The constraint takes the index's (temporary) name; the cutover's rename of the
        // index renames the constraint with it.
        for (i, idx) in self.m.after.indexes.iter().enumerate() {
            if idx.unique && f.unique_constraints.contains(&idx.name) {
                let tmp = quote(&self.n.new_index(i));
                out.push(step(
                    &format!("unique constraint {:?}", idx.name),
                    format!("ALTER TABLE {shadow} ADD CONSTRAINT {tmp} UNIQUE USING INDEX {tmp}"),
                ));
            }
        }
        for (name, def) in &f.checks {
            out.push(step(
                &format!("check constraint {name:?}"),
                format!("ALTER TABLE {shadow} ADD CONSTRAINT {} {def}", quote(name)),
            ));
        }
        for (name, def) in &f.deferrable_uniques {
            out.push(step(
                &format!("unique constraint {name:?}"),
                format!(
                    "ALTER TABLE {shadow} ADD CONSTRAINT {} {def}",
                    quote(&self.carried_new(name))
                ),
            ));
        }
        for (name, def) in &f.excludes {
            out.push(step(
                &format!("exclusion constraint {name:?}"),
                format!(
                    "ALTER TABLE {shadow} ADD CONSTRAINT {} {def}",
                    quote(&self.carried_new(name))
                ),
            ));
        }
        for idx in &f.indexes {
            out.push(step(
                &format!("index {:?}", idx.name),
                self.create_carried_index(idx),
            ));
        }
        for (_, tmp, during) in &moves {
            if tmp != during {
                out.push(step("the renamed columns", rename(during, tmp)));
            }
        }
        for (cur, tmp, _) in &moves {
            out.push(step("the renamed columns", rename(tmp, cur)));
        }
        out
    }

    /// Cutover, before the renames: the NOT VALID CHECK constraints go onto the full
    /// shadow NOT VALID, as the user left them (checked for every later write, no scan).
    pub(in crate::db::postgres) fn carry_unvalidated(
        &self,
        f: &Furniture,
    ) -> Vec<(String, String)> {
        self.carry(&Furniture {
            checks: f.unvalidated_checks.clone(),
            renamed: f.renamed.clone(),
            ..Furniture::default()
        })
    }

    fn create_carried_index(&self, idx: &IndexParts) -> String {
        let mut s = format!(
            "CREATE {}INDEX {} ON {} USING {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote(&self.carried_new(&idx.name)),
            self.shadow(),
            quote(&idx.method),
            idx.keys
                .iter()
                .map(KeyPart::sql)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !idx.include.is_empty() {
            s.push_str(&format!(" INCLUDE ({})", idx.include.join(", ")));
        }
        if idx.nulls_not_distinct {
            s.push_str(" NULLS NOT DISTINCT");
        }
        if !idx.options.is_empty() {
            let opts: Vec<String> = idx
                .options
                .iter()
                .map(|o| match o.split_once('=') {
                    Some((k, v)) => format!("{} = {}", quote(k), literal(v)),
                    None => quote(o),
                })
                .collect();
            s.push_str(&format!(" WITH ({})", opts.join(", ")));
        }
        if let Some(p) = &idx.predicate {
            s.push_str(&format!(" WHERE {p}"));
        }
        s
    }

    /// Cutover: the old table's carried indexes step aside, the new ones take the names.
    /// `names`: the original names whose temporary index the shadow holds.
    pub(in crate::db::postgres) fn carried_cutover(&self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for name in names {
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                self.rel(name),
                quote(&self.carried_old(name))
            ));
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                self.rel(&self.carried_new(name)),
                quote(name)
            ));
        }
        out
    }

    /// Cutover: the old table's references to itself go (the new table's take over, see
    /// `children.rs`): from now on it only mirrors the new table's rows, whose cascades
    /// the new table's own references already made.
    pub(in crate::db::postgres) fn self_references_cutover(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .map(|n| format!("ALTER TABLE {} DROP CONSTRAINT {}", self.old(), quote(n)))
            .collect()
    }

    /// Rollback after cutover, once the old table has its name back: its references to
    /// itself return, `NOT VALID` (validated after the commit), naming its own columns.
    pub(in crate::db::postgres) fn self_references_rollback(&self, fks: &[ChildFk]) -> Vec<String> {
        fks.iter().map(|fk| fk.add(&self.live())).collect()
    }

    /// Rollback after cutover, once the new table is dropped: the old table's carried
    /// indexes take their names back. `names`: those whose stepped-aside index exists.
    pub(in crate::db::postgres) fn carried_rollback(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .map(|name| {
                format!(
                    "ALTER INDEX {} RENAME TO {}",
                    self.rel(&self.carried_old(name)),
                    quote(name)
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    fn key(expr: &str, is_expression: bool) -> KeyPart {
        KeyPart {
            expr: expr.into(),
            is_expression,
            collation: None,
            opclass: None,
            desc: false,
            nulls_first: false,
        }
    }

    #[test]
    fn carried_index_is_composed_from_its_parts() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let mut lower = key("lower(note)", true);
        lower.collation = Some("\"pg_catalog\".\"C\"".into());
        lower.opclass = Some("\"pg_catalog\".\"text_pattern_ops\"".into());
        let mut amount = key("\"amount_cents\"", false);
        amount.desc = true;
        amount.nulls_first = false;
        let idx = IndexParts {
            name: "orders_odd".into(),
            unique: true,
            nulls_not_distinct: false,
            method: "btree".into(),
            keys: vec![lower, amount],
            include: vec!["\"id\"".into()],
            options: vec!["fillfactor=70".into()],
            predicate: Some("amount_cents > 0".into()),
        };
        let f = Furniture {
            indexes: vec![idx],
            renamed: vec![("note".into(), "comment".into())],
            ..Furniture::default()
        };
        let stmts: Vec<String> = g.carry(&f).into_iter().map(|(_, s)| s).collect();
        let tmp = g.carried_new("orders_odd");
        insta::assert_snapshot!(stmts.join(";\n").replace(&tmp, "<tmp>"), @r#"
        ALTER TABLE "sales"."_orders_new" RENAME COLUMN "comment" TO "turnout_r0";
        ALTER TABLE "sales"."_orders_new" RENAME COLUMN "turnout_r0" TO "note";
        CREATE UNIQUE INDEX "<tmp>" ON "sales"."_orders_new" USING "btree" ((lower(note)) COLLATE "pg_catalog"."C" "pg_catalog"."text_pattern_ops", "amount_cents" DESC NULLS LAST) INCLUDE ("id") WITH ("fillfactor" = E'70') WHERE amount_cents > 0;
        ALTER TABLE "sales"."_orders_new" RENAME COLUMN "note" TO "turnout_r0";
        ALTER TABLE "sales"."_orders_new" RENAME COLUMN "turnout_r0" TO "comment"
        "#);
    }

    #[test]
    fn swapped_names_and_a_name_taken_by_a_new_column_never_collide() {
        let m = migration();
        let g = Gen::new(&m, "public");
        // `comment` was `note`, and the new `amount` took the name of an old column.
        let f = Furniture {
            checks: vec![("c".into(), "CHECK (amount > note)".into())],
            renamed: vec![
                ("note".into(), "comment".into()),
                ("amount".into(), "id".into()),
            ],
            ..Furniture::default()
        };
        let stmts: Vec<String> = g.carry(&f).into_iter().map(|(_, s)| s).collect();
        let renames: Vec<&String> = stmts.iter().filter(|s| s.contains("RENAME")).collect();
        // Every column ends where it started.
        assert_eq!(renames.len(), 10, "{stmts:#?}");
        assert!(
            stmts.contains(
                &"ALTER TABLE \"sales\".\"_orders_new\" RENAME COLUMN \"amount\" TO \"turnout_s2\""
                    .to_string()
            )
        );
        assert!(
            stmts.contains(
                &"ALTER TABLE \"sales\".\"_orders_new\" RENAME COLUMN \"turnout_s2\" TO \"amount\""
                    .to_string()
            )
        );
    }

    #[test]
    fn carried_names_are_computed_from_the_original_and_differ() {
        let m = migration();
        let g = Gen::new(&m, "public");
        assert_ne!(g.carried_new("a"), g.carried_old("a"));
        assert_ne!(g.carried_new("a"), g.carried_new("b"));
        assert!(g.carried_old("a").len() < 63);
        let c = g.carried_cutover(&["a".into()]);
        assert_eq!(
            c[1],
            format!(
                "ALTER INDEX \"sales\".\"{}\" RENAME TO \"a\"",
                g.carried_new("a")
            )
        );
    }
}
