//! turnout changes the shape of a live table without downtime: a YAML plan is stepped
//! through prepare → dual-write → backfill → verify → cutover → cleanup, with a
//! checkpoint after every phase and batch, so it can be resumed and rolled back.
//!
//! The tree follows the architecture: [`plan`] reads and checks plans, [`engine`] decides
//! which phase comes next and what is persisted, [`db`] holds one module per database
//! answering the engine's questions in its own SQL, [`progress`] renders a running
//! migration for a person, and [`cli`] is the thin command line on top that nothing imports.

pub mod cli;
pub mod db;
pub mod demo;
pub mod engine;
pub mod error;
pub mod fault;
pub mod plan;
pub mod progress;
pub mod schema;

pub use error::{Error, Result};
