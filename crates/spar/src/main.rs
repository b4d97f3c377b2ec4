//! `spar`: one binary for the control plane and the operator commands.

mod alloc;
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    alloc::start_purging();
    cli::main()
}
