//! Labelled images from an ImageFolder (`DIR/<class>/<image>`), and batches decoded in
//! parallel ahead of the training step.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use image::ImageReader;
use rayon::prelude::*;

use super::rng::{Rng, Stream};
use crate::inputs::walk;
use crate::preprocess::PixelValues;

/// Names of the validation subfolder, in order of preference, beside `train/`.
pub const VAL_FOLDERS: [&str; 3] = ["val", "validation", "test"];

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// Where the validation images come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ValSource {
    /// A subfolder beside `train/` (`val`, `validation` or `test`).
    Folder(String),
    /// A seeded split of each class of the training folder.
    Split(f64),
}

/// A dataset in ImageFolder layout, split into training and validation images.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Class names (the folder names), sorted; a label is an index into this list.
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub val_source: ValSource,
}

impl ImageFolder {
    /// Reads the layout of `root`: `train/` with `val/` (or `validation/`, `test/`) when
    /// present, else class folders directly under `root` split by `val_split` with `seed`
    /// (each class separately, so every class keeps its share).
    pub fn open(root: &Path, val_split: f64, seed: u64) -> Result<Self> {
        if !root.is_dir() {
            bail!("{}: no such folder", root.display());
        }
        let train_dir = root.join("train");
        let (class_root, val_dir) = if train_dir.is_dir() {
            let val = VAL_FOLDERS
                .iter()
                .find(|name| root.join(name).is_dir())
                .map(|name| (name.to_string(), root.join(name)));
            (train_dir, val)
        } else {
            (root.to_path_buf(), None)
        };
        let classes = class_folders(&class_root)?;
        if classes.is_empty() {
            bail!(
                "{}: no class folders (expected DIR/<class>/<image> or DIR/train/<class>/<image>)",
                class_root.display()
            );
        }
        let mut train = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let files = images_in(&class_root.join(class))?;
            if files.is_empty() {
                bail!("{}: no images", class_root.join(class).display());
            }
            train.extend(files.into_iter().map(|path| Sample { path, label }));
        }
        let (train, val, val_source) = match val_dir {
            Some((name, dir)) => {
                let mut val = Vec::new();
                for class in class_folders(&dir)? {
                    let label = classes.iter().position(|c| *c == class).with_context(|| {
                        format!(
                            "{}: class {class:?} is not in {}",
                            dir.join(&class).display(),
                            class_root.display()
                        )
                    })?;
                    let files = images_in(&dir.join(&class))?;
                    val.extend(files.into_iter().map(|path| Sample { path, label }));
                }
                (train, val, ValSource::Folder(name))
            }
            None => {
                let (train, val) = split(train, classes.len(), val_split, seed);
                (train, val, ValSource::Split(val_split))
            }
        };
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            train,
            val,
            val_source,
        })
    }

    /// A hash of the class names and of every image's path (relative to the root) and label:
    /// a checkpoint resumes only on the data it was trained on.
    pub fn fingerprint(&self) -> String {
        let mut hash = Fnv::new();
        for class in &self.classes {
            hash.write(class.as_bytes());
            hash.write(b"\0");
        }
        for (part, samples) in [("train", &self.train), ("val", &self.val)] {
            hash.write(part.as_bytes());
            for sample in samples {
                let relative = sample.path.strip_prefix(&self.root).unwrap_or(&sample.path);
                hash.write(relative.to_string_lossy().as_bytes());
                hash.write(format!("\0{}\n", sample.label).as_bytes());
            }
        }
        format!("{:016x}", hash.0)
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hashers may change between releases).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Subfolder names of `dir`, sorted, hidden ones skipped.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot read folder", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot read folder", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Image files under `dir`, recursively, sorted.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    walk(dir, &mut found).with_context(|| format!("{}: cannot read folder", dir.display()))?;
    found.sort();
    Ok(found)
}

