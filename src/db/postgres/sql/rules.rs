//! The table's own rules (`CREATE RULE … ON … TO <table>`), moved to the new table in the
//! cutover transaction after the renames: dropped from the old table, so the reverse
//! triggers' writes to it are not rewritten a second time (a `DO ALSO` rule would act
//! twice, a `DO INSTEAD` one would swallow the copy), and created on the new one from the
//! definition read before the renames, which names the table `<table>`, now the new one.
//! The definition read after the renames names the old table: with a `DROP RULE` on the
//! new one it is the undo a rollback runs. During the copy the shadow has none: the live
//! table's rules rewrite the application's writes before the triggers see them.

use super::{Gen, quote};

/// One rule of the table, with the definition `pg_get_ruledef` gave before the renames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct Rule {
    pub(in crate::db::postgres) oid: i64,
    pub(in crate::db::postgres) name: String,
    pub(in crate::db::postgres) definition: String,
}

impl<'a> Gen<'a> {
    /// After the renames: the rules move to the new table; `back[i]` is `rules[i]` as the
    /// old table's (read after the renames), for the undo.
    pub(in crate::db::postgres) fn carry_rules(
        &self,
        rules: &[Rule],
        back: &[String],
    ) -> (Vec<String>, Vec<String>) {
        let (mut carry, mut undo) = (Vec::new(), Vec::new());
        for (r, b) in rules.iter().zip(back) {
            carry.push(format!("DROP RULE {} ON {}", quote(&r.name), self.old()));
            carry.push(r.definition.clone());
            undo.push(format!("DROP RULE {} ON {}", quote(&r.name), self.live()));
            undo.push(b.clone());
        }
        (carry, undo)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn rules_move_to_the_new_table_and_back() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let r = Rule {
            oid: 1,
            name: "orders_keep".into(),
            definition: "CREATE RULE orders_keep AS ON DELETE TO sales.orders DO INSTEAD NOTHING;"
                .into(),
        };
        let back = [
            "CREATE RULE orders_keep AS ON DELETE TO sales._orders_old DO INSTEAD NOTHING;"
                .to_string(),
        ];
        let (carry, undo) = g.carry_rules(&[r], &back);
        insta::assert_snapshot!(carry.join("\n"), @r#"
        DROP RULE "orders_keep" ON "sales"."_orders_old"
        CREATE RULE orders_keep AS ON DELETE TO sales.orders DO INSTEAD NOTHING;
        "#);
        insta::assert_snapshot!(undo.join("\n"), @r#"
        DROP RULE "orders_keep" ON "sales"."orders"
        CREATE RULE orders_keep AS ON DELETE TO sales._orders_old DO INSTEAD NOTHING;
        "#);
    }
}
