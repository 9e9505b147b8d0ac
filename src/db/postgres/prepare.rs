//! Prepare and dual-write: the shadow table is created with the constraints and indexes
//! `shape.rs` reads, then the forward triggers are installed, each step's DDL in one
//! transaction with its state row (see `ddl_txn`).

use super::Postgres;
use crate::db::StateRow;
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Postgres {
    pub(super) async fn create_shadow_table(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.gen_for(m);
        let context = format!("prepare: creating {}", m.shadow);
        // Read from the live table, which is still the original (see `shape.rs`).
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db(context.clone(), e))?;
        let furniture = self
            .furniture(&mut conn, &g)
            .await
            .map_err(|e| Error::db(context.clone(), e))?;
        drop(conn);
        let mut stmts = g.create_shadow();
        stmts.extend(g.carry(&furniture).into_iter().map(|(_, s)| s));
        self.ddl_txn(&context, &stmts, save, None).await
    }

    pub(super) async fn install_forward_triggers(
        &self,
        m: &Migration,
        save: &StateRow,
    ) -> Result<()> {
        let g = self.gen_for(m);
        let context = format!("dual-write: creating the triggers on {}", m.table);
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db(context.clone(), e))?;
        let deferred = super::shape::deferrable_immediate(&mut conn, &g.shadow())
            .await
            .map_err(|e| Error::db(context.clone(), e))?;
        drop(conn);
        self.ddl_txn(
            &context,
            &g.dual_write(&g.deferring(g.forward(), &deferred)),
            save,
            None,
        )
        .await
    }
}
