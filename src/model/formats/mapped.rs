//! Safetensors weights read through a memory map: each tensor is copied out of the mapped
//! file when the model asks for it, and its pages are handed back right after, so loading
//! never holds the file and the model at once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};

use super::weights::{normalized_names, AdaptableWeights, Renamed, Shards, TensorShapes};
use crate::model::layouts::Layout;

/// Where one tensor lies in a mapped file.
#[derive(Clone)]
struct Entry {
    shard: usize,
    /// The name in the file (before [`normalized_names`]).
    stored_name: String,
    /// The dtype of the values (f32 for int8 codes, which are dequantized as they are read).
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range in the shard's map.
    bytes: std::ops::Range<usize>,
    /// For an int8 tensor, its scales (one per row): see [`crate::quantize`].
    scale: Option<Box<Entry>>,
}

impl Entry {
    /// Rows `part` of `count` equal parts of this tensor (rows are contiguous, so they are a
    /// byte range of it).
    fn rows(&self, part: usize, count: usize) -> Result<Self> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if rows == 0 || rows % count != 0 {
            bail!(
                "shape {:?}: its first dimension does not split into {count}",
                self.shape
            );
        }
        let bytes_per_part = self.bytes.len() / count;
        let start = self.bytes.start + part * bytes_per_part;
        let mut shape = self.shape.clone();
        shape[0] = rows / count;
        let scale = match &self.scale {
            Some(scale) => Some(Box::new(scale.rows(part, count)?)),
            None => None,
        };
        Ok(Self {
            shape,
            bytes: start..start + bytes_per_part,
            scale,
            ..self.clone()
        })
    }
}

/// One `.safetensors` file, or the shards of an index, mapped; tensors by their normalized
/// HF name.
pub struct MappedSafetensors {
    shards: Vec<(PathBuf, Mmap)>,
    tensors: HashMap<String, Entry>,
    layout: Layout,
}

impl MappedSafetensors {
    /// Maps `path`: a `.safetensors` file or a `model.safetensors.index.json`, with tensors
    /// by their canonical names in `layout` (`None`: the layout the names show; see
    /// [`Self::layout`]).
    ///
    /// The files must not change while the model loads (the map reads them as they are).
    pub fn open(path: &Path, layout: Option<Layout>) -> Result<Self> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let index = match name.ends_with(".index.json") {
            true => Some(Shards::read(path)?),
            false => None,
        };
        let files = match &index {
            Some(index) => index.files.clone(),
            None => vec![path.to_path_buf()],
        };
        let mut shards = Vec::new();
        let mut stored = Vec::new();
        let mut int8 = HashSet::new();
        for (shard, file) in files.into_iter().enumerate() {
            let handle = std::fs::File::open(&file)
                .with_context(|| format!("{}: cannot open", file.display()))?;
            // SAFETY: the map is only read; the files are not modified while loading (see
            // above), which is what a map requires.
            let map = unsafe { Mmap::map(&handle) }
                .with_context(|| format!("{}: cannot map", file.display()))?;
            let (header, metadata) = SafeTensors::read_metadata(&map)
                .with_context(|| format!("{}: not a valid safetensors file", file.display()))?;
            let start = 8 + header;
            for (stored_name, info) in metadata.tensors() {
                let dtype = match info.dtype {
                    Dtype::I8 => {
                        int8.insert(stored_name.clone());
                        DType::F32
                    }
                    other => candle_dtype(other)
                        .with_context(|| format!("{}: tensor {stored_name}", file.display()))?,
                };
                let (begin, end) = info.data_offsets;
                stored.push(Entry {
                    shard,
                    stored_name,
                    dtype,
                    shape: info.shape.clone(),
                    bytes: start + begin..start + end,
                    scale: None,
                });
            }
            shards.push((file, map));
        }
        if let Some(index) = &index {
            let names: HashSet<&str> = stored.iter().map(|e| e.stored_name.as_str()).collect();
            index.check(path, |name| names.contains(name))?;
        }
        let stored = attach_scales(stored, &int8, |shard| {
            (shards[shard].0.as_path(), &shards[shard].1[..])
        })?;
        let (layout, renamed) =
            normalized_names(stored.iter().map(|e| e.stored_name.clone()), layout);
        let by_name: HashMap<String, Entry> = stored
            .into_iter()
            .map(|entry| (entry.stored_name.clone(), entry))
            .collect();
        let mut tensors = HashMap::with_capacity(renamed.len());
        for Renamed {
            stored,
            canonical,
            rows,
            unit_dims,
        } in renamed
        {
            let entry = &by_name[&stored];
            let mut entry = match rows {
                None => entry.clone(),
                Some((part, count)) => entry.rows(part, count).with_context(|| {
                    format!("{}: tensor {stored}", shards[entry.shard].0.display())
                })?,
            };
            entry.shape.splice(0..0, std::iter::repeat_n(1, unit_dims));
            tensors.insert(canonical, entry);
        }
        Ok(Self {
            shards,
            tensors,
            layout,
        })
    }

    /// The layout the tensors were renamed from.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The tensor `name` (a normalized name) in `dtype` on `device`, copied out of the map;
    /// its pages are released afterwards.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self
            .tensors
            .get(name)
            .with_context(|| format!("missing tensor {name}"))?;
        let (file, map) = &self.shards[entry.shard];
        let values = match &entry.scale {
            None => Tensor::from_raw_buffer(
                &map[entry.bytes.clone()],
                entry.dtype,
                &entry.shape,
                &Device::Cpu,
            ),
            Some(scale) => self.dequantized(entry, scale),
        };
        let tensor = values
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(device))
            .with_context(|| format!("{}: tensor {}", file.display(), entry.stored_name))?;
        // SAFETY: DONTNEED on a read-only file map drops our mapping of those pages; a later
        // read maps them again from the file, so no data the map shows can change.
        unsafe {
            let _ = map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                entry.bytes.start,
                entry.bytes.len(),
            );
        }
        Ok(tensor)
    }
}

