//! `vit convert`: PyTorch and timm checkpoints to HF safetensors.

use anyhow::{bail, Result};
use clap::Args;

use super::Outcome;

#[derive(Args)]
pub struct ConvertArgs {}

pub fn run(_args: ConvertArgs) -> Result<Outcome> {
    bail!("convert: not implemented yet")
}
