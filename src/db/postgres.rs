//! Postgres: not yet written.

use std::time::Duration;

use crate::db::{
    Backend, BatchDone, Cursor, CutoverOutcome, PhaseSql, StateRow, VerifyReport, VerifyRequest,
};
use crate::error::{Error, Result};
use crate::schema::{Migration, TableShape};

pub struct Postgres {
    pub pool: sqlx::PgPool,
}

fn missing<T>() -> Result<T> {
    Err(Error::State(
        "the postgres backend is not written yet".into(),
    ))
}

impl Postgres {
    pub async fn connect(_url: &str) -> Result<Postgres> {
        missing()
    }
}

impl Backend for Postgres {
    fn dialect(&self) -> &'static str {
        "postgres"
    }
    fn quote(&self, ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
    async fn default_schema(&self) -> Result<Option<String>> {
        missing()
    }
    async fn ensure_state_table(&self) -> Result<()> {
        missing()
    }
    async fn load_state(&self, _name: &str) -> Result<Option<StateRow>> {
        missing()
    }
    async fn list_states(&self) -> Result<Vec<StateRow>> {
        missing()
    }
    async fn save_state(&self, _row: &StateRow) -> Result<()> {
        missing()
    }
    async fn lock(&self, _migration: &str) -> Result<()> {
        missing()
    }
    async fn unlock(&self, _migration: &str) -> Result<()> {
        missing()
    }
    async fn describe(&self, _schema: Option<&str>, _table: &str) -> Result<Option<TableShape>> {
        missing()
    }
    async fn preflight(&self, _m: &Migration) -> Result<Vec<String>> {
        missing()
    }
    fn preview(&self, _m: &Migration) -> Vec<PhaseSql> {
        Vec::new()
    }
    async fn prepare(&self, _m: &Migration, _save: &StateRow) -> Result<()> {
        missing()
    }
    async fn start_dual_write(&self, _m: &Migration, _save: &StateRow) -> Result<()> {
        missing()
    }
    async fn estimate_rows(&self, _m: &Migration) -> Result<u64> {
        missing()
    }
    async fn copy_batch(
        &self,
        _m: &Migration,
        _after: Option<&Cursor>,
        _limit: u64,
        _checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        missing()
    }
    async fn finish_backfill(&self, _m: &Migration) -> Result<()> {
        missing()
    }
    async fn verify(
        &self,
        _m: &Migration,
        _req: &VerifyRequest,
        _progress: &(dyn Fn(u64) + Sync),
        _stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        missing()
    }
    async fn cutover(
        &self,
        _m: &Migration,
        _lock_timeout: Duration,
        _save: &StateRow,
    ) -> Result<CutoverOutcome> {
        missing()
    }
    async fn cleanup(&self, _m: &Migration, _keep_old: bool, _save: &StateRow) -> Result<()> {
        missing()
    }
    async fn rollback(&self, _m: &Migration, _save: &StateRow) -> Result<()> {
        missing()
    }
    async fn trigger_failures(&self, _m: &Migration) -> Result<Vec<String>> {
        missing()
    }
    async fn throttle_value(&self, _sql: &str) -> Result<f64> {
        missing()
    }
}