/// Moves `round(n * fraction)` images of each class (leaving at least one) to validation.
fn split(
    samples: Vec<Sample>,
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); num_classes];
    for sample in samples {
        by_class[sample.label].push(sample);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (label, mut class) in by_class.into_iter().enumerate() {
        Rng::derive(seed, Stream::Split, &[label as u64]).shuffle(&mut class);
        let n_val = ((class.len() as f64 * fraction).round() as usize).min(class.len() - 1);
        let mut held = class.split_off(class.len() - n_val);
        class.sort_by(|a, b| a.path.cmp(&b.path));
        held.sort_by(|a, b| a.path.cmp(&b.path));
        train.extend(class);
        val.extend(held);
    }
    (train, val)
}

/// A file that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub path: PathBuf,
    pub reason: String,
}

/// Keeps the samples whose file has a readable image header (checked in parallel); the others
/// are returned with the reason. Corrupt image data past the header shows when decoding.
pub fn readable(samples: Vec<Sample>) -> (Vec<Sample>, Vec<Unreadable>) {
    let checks: Vec<Option<String>> = samples
        .par_iter()
        .map(|sample| header_error(&sample.path))
        .collect();
    let mut kept = Vec::with_capacity(samples.len());
    let mut failed = Vec::new();
    for (sample, check) in samples.into_iter().zip(checks) {
        match check {
            None => kept.push(sample),
            Some(reason) => failed.push(Unreadable {
                path: sample.path,
                reason,
            }),
        }
    }
    (kept, failed)
}

fn header_error(path: &Path) -> Option<String> {
    let reader = match ImageReader::open(path).and_then(|r| r.with_guessed_format()) {
        Ok(reader) => reader,
        Err(err) => return Some(format!("cannot read: {err}")),
    };
    if reader.format().is_none() {
        return Some("not a recognized image format".into());
    }
    reader
        .into_dimensions()
        .err()
        .map(|err| format!("cannot decode image: {err}"))
}

/// Images stacked for one forward pass.
pub struct Batch {
    /// `(len, 3, height, width)` values, row-major.
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    /// Images of this batch that failed to decode (left out of it).
    pub failed: Vec<Unreadable>,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether every image of the batch failed.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Turns one sample, at its position in the epoch, into pixel values.
pub type Prepare = dyn Fn(usize, &Sample) -> Result<PixelValues> + Send + Sync;

/// Batches of `samples` taken in `order` from position `start`, prepared in parallel on a
/// background thread, up to two batches ahead of the consumer.
pub struct Prefetch {
    receiver: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts preparing batches.
    pub fn start(
        samples: Arc<Vec<Sample>>,
        order: Vec<usize>,
        start: usize,
        batch_size: usize,
        prepare: Arc<Prepare>,
    ) -> Self {
        let (sender, receiver) = sync_channel(2);
        let worker = std::thread::spawn(move || {
            let positions: Vec<usize> = (start..order.len()).collect();
            for chunk in positions.chunks(batch_size) {
                let prepared: Vec<Result<PixelValues>> = chunk
                    .par_iter()
                    .map(|&position| prepare(position, &samples[order[position]]))
                    .collect();
                let batch = stack(chunk, &order, &samples, prepared);
                if sender.send(batch).is_err() {
                    return; // the consumer stopped
                }
            }
        });
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }
}

fn stack(
    positions: &[usize],
    order: &[usize],
    samples: &[Sample],
    prepared: Vec<Result<PixelValues>>,
) -> Batch {
    let mut batch = Batch {
        pixels: Vec::new(),
        labels: Vec::new(),
        height: 0,
        width: 0,
        failed: Vec::new(),
    };
    for (&position, result) in positions.iter().zip(prepared) {
        let sample = &samples[order[position]];
        match result {
            Ok(pixels) => {
                batch.height = pixels.height;
                batch.width = pixels.width;
                batch.pixels.extend_from_slice(&pixels.data);
                batch.labels.push(sample.label as u32);
            }
            Err(err) => batch.failed.push(Unreadable {
                path: sample.path.clone(),
                reason: format!("{err:#}"),
            }),
        }
    }
    batch
}

impl Iterator for Prefetch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.receiver = None; // unblocks the worker's next send
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The order of the training images in `epoch`: a seeded permutation.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    Rng::derive(seed, Stream::Order, &[epoch as u64]).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn split_folders_are_detected_and_classes_sorted() {
        let root = tempfile::tempdir().unwrap();
        for file in [
            "train/b/1.png",
            "train/a/1.png",
            "train/a/2.png",
            "validation/b/3.png",
        ] {
            write_png(&root.path().join(file));
        }
        std::fs::write(root.path().join("train/README"), "not a class").unwrap();
        let data = ImageFolder::open(root.path(), 0.5, 0).unwrap();
        assert_eq!(data.classes, ["a", "b"]);
        assert_eq!(data.val_source, ValSource::Folder("validation".into()));
        let labels: Vec<usize> = data.train.iter().map(|s| s.label).collect();
        assert_eq!(labels, [0, 0, 1]);
        assert_eq!(data.val.len(), 1);
        assert_eq!(data.val[0].label, 1);

        write_png(&root.path().join("val/c/4.png"));
        let err = format!("{:#}", ImageFolder::open(root.path(), 0.5, 0).unwrap_err());
        assert!(err.contains("class \"c\" is not in"), "{err}");
    }

