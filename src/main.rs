//! The `inbox-operator` binary: `run`, `crd`, `import` and `orphans`.
#![forbid(unsafe_code)]

use clap::Parser;
use inbox_operator::cli::{Cli, Command};

/// jemalloc instead of the C library's allocator (glibc's here, musl's in the static image):
/// at 10,000 Inboxes it cut the operator's CPU per Inbox by 13 % against glibc's malloc
/// (docs/archive/benchmarks-history.md, issue 13).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            inbox_operator::runtime::startup::init_logging(args.log_format);
            match inbox_operator::runtime::startup::run(*args).await {
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
            printed("import", inbox_operator::commands::import::run(&args).await)
        }
        Command::Orphans(args) => printed(
            "orphans",
            inbox_operator::commands::orphans::run(&args).await,
        ),
        Command::Crd(args) => match print_crds(args.dir.as_deref()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("inbox-operator: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// Print a subcommand's output, or its error on stderr.
fn printed<E: std::fmt::Display>(cmd: &str, result: Result<String, E>) -> std::process::ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inbox-operator {cmd}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Print every CRD (multi-document YAML), or write one file each into `dir`.
fn print_crds(dir: Option<&std::path::Path>) -> Result<(), String> {
    let files = inbox_operator::commands::crd::crd_files()
        .map_err(|e| format!("cannot render the CRDs: {e}"))?;
    match dir {
        Some(dir) => {
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
        None => {
            let docs: Vec<String> = files.into_values().collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}