impl MappedSafetensors {
    /// Whether any tensor is stored as int8 (an int8 folder).
    pub fn has_int8(&self) -> bool {
        self.tensors.values().any(|e| e.scale.is_some())
    }

    /// An int8 tensor's values: each code times its row's scale, in f32.
    fn dequantized(&self, entry: &Entry, scale: &Entry) -> candle_core::Result<Tensor> {
        let codes = &self.shards[entry.shard].1[entry.bytes.clone()];
        let scales = Tensor::from_raw_buffer(
            &self.shards[scale.shard].1[scale.bytes.clone()],
            scale.dtype,
            &scale.shape,
            &Device::Cpu,
        )?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
        let rows = scales.len().max(1);
        let cols = codes.len() / rows;
        let values: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &q)| q as i8 as f32 * scales[i / cols.max(1)])
            .collect();
        Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu)
    }
}

/// Attaches to each int8 tensor `NAME` (the names in `int8`) its scales `NAME_scale`
/// (dropped from the tensors): one f32 (or other float) value per row, each finite, not
/// negative and small enough that 127 times it stays finite. A missing, misshapen or
/// non-finite scale, or scales beside a weight not stored as I8 (relabelled U8 or BOOL, say,
/// whose bytes would run as float weights), is an error naming the tensor and its file
/// (`shard` gives a shard's path and bytes).
fn attach_scales<'a>(
    stored: Vec<Entry>,
    int8: &HashSet<String>,
    shard: impl Fn(usize) -> (&'a Path, &'a [u8]),
) -> Result<Vec<Entry>> {
    let suffix = crate::quantize::SCALE_SUFFIX;
    let stored_names: HashMap<String, DType> = stored
        .iter()
        .map(|e| (e.stored_name.clone(), e.dtype))
        .collect();
    let mut scales: HashMap<String, Entry> = HashMap::new();
    let mut rest = Vec::with_capacity(stored.len());
    for entry in stored {
        match entry.stored_name.strip_suffix(suffix) {
            Some(base) if int8.contains(base) => {
                scales.insert(base.to_string(), entry);
            }
            Some(base) if stored_names.contains_key(base) => {
                bail!(
                    "{}: tensor {base} has scales ({}) but is stored as {}, not I8",
                    shard(entry.shard).0.display(),
                    entry.stored_name,
                    stored_names[base].as_str()
                );
            }
            _ => rest.push(entry),
        }
    }
    for entry in rest.iter_mut().filter(|e| int8.contains(&e.stored_name)) {
        let file = shard(entry.shard).0.display();
        let name = &entry.stored_name;
        let Some(scale) = scales.remove(name) else {
            bail!(
                "{file}: tensor {name} is int8 but {name}{suffix} (one scale per row) is missing"
            );
        };
        let rows = entry.shape.first().copied().unwrap_or(1);
        if entry.shape.len() != 2 || scale.shape != [rows] || !scale.dtype.is_float() {
            bail!(
                "{file}: tensor {name}{suffix} is {} {:?}; the int8 tensor {name} {:?} needs one \
                 float scale per row ({rows})",
                scale.dtype.as_str(),
                scale.shape,
                entry.shape
            );
        }
        let (scale_file, bytes) = shard(scale.shard);
        let values = Tensor::from_raw_buffer(
            &bytes[scale.bytes.clone()],
            scale.dtype,
            &scale.shape,
            &Device::Cpu,
        )
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .with_context(|| format!("{}: tensor {name}{suffix}", scale_file.display()))?;
        if let Some((row, value)) = values
            .iter()
            .enumerate()
            .find(|(_, s)| !(**s >= 0.0 && (**s * 127.0).is_finite()))
        {
            bail!(
                "{}: tensor {name}{suffix} holds {value} for row {row} (a scale must be finite, \
                 not negative, and 127 times it finite)",
                scale_file.display()
            );
        }
        entry.scale = Some(Box::new(scale));
    }
    Ok(rest)
}

impl AdaptableWeights for MappedSafetensors {
    fn rename(&mut self, from: &str, to: String) {
        if let Some(entry) = self.tensors.remove(from) {
            self.tensors.insert(to, entry);
        }
    }

    /// An int8 tensor keeps its shape (its scales are per stored row): the shape check then
    /// reports it.
    fn reshape(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        if let Some(entry) = self.tensors.get_mut(name).filter(|e| e.scale.is_none()) {
            entry.shape = shape.to_vec();
        }
        Ok(())
    }
}

impl TensorShapes for MappedSafetensors {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|e| e.shape.clone())
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

impl candle_nn::var_builder::SimpleBackend for MappedSafetensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, device)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

fn candle_dtype(dtype: Dtype) -> Result<DType> {
    Ok(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::U32 => DType::U32,
        Dtype::U8 | Dtype::BOOL => DType::U8,
        other => bail!("dtype {other:?} is not supported"),
    })
}
