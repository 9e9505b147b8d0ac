//! Prepare and dual-write: the shadow table is created, then the forward triggers are
//! installed, each step's DDL in one transaction with its state row (see `ddl_txn`).

use super::Postgres;
use crate::db::StateRow;
use crate::error::Result;
use crate::schema::Migration;

impl Postgres {
    pub(super) async fn create_shadow_table(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let g = self.gen_for(m);
        self.ddl_txn(
            &format!("prepare: creating {}", m.shadow),
            &g.create_shadow(),
            save,
            None,
        )
        .await
    }

    pub(super) async fn install_forward_triggers(
        &self,
        m: &Migration,
        save: &StateRow,
    ) -> Result<()> {
        let g = self.gen_for(m);
        self.ddl_txn(
            &format!("dual-write: creating the triggers on {}", m.table),
            &g.dual_write(&g.forward()),
            save,
            None,
        )
        .await
    }
}
