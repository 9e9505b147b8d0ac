//! Integration tests, one binary: every scenario runs against SQLite files and against
//! the real PostgreSQL and MariaDB servers of this machine, each test in its own database.

mod bad_plans;
mod connections;
mod examples;
mod faults;
mod harness;
mod names;
mod random_plans;
mod scenarios;
mod security;
mod sqlite_real_schema;

/// Runs each scenario once per database, as ripgrep's `rgtest!` runs a test per engine.
macro_rules! scenarios {
    ($db:ident, $kind:expr) => {
        mod $db {
            use crate::harness::Kind;
            use crate::scenarios as s;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn full_migration_under_concurrent_writes() {
                s::full_migration_under_concurrent_writes($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_from_every_phase() {
                s::rollback_from_every_phase($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_mid_backfill_after_a_commit_then_resumed() {
                s::killed_then_resumed($kind, "backfill.batch.after@3").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_mid_backfill_before_a_commit_then_resumed() {
                s::killed_then_resumed($kind, "backfill.batch.before@4").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_mid_verify_then_resumed() {
                s::killed_then_resumed($kind, "verify.chunk@1").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_just_before_cutover_then_resumed() {
                s::killed_then_resumed($kind, "cutover.attempt").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_inside_the_cutover_transaction_then_resumed() {
                s::killed_then_resumed($kind, "cutover.inside").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_after_cutover_before_cleanup_then_resumed() {
                s::killed_then_resumed($kind, "phase.cleanup.before").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_edited_plan_is_refused_with_what_changed() {
                s::an_edited_plan_is_refused_with_what_changed($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_second_turnout_is_refused_while_the_first_holds_the_lock() {
                s::a_second_turnout_is_refused_while_the_first_holds_the_lock($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_bad_plan_is_refused_and_touches_nothing() {
                crate::bad_plans::every_bad_plan_is_refused_and_touches_nothing($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_fault_point_is_survived() {
                crate::faults::every_fault_point_is_survived($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_value_that_does_not_fit_stops_the_backfill() {
                s::a_value_that_does_not_fit_stops_the_backfill($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ctrl_c_stops_after_the_batch_and_resumes() {
                s::ctrl_c_stops_after_the_batch_and_resumes($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn step_runs_one_phase_at_a_time() {
                s::step_runs_one_phase_at_a_time($kind).await;
            }

            #[test]
            fn random_plans_keep_every_write() {
                crate::random_plans::random_plans_keep_every_write($kind);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn verify_reports_a_planted_difference() {
                s::verify_reports_a_planted_difference($kind).await;
            }
        }
    };
}

scenarios!(sqlite, Kind::Sqlite);
scenarios!(mysql, Kind::MySql);
scenarios!(postgres, Kind::Postgres);

#[test]
fn wrong_urls_and_servers_that_are_down_exit_3_without_the_password() {
    bad_plans::wrong_urls_exit_3();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hostile_names_and_storage_classes() {
    names::hostile_names_migrate_and_roll_back(harness::Kind::Sqlite, names::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_example_plans_pass_check() {
    examples::example_plans_pass_check(harness::Kind::Sqlite, "sqlite").await;
}

#[test]
fn the_demo_runs_twice_on_a_small_table() {
    examples::the_demo_runs_twice_on_a_small_table();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_example_plans_pass_check() {
    examples::example_plans_pass_check(harness::Kind::MySql, "mysql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_lost_connections_are_survived() {
    connections::lost_connections_are_survived(harness::Kind::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_example_plans_pass_check() {
    examples::example_plans_pass_check(harness::Kind::Postgres, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_connections_are_survived() {
    connections::lost_connections_are_survived(harness::Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hostile_names_and_types() {
    names::hostile_names_migrate_and_roll_back(harness::Kind::Postgres, names::postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_hostile_names_and_types() {
    names::hostile_names_migrate_and_roll_back(harness::Kind::MySql, names::mysql()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_user_without_privileges_is_refused_with_exit_3() {
    security::a_user_without_privileges_is_refused_with_exit_3(harness::Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_user_without_privileges_is_refused_with_exit_3() {
    security::a_user_without_privileges_is_refused_with_exit_3(harness::Kind::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_password_never_reaches_any_output() {
    security::the_password_never_reaches_any_output(harness::Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failing_mapping_is_recorded_or_rejected() {
    scenarios::a_failing_mapping_is_recorded_or_rejected(harness::Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_failing_mapping_is_recorded_or_rejected() {
    scenarios::a_failing_mapping_is_recorded_or_rejected(harness::Kind::MySql).await;
}
