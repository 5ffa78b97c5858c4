//! Checkpoint formats: safetensors (read through a memory map, or whole), shard indexes,
//! PyTorch pickles, and the check of a state dict against a configuration.

pub mod mapped;
pub mod pickle;
pub mod weights;
