//! The `inbox-operator` binary: `run`, `crd` and `import`.
#![forbid(unsafe_code)]

use clap::Parser;
use inbox_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            inbox_operator::operator::init_logging(args.log_format);
            match inbox_operator::operator::run(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("inbox-operator: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Import(args) => {
            inbox_operator::ensure_crypto_provider();
            match inbox_operator::import::run(&args).await {
                Ok(yaml) => {
                    print!("{yaml}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("inbox-operator import: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Crd => match inbox_operator::crd::crd_yaml() {
            Ok(y) => {
                print!("{y}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("inbox-operator: cannot render the CRD: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
