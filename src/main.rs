//! The `crust` command line (see `src/cli/`).

fn main() -> std::process::ExitCode {
    crust::cli::main()
}
