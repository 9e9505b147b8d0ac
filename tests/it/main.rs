//! Integration tests, one binary: every scenario runs against SQLite files and against
//! the real PostgreSQL and MariaDB servers of this machine, each test in its own database.

mod backfill_races;
mod bad_plans;
mod blockers;
mod confirmation;
mod connections;
mod control;
mod dirs;
mod examples;
mod faults;
mod harness;
mod instant;
mod multi_table;
mod mysql_backfill;
mod mysql_fixture;
mod mysql_generated;
mod mysql_real_schema;
mod names;
mod output;
mod postgres_backfill;
mod postgres_carry;
mod postgres_furniture;
mod postgres_real_schema;
mod postgres_shape;
mod random_plans;
mod replicas;
mod scenarios;
mod security;
mod sqlite_real_schema;
mod types_matrix;
mod types_mysql;
mod types_postgres;
mod types_sqlite;

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
            async fn every_changing_command_needs_yes_without_a_terminal() {
                crate::confirmation::every_changing_command_needs_yes_without_a_terminal($kind)
                    .await;
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
            async fn a_directory_of_plans_runs_in_order_under_the_writer() {
                crate::dirs::a_directory_of_plans_runs_in_order_under_the_writer($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_edited_done_plan_and_a_gap_are_refused() {
                crate::dirs::an_edited_done_plan_and_a_gap_are_refused($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_directory_run_killed_in_its_third_plan_resumes() {
                crate::dirs::a_directory_run_killed_in_its_third_plan_resumes($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pause_tune_unpause_a_running_backfill() {
                crate::control::pause_tune_unpause_a_running_backfill($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_throttle_query_holds_the_backfill_and_status_says_why() {
                crate::control::the_throttle_query_holds_the_backfill_and_status_says_why($kind)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_clears_the_pause_and_the_tuning() {
                crate::control::rollback_clears_the_pause_and_the_tuning($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pause_during_verify() {
                crate::control::pause_during_verify($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_while_paused_resume_stays_paused() {
                crate::control::killed_while_paused_resume_stays_paused($kind).await;
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
async fn sqlite_a_misspelt_type_is_refused_and_the_affinity_can_be_insisted_on() {
    bad_plans::sqlite_a_misspelt_type_is_refused_and_the_affinity_can_be_insisted_on().await;
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
