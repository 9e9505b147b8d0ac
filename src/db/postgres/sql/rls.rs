//! Row-level security carried to the new table in the cutover transaction: each policy of
//! the live table created again on it under its name (command, permissive or restrictive,
//! roles, `USING`, `WITH CHECK`, as `pg_get_expr` prints them: by column name), and the
//! table's ENABLE / FORCE flags. The old table keeps its own untouched, which is all a
//! rollback needs (the new table is dropped with its policies). The triggers run as
//! turnout's role, which preflight requires to bypass row security, so no policy hides a
//! row from the copying.

use super::{Gen, quote};

/// One policy of the live table, as `pg_policy` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct Policy {
    pub(in crate::db::postgres) name: String,
    /// `polcmd`: `r` SELECT, `a` INSERT, `w` UPDATE, `d` DELETE, `*` ALL.
    pub(in crate::db::postgres) command: String,
    pub(in crate::db::postgres) permissive: bool,
    /// None: PUBLIC.
    pub(in crate::db::postgres) roles: Vec<Option<String>>,
    pub(in crate::db::postgres) using: Option<String>,
    pub(in crate::db::postgres) check: Option<String>,
}

/// The live table's row security: its flags and policies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(in crate::db::postgres) struct RowSecurity {
    pub(in crate::db::postgres) enabled: bool,
    pub(in crate::db::postgres) forced: bool,
    pub(in crate::db::postgres) policies: Vec<Policy>,
}

impl Policy {
    fn create(&self, table: &str) -> String {
        let command = match self.command.as_str() {
            "r" => "SELECT",
            "a" => "INSERT",
            "w" => "UPDATE",
            "d" => "DELETE",
            _ => "ALL",
        };
        let roles: Vec<String> = self
            .roles
            .iter()
            .map(|r| r.as_deref().map_or_else(|| "PUBLIC".to_string(), quote))
            .collect();
        let roles = if roles.is_empty() {
            "PUBLIC".to_string()
        } else {
            roles.join(", ")
        };
        format!(
            "CREATE POLICY {} ON {table} AS {} FOR {command} TO {roles}{}{}",
            quote(&self.name),
            if self.permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            self.using
                .as_deref()
                .map(|e| format!(" USING ({e})"))
                .unwrap_or_default(),
            self.check
                .as_deref()
                .map(|e| format!(" WITH CHECK ({e})"))
                .unwrap_or_default(),
        )
    }
}

impl<'a> Gen<'a> {
    /// After the renames: the new table (now `<table>`) gets the live table's row security.
    pub(in crate::db::postgres) fn carry_row_security(&self, rs: &RowSecurity) -> Vec<String> {
        let t = self.live();
        let mut out: Vec<String> = rs.policies.iter().map(|p| p.create(&t)).collect();
        if rs.enabled {
            out.push(format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"));
        }
        if rs.forced {
            out.push(format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn policies_and_flags_are_created_on_the_new_table() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let rs = RowSecurity {
            enabled: true,
            forced: true,
            policies: vec![
                Policy {
                    name: "own rows".into(),
                    command: "w".into(),
                    permissive: false,
                    roles: vec![Some("app".into()), None],
                    using: Some("(owner = CURRENT_USER)".into()),
                    check: Some("(amount > 0)".into()),
                },
                Policy {
                    name: "all".into(),
                    command: "*".into(),
                    permissive: true,
                    roles: vec![],
                    using: None,
                    check: None,
                },
            ],
        };
        assert_eq!(
            g.carry_row_security(&rs),
            [
                "CREATE POLICY \"own rows\" ON \"sales\".\"orders\" AS RESTRICTIVE FOR UPDATE TO \"app\", PUBLIC USING ((owner = CURRENT_USER)) WITH CHECK ((amount > 0))",
                "CREATE POLICY \"all\" ON \"sales\".\"orders\" AS PERMISSIVE FOR ALL TO PUBLIC",
                "ALTER TABLE \"sales\".\"orders\" ENABLE ROW LEVEL SECURITY",
                "ALTER TABLE \"sales\".\"orders\" FORCE ROW LEVEL SECURITY",
            ]
        );
    }
}
