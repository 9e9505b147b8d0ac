//! The `turnout` binary: everything lives in the library; this maps it to a process.

fn main() -> std::process::ExitCode {
    turnout::cli::main()
}
