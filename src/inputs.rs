//! Turning command-line paths into the list of image files to process.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// File extensions treated as images when walking folders (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 19] = [
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "pnm", "ppm", "pgm", "pbm", "pam",
    "pfm", "tga", "qoi", "ico", "cur", "avif",
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

/// The argument that stands for an image read from stdin (`./-` names a file called `-`).
pub const STDIN: &str = "-";

/// Expands arguments in order: a file is taken as is (whatever its extension), `-` as the
/// image on stdin, a folder becomes its image files, recursively, sorted by path.
pub fn collect_inputs(args: &[PathBuf]) -> Vec<Input> {
    let mut inputs = Vec::new();
    for arg in args {
        if is_stdin(arg) {
            inputs.push(Input::Image(arg.clone()));
        } else if arg.is_dir() {
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

/// The longest line of a list or text file, in bytes (a path is at most 4 KiB on Linux).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The most lines a list or text file may hold.
pub const MAX_LINES: usize = 10_000_000;

/// Whether `path` stands for stdin ([`STDIN`]).
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == STDIN
}

/// How messages name `path`: `stdin` for [`STDIN`], else the path.
pub fn source_name(path: &Path) -> String {
    match is_stdin(path) {
        true => "stdin".to_string(),
        false => path.display().to_string(),
    }
}

/// Reads the lines of a file or, for `-`, stdin, as bytes with their line numbers (from 1;
/// `\r\n` as `\n`; blank lines skipped), refusing a line over [`MAX_LINE_BYTES`] or more
/// than [`MAX_LINES`] lines, so that `/dev/zero` or a binary file is an error rather than
/// memory exhausted. `what` names the content in messages ("file list"). A FIFO with no
/// writer blocks until one opens it, as it does for any POSIX reader.
pub fn read_lines(path: &Path, what: &str) -> Result<Vec<(usize, Vec<u8>)>> {
    let name = source_name(path);
    let reader: Box<dyn BufRead> = match is_stdin(path) {
        true => Box::new(std::io::stdin().lock()),
        false => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("{name}: cannot open the {what}"))?,
        )),
    };
    // One byte past the limit tells a line that is too long from one that fits exactly.
    let mut limited = std::io::Read::take(reader, MAX_LINE_BYTES as u64 + 2);
    let mut lines = Vec::new();
    for number in 1.. {
        let mut line = Vec::new();
        limited.set_limit(MAX_LINE_BYTES as u64 + 2);
        let read = limited
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{name}: cannot read the {what}"))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_LINE_BYTES {
            bail!("{name}: line {number} of the {what} is longer than {MAX_LINE_BYTES} bytes");
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() == MAX_LINES {
            bail!("{name}: the {what} has more than {MAX_LINES} lines");
        }
        lines.push((number, line));
    }
    Ok(lines)
}

/// Reads a list of paths, one a line (blank lines skipped), from a file or, for `-`, stdin;
/// the paths are taken as bytes, so names that are not UTF-8 work.
pub fn read_file_list(list: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_lines(list, "file list")?
        .into_iter()
        .map(|(_, line)| path_from_bytes(line))
        .collect())
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
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
