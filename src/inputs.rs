//! Turning command-line paths into the list of image files to process.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// File extensions treated as images when walking folders (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 12] = [
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "pnm", "ppm", "pgm", "tga",
];

/// One entry of the work list: an image file, or an argument that yielded none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Image(PathBuf),
    /// A path that is missing, unreadable or an empty folder, with the reason.
    Invalid(PathBuf, String),
}

/// Whether `path` has an image extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Expands arguments in order: a file is taken as is (whatever its extension), a folder
/// becomes its image files, recursively, sorted by path.
pub fn collect_inputs(args: &[PathBuf]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let mut found = Vec::new();
            match walk(arg, &mut found) {
                Err(err) => inputs.push(Input::Invalid(
                    arg.clone(),
                    format!("cannot read folder: {err}"),
                )),
                Ok(()) if found.is_empty() => inputs.push(Input::Invalid(
                    arg.clone(),
                    "no images in this folder".into(),
                )),
                Ok(()) => {
                    found.sort();
                    inputs.extend(found.into_iter().map(Input::Image));
                }
            }
        } else if arg.exists() {
            inputs.push(Input::Image(arg.clone()));
        } else {
            inputs.push(Input::Invalid(
                arg.clone(),
                "no such file or directory".into(),
            ));
        }
    }
    inputs
}

/// Lists the image files under `dir` (following no symlinked folders, to avoid cycles).
pub fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&path, found)?;
        } else if has_image_extension(&path) && path.is_file() {
            found.push(path);
        }
    }
    Ok(())
}

/// Reads a list of paths, one a line (blank lines skipped), from a file or, for `-`, stdin.
pub fn read_file_list(list: &Path) -> Result<Vec<PathBuf>> {
    let lines: Vec<String> = if list == Path::new("-") {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("stdin: cannot read the file list")?
    } else {
        let file = std::fs::File::open(list)
            .with_context(|| format!("{}: cannot open the file list", list.display()))?;
        std::io::BufReader::new(file)
            .lines()
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{}: cannot read the file list", list.display()))?
    };
    Ok(lines
        .into_iter()
        .map(|line| line.trim_end_matches('\r').to_string())
        .filter(|line| !line.trim().is_empty())
        .map(PathBuf::from)
        .collect())
}

/// One part of a collection split among `count` processes: the inputs at positions
/// `index`, `index + count`, ... of the sorted list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Zero-based, below `count`.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;

    /// `I/N`, with `0 <= I < N`.
    fn from_str(text: &str) -> Result<Self> {
        let (index, count) = text
            .split_once('/')
            .with_context(|| format!("--shard {text:?}: expected I/N, e.g. 0/4"))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<usize>()
                .with_context(|| format!("--shard {text:?}: {part:?} is not a whole number"))
        };
        let (index, count) = (parse(index)?, parse(count)?);
        if count == 0 {
            bail!("--shard {text:?}: the number of shards must be at least 1");
        }
        if index >= count {
            bail!(
                "--shard {text:?}: the shard index is zero-based, from 0 to {}",
                count - 1
            );
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// This shard's inputs: the list sorted by path (duplicates kept), then every `count`-th
    /// from `index`, so that the shards of a collection are disjoint and cover it.
    pub fn select(self, mut inputs: Vec<Input>) -> Vec<Input> {
        inputs.sort_by(|a, b| a.path().cmp(b.path()));
        inputs
            .into_iter()
            .skip(self.index)
            .step_by(self.count)
            .collect()
    }
}

impl Input {
    /// The path of the input, whatever its state.
    pub fn path(&self) -> &Path {
        match self {
            Self::Image(path) | Self::Invalid(path, _) => path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_expand_recursively_in_sorted_order_and_problems_are_kept_in_place() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("photos");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["b.JPG", "a.png", "sub/c.jpeg", "notes.txt"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let text = root.path().join("file.txt");
        std::fs::write(&text, b"x").unwrap();
        let missing = root.path().join("missing.jpg");
        let inputs = collect_inputs(&[text.clone(), dir.clone(), empty.clone(), missing.clone()]);
        assert_eq!(
            inputs,
            vec![
                Input::Image(text),
                Input::Image(dir.join("a.png")),
                Input::Image(dir.join("b.JPG")),
                Input::Image(dir.join("sub/c.jpeg")),
                Input::Invalid(empty, "no images in this folder".into()),
                Input::Invalid(missing, "no such file or directory".into()),
            ]
        );
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_sorted_list() {
        let inputs: Vec<Input> = ["e", "a", "d", "b", "c", "f", "g"]
            .iter()
            .map(|n| Input::Image(PathBuf::from(n)))
            .collect();
        let mut union: Vec<Input> = (0..3)
            .flat_map(|index| Shard { index, count: 3 }.select(inputs.clone()))
            .collect();
        let first: Vec<_> = Shard { index: 0, count: 3 }.select(inputs.clone());
        assert_eq!(
            first.iter().map(|i| i.path()).collect::<Vec<_>>(),
            [Path::new("a"), Path::new("d"), Path::new("g")]
        );
        union.sort_by(|a, b| a.path().cmp(b.path()));
        let mut all = inputs;
        all.sort_by(|a, b| a.path().cmp(b.path()));
        assert_eq!(union, all);
    }

    #[test]
    fn shard_arguments_are_checked() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "x/2", "3"] {
            let err = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("--shard {bad:?}")), "{err}");
        }
    }

    #[test]
    fn file_lists_skip_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "a.jpg\n\n  \nsub dir/b c.png\r\n").unwrap();
        assert_eq!(
            read_file_list(&list).unwrap(),
            [PathBuf::from("a.jpg"), PathBuf::from("sub dir/b c.png")]
        );
        let err = read_file_list(&dir.path().join("none")).unwrap_err();
        assert!(err.to_string().contains("cannot open the file list"));
    }
}