    #[test]
    fn a_seeded_split_is_stratified_and_reproducible() {
        let root = tempfile::tempdir().unwrap();
        for class in ["x", "y"] {
            for i in 0..10 {
                write_png(&root.path().join(format!("{class}/{i}.png")));
            }
        }
        write_png(&root.path().join("z/only.png"));
        let a = ImageFolder::open(root.path(), 0.2, 3).unwrap();
        assert_eq!(a.val_source, ValSource::Split(0.2));
        let count = |samples: &[Sample], label| samples.iter().filter(|s| s.label == label).count();
        assert_eq!(
            (count(&a.val, 0), count(&a.val, 1), count(&a.val, 2)),
            (2, 2, 0)
        );
        assert_eq!(a.train.len() + a.val.len(), 21);
        let b = ImageFolder::open(root.path(), 0.2, 3).unwrap();
        assert_eq!((&a.train, &a.val), (&b.train, &b.val));
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = ImageFolder::open(root.path(), 0.2, 4).unwrap();
        assert_ne!(a.val, c.val);
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn unreadable_files_are_set_aside_with_a_reason() {
        let root = tempfile::tempdir().unwrap();
        let good = root.path().join("a/good.png");
        write_png(&good);
        let bad = root.path().join("a/bad.jpg");
        std::fs::write(&bad, b"definitely not a jpeg").unwrap();
        let samples = vec![
            Sample {
                path: bad.clone(),
                label: 0,
            },
            Sample {
                path: good.clone(),
                label: 0,
            },
        ];
        let (kept, failed) = readable(samples);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].path, good);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].path, bad);
    }

    #[test]
    fn prefetched_batches_follow_the_order_and_report_failures() {
        let samples: Vec<Sample> = (0..7)
            .map(|i| Sample {
                path: PathBuf::from(format!("{i}")),
                label: i,
            })
            .collect();
        let prepare: Arc<Prepare> = Arc::new(|position, sample: &Sample| {
            if sample.label == 3 {
                bail!("broken");
            }
            Ok(PixelValues {
                height: 1,
                width: 1,
                tiles: 1,
                data: vec![position as f32; 3],
            })
        });
        let order = vec![6, 5, 4, 3, 2, 1, 0];
        let batches: Vec<Batch> =
            Prefetch::start(Arc::new(samples), order, 1, 3, prepare).collect();
        let labels: Vec<Vec<u32>> = batches.iter().map(|b| b.labels.clone()).collect();
        assert_eq!(labels, [vec![5, 4], vec![2, 1, 0]]);
        assert_eq!(batches[0].failed.len(), 1);
        assert_eq!(batches[0].failed[0].reason, "broken");
        assert_eq!(batches[1].pixels[..3], [4.0, 4.0, 4.0]);
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(50, 1, 0);
        assert_eq!(a, epoch_order(50, 1, 0));
        assert_ne!(a, epoch_order(50, 1, 1));
        assert_ne!(a, epoch_order(50, 2, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
