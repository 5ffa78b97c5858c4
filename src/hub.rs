//! Finding a model: a local folder or weights file, or a HuggingFace Hub repository fetched
//! through `hf-hub`'s cache (`HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::model::weights::{ModelFiles, WEIGHT_FILES};
use crate::tokenizer::TokenizerFiles;

/// The hub model used when none is given.
pub const DEFAULT_MODEL: &str = "google/vit-base-patch16-224";

/// Where a `--model` argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A folder or weights file on disk.
    Local(std::path::PathBuf),
    /// A hub repository id and revision.
    Hub { id: String, revision: String },
}

impl ModelSpec {
    /// Interprets `--model`: an existing path, else something that looks like a hub id
    /// (`owner/name` or `name`), else a missing path.
    pub fn parse(spec: &str, revision: Option<&str>) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with(['.', '/', '~'])
            || spec.contains('\\')
            || spec.matches('/').count() > 1
            || [".safetensors", ".bin", ".pth", ".pt", ".json"]
                .iter()
                .any(|ext| spec.ends_with(ext));
        if looks_like_path || spec.is_empty() {
            bail!("{spec}: no such file or directory");
        }
        Ok(Self::Hub {
            id: spec.to_string(),
            revision: revision.unwrap_or("main").to_string(),
        })
    }

    /// The model's files on disk, downloading them from the hub (or reading its cache) first.
    pub fn fetch(&self) -> Result<ModelFiles> {
        match self {
            Self::Local(path) => ModelFiles::local(path),
            Self::Hub { id, revision } => fetch_from_hub(id, revision),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Hub { id, revision } if revision == "main" => format!("{id} (hub)"),
            Self::Hub { id, revision } => format!("{id}@{revision} (hub)"),
        }
    }
}

/// Whether `HF_HUB_OFFLINE` asks for the cache only.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn fetch_from_hub(id: &str, revision: &str) -> Result<ModelFiles> {
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    if offline() {
        return from_cache(&Cache::from_env(), repo, id);
    }
    let cache = Cache::from_env();
    let token = std::env::var("HF_TOKEN").ok().or_else(|| cache.token());
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let api = ApiBuilder::from_env()
        .with_token(token)
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .context("cannot set up the hub client")?;
    let api_repo = api.repo(repo.clone());
    let info = match api_repo.info() {
        Ok(info) => info,
        Err(err) => {
            // Unreachable hub: a complete cached copy still serves, as in HF transformers.
            if let Ok(files) = from_cache(&cache, repo, id) {
                return Ok(files);
            }
            bail!(
                "{id}: cannot reach the Hugging Face Hub at {endpoint} ({err}); \
                 pass a local model folder with --model, or set HF_HUB_OFFLINE=1 to use the cache"
            );
        }
    };
    let available: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let weights = WEIGHT_FILES
        .iter()
        .find(|name| available.contains(name))
        .with_context(|| {
            format!(
                "{id}: the repository has none of {}",
                WEIGHT_FILES.join(", ")
            )
        })?;
    let get = |name: &str| download(&api_repo, id, name);
    let weights_path = get(weights)?;
    if weights.ends_with(".index.json") {
        for shard in shard_names(&weights_path)? {
            get(&shard)?;
        }
    }
    let tokenizer = TokenizerFiles::locate(|name| available.contains(&name), get)?;
    Ok(ModelFiles {
        config: Some(get("config.json")?),
        weights: weights_path,
        preprocessor: match available.contains(&"preprocessor_config.json") {
            true => Some(get("preprocessor_config.json")?),
            false => None,
        },
        tokenizer,
    })
}

fn download(repo: &ApiRepo, id: &str, name: &str) -> Result<std::path::PathBuf> {
    repo.get(name)
        .with_context(|| format!("{id}: cannot download {name} from the hub"))
}

/// The shard files a `*.index.json` lists.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("{}: cannot read", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a shard index", index.display()))?;
    let mut names: Vec<String> = json["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no weight_map", index.display()))?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The model's files from the local hub cache alone.
fn from_cache(cache: &Cache, repo: Repo, id: &str) -> Result<ModelFiles> {
    let cached = cache.repo(repo);
    let missing = || {
        format!(
            "{id}: not in the hub cache at {} and the hub is offline (HF_HUB_OFFLINE); \
             download it once online, or pass a local folder with --model",
            cache.path().display()
        )
    };
    let config = cached.get("config.json").with_context(missing)?;
    let weights = WEIGHT_FILES
        .iter()
        .find_map(|name| cached.get(name))
        .with_context(missing)?;
    if weights.to_string_lossy().ends_with(".index.json") {
        for shard in shard_names(&weights)? {
            cached.get(&shard).with_context(missing)?;
        }
    }
    Ok(ModelFiles {
        config: Some(config),
        weights,
        preprocessor: cached.get("preprocessor_config.json"),
        tokenizer: TokenizerFiles::locate(
            |name| cached.get(name).is_some(),
            |name| cached.get(name).with_context(missing),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert_eq!(
            ModelSpec::parse("google/vit-base-patch16-224", None).unwrap(),
            ModelSpec::Hub {
                id: "google/vit-base-patch16-224".into(),
                revision: "main".into()
            }
        );
        assert!(matches!(
            ModelSpec::parse("facebook/deit-tiny-patch16-224", Some("v2")).unwrap(),
            ModelSpec::Hub { revision, .. } if revision == "v2"
        ));
        assert!(matches!(
            ModelSpec::parse(".", None).unwrap(),
            ModelSpec::Local(_)
        ));
        let err = ModelSpec::parse("./missing-model", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "./missing-model: no such file or directory"
        );
        assert!(ModelSpec::parse("weights.safetensors", None).is_err());
    }

    #[test]
    fn offline_hub_without_cache_names_the_model_and_cache() {
        let cache_dir =
            std::env::temp_dir().join(format!("vit-empty-cache-{}", std::process::id()));
        let cache = Cache::new(cache_dir.clone());
        let repo = Repo::model("google/vit-base-patch16-224".into());
        let err = from_cache(&cache, repo, "google/vit-base-patch16-224").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("google/vit-base-patch16-224: not in the hub cache"),
            "{message}"
        );
        assert!(
            message.contains(&cache_dir.display().to_string()),
            "{message}"
        );
    }
}
