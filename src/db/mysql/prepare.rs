//! Prepare and dual-write: the shadow table, created in the new shape with the live
//! table's character set, collation, comment, CHECK constraints and foreign keys to
//! other tables (see `foreign_keys`), then the gate and the forward triggers, each
//! created only when the catalog does not show it yet.

use sqlx::mysql::MySqlConnection;

use crate::db::StateRow;
use crate::error::{Error, Result};
use crate::schema::Migration;

use super::MySql;
use super::errors::sql_err;
use super::sql::shadow::Extras;
use super::sql::{Bound, lit};

impl MySql {
    async fn table_options(
        &self,
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
    ) -> Result<String> {
        let r = Self::rows(conn, &Bound {
            sql: "SELECT CAST(t.TABLE_COLLATION AS CHAR), CAST(c.CHARACTER_SET_NAME AS CHAR), CAST(t.TABLE_COMMENT AS CHAR), CAST(t.TABLE_NAME AS CHAR) \
                  FROM information_schema.TABLES t JOIN information_schema.COLLATIONS c ON c.COLLATION_NAME = t.TABLE_COLLATION \
                  WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ?"
                .into(),
            binds: vec![schema.into(), table.into()],
        })
        .await
        .map_err(sql_err("reading table options"))?;
        let r = r
            .into_iter()
            .find(|r| r.get(3).cloned().flatten().as_deref() == Some(table));
        let mut s = "ENGINE=InnoDB".to_string();
        if let Some(r) = r {
            if let (Some(coll), Some(cs)) = (r[0].clone(), r[1].clone()) {
                s.push_str(&format!(" DEFAULT CHARSET={cs} COLLATE={coll}"));
            }
            if let Some(comment) = r[2].clone().filter(|c| !c.is_empty()) {
                s.push_str(&format!(" COMMENT={}", lit(&comment)));
            }
        }
        Ok(s)
    }

    pub(super) async fn create_shadow_table(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.sql(m);
        let schema =
            g.n.schema.clone().ok_or_else(|| {
                Error::Usage("no database: name one in the URL or the plan".into())
            })?;
        let mut conn = self.conn().await?;
        let opts = self.table_options(&mut conn, &schema, &m.table).await?;
        // A foreign key to another table of the plan is added at cutover, between the
        // shadows (cutover.rs); until then its index is all the shadow carries of it.
        let (plan_parents, foreign_keys) = self
            .outgoing_foreign_keys(&mut conn, &g)
            .await?
            .into_iter()
            .partition(|fk| fk.ref_table != m.table && m.together.contains(&fk.ref_table));
        let extras = Extras {
            foreign_keys,
            plan_parents,
            checks: self.carried_checks(&mut conn, m, &schema).await?,
        };
        self.exec(
            &mut conn,
            &g.create_shadow_with(&opts, &extras),
            "prepare: creating the shadow table",
        )
        .await?;
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("prepare: saving the state"))
    }

    pub(super) async fn install_forward_triggers(
        &self,
        m: &Migration,
        save: &StateRow,
    ) -> Result<()> {
        let g = self.sql(m);
        let mut conn = self.conn().await?;
        let cat = self.catalog(&mut conn, &g).await?;
        if cat.old || cat.gate.as_deref() == Some("r") {
            return Err(Error::State(format!(
                "{} already exists: this migration is past cutover",
                g.n.old
            )));
        }
        for sql in g.create_gates() {
            self.exec(&mut conn, &sql, "dual-write: creating the gate")
                .await?;
        }
        if self.mariadb {
            self.gate_own_triggers(&mut conn, &g).await?;
        }
        let children = self.plan_children(&mut conn, &g).await?;
        let missing: Vec<String> =
            g.n.forward
                .iter()
                .zip(g.forward_triggers_with(&children))
                .filter(|(name, _)| !cat.has_trigger(name))
                .map(|(_, sql)| sql)
                .collect();
        self.trigger_ddl(
            &mut conn,
            &g.n.q(&g.n.table),
            &missing,
            "dual-write: creating the triggers",
        )
        .await?;
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("dual-write: saving the state"))
    }
}
