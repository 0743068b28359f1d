//! `shoal`: the command-line front end. Each subcommand lives in `cmd/`; the
//! work is done by the library crates (see ARCHITECTURE.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod ui;

const EXAMPLES: &str = "\
Examples:
  shoal create my-album/ -a http://tracker.example:6969/announce   make my-album.torrent
  shoal show my-album.torrent                                       what is inside
  shoal verify my-album.torrent my-album/                           check the data

Run 'shoal <command> --help' for the options of each command.";

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A BitTorrent toolkit: create, inspect and verify torrents",
    after_help = EXAMPLES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Create(cmd::create::Args),
    Show(cmd::show::Args),
    Verify(cmd::verify::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Create(args) => cmd::create::run(args),
        Command::Show(args) => cmd::show::run(args),
        Command::Verify(args) => cmd::verify::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
