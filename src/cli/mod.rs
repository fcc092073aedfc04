//! The command line: one subcommand per file.

mod generate;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "eigenprune",
    version,
    about = "Eigenpruning of large language models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a continuation of a prompt (streamed to stdout; speed on stderr).
    Generate(generate::GenerateArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
    }
}

/// `--device`: `cpu`, or `cuda:N` in a build with the `cuda` feature.
pub fn parse_device(spec: &str) -> anyhow::Result<candle_core::Device> {
    match spec {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = s.strip_prefix("cuda:").unwrap_or("0").parse::<usize>()?;
            Ok(candle_core::Device::new_cuda(n)?)
        }
        other => anyhow::bail!("unknown device `{other}` (use cpu or cuda:N)"),
    }
}
