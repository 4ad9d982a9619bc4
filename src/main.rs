//! The `syncd` command line: parses the arguments, runs the command (see
//! `src/cli/`), and maps its outcome to an exit code:
//! 0 ok (also when our stdout is closed early, `syncd list todos | head`);
//! 1 the daemon answered with an error; 2 usage; 3 the daemon is not
//! reachable; 4 a `--wait` ran out of its `--timeout`; 10-15 the trouble
//! `status --check` found (see `cli::error`). clap's own usage errors exit 2
//! as well.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::error::CliError;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let outcome = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(cli::dispatch(args)),
        Err(e) => Err(CliError::Failed(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_quiet() {
                // Not eprintln!: it panics if stderr is gone too.
                let _ = writeln!(std::io::stderr(), "syncd: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
