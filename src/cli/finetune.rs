//! `vit finetune`: training on labelled images.

use anyhow::{bail, Result};
use clap::Args;

use super::Outcome;

#[derive(Args)]
pub struct FinetuneArgs {}

pub fn run(_args: FinetuneArgs) -> Result<Outcome> {
    bail!("finetune: not implemented yet")
}
