//! Prepare (the shadow table) and the start of dual-write (the forward triggers), each
//! in one write transaction with its checkpoint.

use super::sql::shadow::create_shadow;
use super::sql::triggers::triggers;
use super::sql::{forward, names};
use super::state::save_in;
use super::{Sqlite, sql};
use crate::db::StateRow;
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Sqlite {
    pub(super) async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let furniture = self.furniture(&m.table).await?;
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("prepare", e))?;
        for stmt in create_shadow(m, &furniture) {
            sqlx::query(sql(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(format!("prepare: creating {}", m.shadow), e))?;
        }
        save_in(&mut *tx, save).await?;
        tx.commit().await.map_err(|e| Error::db("prepare", e))
    }

    pub(super) async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let f = forward(m, &names(m));
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("dual-write", e))?;
        for stmt in triggers(&f) {
            sqlx::query(sql(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db("dual-write: creating triggers", e))?;
        }
        save_in(&mut *tx, save).await?;
        tx.commit().await.map_err(|e| Error::db("dual-write", e))
    }
}
