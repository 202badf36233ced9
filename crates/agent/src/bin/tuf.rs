//! `hearth-tuf`: the agent's TUF client on the command line that independent TUF client test suites drive.
//!
//! ```text
//! hearth-tuf --metadata-dir D init ROOT_FILE
//! hearth-tuf --metadata-url URL --metadata-dir D refresh
//! hearth-tuf --metadata-url URL --metadata-dir D --target-name NAME --target-base-url URL --target-dir DIR download
//! ```
//!
//! Exit 0 on success, 1 on failure (the reason on stderr). Trusted metadata stays in D as `root.json`,
//! `timestamp.json`, `snapshot.json` and `targets.json`, changed only by a refresh that fully verifies.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearth_agent::tuf::{self, Fetcher};

#[derive(Parser)]
#[command(name = "hearth-tuf", version, about = "The agent's TUF client")]
struct Args {
    /// Directory of the trusted metadata.
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target to download.
    #[arg(long)]
    target_name: Option<String>,
    /// Base URL of the targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Directory to download the target into.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trust ROOT_FILE as the initial root.
    Init {
        /// The root metadata to start from (obtained out of band).
        root_file: PathBuf,
    },
    /// Update the trusted metadata from the repository.
    Refresh,
    /// Refresh, then download and verify one target.
    Download,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-tuf: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| anyhow::anyhow!("{flag} is required"));
    let fetcher = Fetcher::new(reqwest::Client::builder().build()?);
    match args.command {
        Command::Init { root_file } => tuf::init(&args.metadata_dir, &root_file)?,
        Command::Refresh => {
            let url = need(args.metadata_url, "--metadata-url")?;
            tuf::refresh(&fetcher, &args.metadata_dir, &url, None).await?;
        }
        Command::Download => {
            let url = need(args.metadata_url, "--metadata-url")?;
            let name = need(args.target_name, "--target-name")?;
            let base = need(args.target_base_url, "--target-base-url")?;
            let dir = args.target_dir.ok_or_else(|| anyhow::anyhow!("--target-dir is required"))?;
            tuf::download(&fetcher, &args.metadata_dir, &url, &name, &base, &dir).await?;
        }
    }
    Ok(())
}
