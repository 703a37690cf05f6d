//! `warmpool`: parses the command line and hands over to [`warmpool::cli`].

fn main() -> std::process::ExitCode {
    warmpool::cli::main()
}
