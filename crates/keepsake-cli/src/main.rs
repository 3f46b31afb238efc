//! The `keepsake` binary: see the `keepsake_cli` crate documentation.

fn main() -> std::process::ExitCode {
    keepsake_cli::main()
}
