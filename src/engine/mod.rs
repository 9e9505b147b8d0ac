//! The engine: which phase comes next, what is persisted, how rollback walks back.

pub mod state;
