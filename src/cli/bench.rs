//! `vit bench`: throughput and latency.

use anyhow::{bail, Result};
use clap::Args;

use super::Outcome;

#[derive(Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<Outcome> {
    bail!("bench: not implemented yet")
}
