//! Turning command-line paths into the list of image files to process.

use std::path::{Path, PathBuf};

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
}
