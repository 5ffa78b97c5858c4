//! Reads PyTorch checkpoints (`pytorch_model.bin`, `.pth`, `.pt`) as data.
//!
//! `torch.save` writes a pickle: a program for Python's unpickler, which may call any
//! Python function. This module interprets the pickle itself and never runs anything.
//! It builds values only for an allowlist of torch's tensor-rebuild machinery
//! (`ALLOWLIST`) and refuses a pickle that names any other global. Both the zip
//! format (torch ≥ 1.6) and the legacy format (`_use_new_zipfile_serialization=False`)
//! are read.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use zip::{CompressionMethod, ZipArchive};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// One tensor read from a checkpoint: name, dtype, shape, and its elements as contiguous
/// little-endian bytes (row-major, strides/offset already applied).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: StorageDType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads every tensor of a PyTorch checkpoint (zip format or legacy pre-1.6 pickle
/// format), as data only.
///
/// A state dict nested under "state_dict", "model", "model_state_dict" or "module" (a
/// dict whose values are tensors) is found automatically; non-tensor entries (ints,
/// strings, optimizer state…) are skipped. A pickle naming a global outside torch's tensor-rebuild machinery is refused.
pub fn read_pytorch(path: &Path) -> Result<Vec<RawTensor>> {
    read_checkpoint(path).map_err(|e| match e.root_cause().downcast_ref::<Refusal>() {
        Some(refusal) => anyhow!("refusing to load {}: {refusal}", path.display()),
        None => anyhow!("{}: {e:#}", path.display()),
    })
}

fn read_checkpoint(path: &Path) -> Result<Vec<RawTensor>> {
    let mut file = File::open(path)?;
    let mut head = Vec::new();
    (&mut file).take(4).read_to_end(&mut head)?;
    if head == b"PK\x03\x04" {
        let len = file.metadata()?.len();
        file.rewind()?;
        read_zip(BufReader::new(file), len)
    } else if head.first() == Some(&op::PROTO) {
        let mut data = head;
        file.read_to_end(&mut data)?;
        read_legacy(&data)
    } else {
        bail!("not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    }
}

/// Reads the zip format: `<archive>/data.pkl`, whose persistent ids name the storages
/// `<archive>/data/<key>`, and `<archive>/byteorder`.
fn read_zip<R: Read + Seek>(reader: R, file_len: u64) -> Result<Vec<RawTensor>> {
    let mut archive =
        ZipArchive::new(reader).map_err(|e| anyhow!("truncated or corrupt zip archive ({e})"))?;
    let pkl = archive
        .file_names()
        .filter_map(|name| name.ok())
        .filter(|name| name == "data.pkl" || name.ends_with("/data.pkl"))
        .min_by_key(|name| name.len())
        .context("the zip archive has no data.pkl, so it is not a torch.save checkpoint")?
        .into_owned();
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default();
    let byteorder = format!("{prefix}byteorder");
    let big_endian = if archive.index_for_name(&byteorder).is_some() {
        match read_entry(&mut archive, &byteorder, file_len)?.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => bail!("unknown byte order '{}'", String::from_utf8_lossy(other)),
        }
    } else {
        false
    };
    let (pickle, _) =
        Pickle::parse(&read_entry(&mut archive, &pkl, file_len)?).context(pkl.clone())?;
    materialize(pickle.state_dict()?, big_endian, |key| {
        read_entry(&mut archive, &format!("{prefix}data/{key}"), file_len)
    })
}

/// Reads one zip entry, refusing sizes the file cannot hold: stored entries are no
/// larger than the file, deflate expands at most 1032 to 1.
fn read_entry<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    file_len: u64,
) -> Result<Vec<u8>> {
    let entry = archive
        .by_name(name)
        .map_err(|e| anyhow!("zip entry '{name}': {e}"))?;
    let size = entry.size();
    let cap = match entry.compression() {
        CompressionMethod::Stored => file_len,
        _ => file_len.saturating_mul(1032),
    };
    ensure!(
        size <= cap,
        "zip entry '{name}' claims {size} bytes, more than the file can hold"
    );
    let mut data = Vec::with_capacity(usize::try_from(size.min(file_len))?);
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| anyhow!("zip entry '{name}' is truncated or corrupt ({e})"))?;
    ensure!(data.len() as u64 == size, "zip entry '{name}' is truncated");
    Ok(data)
}

/// The first pickle of a legacy checkpoint.
const LEGACY_MAGIC: i128 = 0x1950_a86a_20f9_469c_fc6c;
/// The second pickle of a legacy checkpoint: its format version.
const LEGACY_PROTOCOL: i128 = 1001;

/// Reads the legacy format: pickles of the magic number, the format version, system
/// info, the object, and the list of storage keys; then for each key, its element
/// count (8 bytes, little-endian) and its elements (always little-endian).
fn read_legacy(data: &[u8]) -> Result<Vec<RawTensor>> {
    let mut rest = data;
    let magic = next_pickle(&mut rest, "header")?;
    ensure!(
        matches!(magic.root_obj(), Obj::Int(LEGACY_MAGIC)),
        "not a PyTorch checkpoint (a pickle without torch's magic number)"
    );
    let version = next_pickle(&mut rest, "header")?;
    ensure!(
        matches!(version.root_obj(), Obj::Int(LEGACY_PROTOCOL)),
        "unsupported legacy checkpoint version"
    );
    next_pickle(&mut rest, "system info")?;
    let main = next_pickle(&mut rest, "main pickle")?;
    let keys = next_pickle(&mut rest, "storage list")?;
    let mut regions = HashMap::new();
    for key in keys.strs(keys.root).context("storage list")? {
        let dtype = *main
            .storages
            .get(key)
            .with_context(|| format!("storage '{key}' is listed but nothing uses it"))?;
        let (count, tail) = rest
            .split_first_chunk::<8>()
            .with_context(|| format!("storage '{key}': unexpected end of file"))?;
        let len = usize::try_from(u64::from_le_bytes(*count))
            .ok()
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .filter(|&len| len <= tail.len())
            .with_context(|| format!("storage '{key}' is longer than the rest of the file"))?;
        let (region, tail) = tail.split_at(len);
        regions.insert(key, region);
        rest = tail;
    }
    materialize(main.state_dict()?, false, |key| {
        regions
            .get(key)
            .map(|region| region.to_vec())
            .with_context(|| format!("storage '{key}' has no data in the file"))
    })
}

fn next_pickle(rest: &mut &[u8], what: &str) -> Result<Pickle> {
    let (pickle, len) = Pickle::parse(rest).context(what.to_owned())?;
    *rest = rest.get(len..).unwrap_or_default();
    Ok(pickle)
}

/// The largest tensor (in bytes) allowed to have more elements than its storage, as a
/// broadcast (stride 0) view has: such a view could otherwise ask for any size.
const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// Copies each tensor out of its storage, loading every storage once (`load` gives its
/// bytes by key) and dropping it after its last tensor, or handing it over as that
/// tensor's data when the tensor is all of it.
fn materialize(
    views: Vec<(String, TensorView)>,
    big_endian: bool,
    mut load: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<Vec<RawTensor>> {
    let mut uses = HashMap::<String, usize>::new();
    for (_, view) in &views {
        *uses.entry(view.storage.key.clone()).or_default() += 1;
    }
    let mut loaded = HashMap::new();
    let mut tensors = Vec::with_capacity(views.len());
    for (name, view) in views {
        let key = &view.storage.key;
        let bytes = match loaded.remove(key) {
            Some(bytes) => bytes,
            None => load(key)?,
        };
        let numel = view.check(&name, bytes.len())?;
        let left = uses.get_mut(key).map_or(0, |left| {
            *left -= 1;
            *left
        });
        let mut data = if left == 0 && view.is_all_of(numel, bytes.len()) {
            bytes
        } else {
            let data = view.gather(&bytes, numel);
            if left > 0 {
                loaded.insert(key.clone(), bytes);
            }
            data
        };
        if big_endian {
            data.chunks_exact_mut(view.storage.dtype.size_in_bytes())
                .for_each(<[u8]>::reverse);
        }
        tensors.push(RawTensor {
            name,
            dtype: view.storage.dtype,
            shape: view.shape,
            data,
        });
    }
    Ok(tensors)
}

/// A storage named by a persistent id: `numel` elements of `dtype` from element
/// `offset` of the bytes stored under `key` (legacy files may give a window).
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: StorageDType,
    offset: usize,
    numel: usize,
}

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Debug, Clone)]
struct TensorView {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorView {
    /// Checks that the view lies within its storage, whose key holds `root_len` bytes,
    /// and returns its number of elements.
    fn check(&self, name: &str, root_len: usize) -> Result<usize> {
        let storage = &self.storage;
        let size = storage.dtype.size_in_bytes();
        let numel = self
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|n| n.checked_mul(size).is_some())
            .with_context(|| format!("tensor '{name}': shape {:?} is too large", self.shape))?;
        if numel == 0 {
            return Ok(0);
        }
        let window = (root_len / size)
            .saturating_sub(storage.offset)
            .min(storage.numel);
        let needed = self
            .shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |end, (&d, &s)| {
                end.checked_add((d - 1).checked_mul(s)?)
            })
            .and_then(|end| end.checked_add(1))
            .with_context(|| format!("tensor '{name}': strides {:?} are too large", self.stride))?;
        ensure!(
            needed <= window,
            "tensor '{name}': storage '{}' has {window} elements but the view needs {needed}",
            storage.key
        );
        ensure!(
            numel <= window || numel * size <= MAX_EXPANDED_BYTES,
            "tensor '{name}': a broadcast view of {numel} elements over {window} stored ones"
        );
        Ok(numel)
    }

    /// Whether the (checked) view is all `root_len` bytes of its key, in order.
    fn is_all_of(&self, numel: usize, root_len: usize) -> bool {
        self.storage.offset == 0
            && self.offset == 0
            && numel * self.storage.dtype.size_in_bytes() == root_len
            && self.is_contiguous()
    }

    /// The (checked) view's `numel` elements in row-major order.
    fn gather(&self, root: &[u8], numel: usize) -> Vec<u8> {
        // A constant element size lets the strided loop copy without calling memcpy.
        match self.storage.dtype.size_in_bytes() {
            1 => self.gather_sized::<1>(root, numel),
            2 => self.gather_sized::<2>(root, numel),
            4 => self.gather_sized::<4>(root, numel),
            _ => self.gather_sized::<8>(root, numel),
        }
    }

    fn gather_sized<const SIZE: usize>(&self, root: &[u8], numel: usize) -> Vec<u8> {
        let start = self.storage.offset + self.offset;
        let mut out = Vec::with_capacity(numel * SIZE);
        if numel == 0 {
            return out;
        }
        if self.is_contiguous() {
            out.extend_from_slice(&root[start * SIZE..(start + numel) * SIZE]);
            return out;
        }
        let mut index = vec![0; self.shape.len()];
        let mut pos = start;
        for _ in 0..numel {
            out.extend_from_slice(&root[pos * SIZE..(pos + 1) * SIZE]);
            for (d, i) in index.iter_mut().enumerate().rev() {
                *i += 1;
                if *i < self.shape[d] {
                    pos += self.stride[d];
                    break;
                }
                pos -= self.stride[d] * (self.shape[d] - 1);
                *i = 0;
            }
        }
        out
    }

    /// Whether the view is row-major without gaps (dimensions of size 1 aside).
    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }
}

/// A global the pickle asked for that is not on [`ALLOWLIST`].
#[derive(Debug)]
struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the pickle asks to call {}, which is not a tensor-rebuild function",
            self.0
        )
    }
}

impl std::error::Error for Refusal {}

/// The globals a checkpoint's pickle may name. Nothing is ever called: the rebuild
/// functions and `OrderedDict` build values of this module; the classes are accepted
/// only as data (a storage's element type, the type `_rebuild_from_type_v2` restores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TensorClass,
    ParameterClass,
    Storage(StorageDType),
}

/// Every global a pickle may name, by its dotted name.
const ALLOWLIST: [(&str, Global); 18] = [
    ("collections.OrderedDict", Global::OrderedDict),
    ("torch._utils._rebuild_tensor", Global::RebuildTensor),
    ("torch._utils._rebuild_tensor_v2", Global::RebuildTensorV2),
    ("torch._utils._rebuild_parameter", Global::RebuildParameter),
    (
        "torch._utils._rebuild_parameter_with_state",
        Global::RebuildParameterWithState,
    ),
    (
        "torch._tensor._rebuild_from_type_v2",
        Global::RebuildFromTypeV2,
    ),
    ("torch.Tensor", Global::TensorClass),
    ("torch.nn.parameter.Parameter", Global::ParameterClass),
    ("torch.DoubleStorage", Global::Storage(StorageDType::F64)),
    ("torch.FloatStorage", Global::Storage(StorageDType::F32)),
    ("torch.HalfStorage", Global::Storage(StorageDType::F16)),
    ("torch.BFloat16Storage", Global::Storage(StorageDType::BF16)),
    ("torch.LongStorage", Global::Storage(StorageDType::I64)),
    ("torch.IntStorage", Global::Storage(StorageDType::I32)),
    ("torch.ShortStorage", Global::Storage(StorageDType::I16)),
    ("torch.CharStorage", Global::Storage(StorageDType::I8)),
    ("torch.ByteStorage", Global::Storage(StorageDType::U8)),
    ("torch.BoolStorage", Global::Storage(StorageDType::Bool)),
];

impl Global {
    /// Looks `module.name` up on the allowlist; other torch storages and rebuild
    /// functions are unsupported, anything else is refused.
    fn find(module: &str, name: &str) -> Result<Self> {
        let dotted = format!("{module}.{name}");
        if let Some((_, global)) = ALLOWLIST.iter().find(|(allowed, _)| *allowed == dotted) {
            return Ok(*global);
        }
        if module == "torch" && name.ends_with("Storage") {
            bail!("tensors stored as {dotted} are not supported");
        }
        if module == "torch._utils" && name.starts_with("_rebuild_") {
            bail!("tensors rebuilt by {dotted} (quantized, sparse, nested or of a newer dtype) are not supported");
        }
        Err(Refusal(dotted).into())
    }

    fn name(self) -> &'static str {
        ALLOWLIST
            .iter()
            .find(|(_, global)| *global == self)
            .map_or("?", |(name, _)| name)
    }
}

/// Index of an object in [`Pickle::objs`].
type Id = usize;

/// A value built by the unpickler. Containers refer to other objects by id, so shared
/// and even cyclic references cost nothing and nothing recurses.
#[derive(Debug)]
enum Obj {
    None,
    Int(i128),
    Str(String),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorView>),
    /// A value this reader never looks into: floats, bytes, booleans, huge integers.
    Other,
}

/// Pickle opcodes (protocols 2 to 5) this unpickler understands.
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// Where training checkpoints keep the state dict.
const STATE_DICT_KEYS: [&str; 4] = ["state_dict", "model", "model_state_dict", "module"];

/// An unpickled object graph.
struct Pickle {
    objs: Vec<Obj>,
    root: Id,
    /// The element type of each storage key the persistent ids name (first one wins).
    storages: HashMap<String, StorageDType>,
}

impl Pickle {
    /// Unpickles the pickle at the start of `data`; also returns its length in bytes.
    fn parse(data: &[u8]) -> Result<(Self, usize)> {
        let mut unpickler = Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            out: Pickle {
                objs: Vec::new(),
                root: 0,
                storages: HashMap::new(),
            },
        };
        unpickler.run()?;
        Ok((unpickler.out, unpickler.pos))
    }

    fn root_obj(&self) -> &Obj {
        &self.objs[self.root]
    }

    fn int(&self, id: Id) -> Result<i128> {
        match self.objs[id] {
            Obj::Int(i) => Ok(i),
            _ => bail!("expected an integer"),
        }
    }

    fn usize(&self, id: Id) -> Result<usize> {
        let i = self.int(id)?;
        usize::try_from(i).map_err(|_| anyhow!("integer {i} is out of range"))
    }

    fn usizes(&self, id: Id) -> Result<Vec<usize>> {
        self.tuple(id)?.iter().map(|&i| self.usize(i)).collect()
    }

    fn str(&self, id: Id) -> Result<&str> {
        match &self.objs[id] {
            Obj::Str(s) => Ok(s),
            _ => bail!("expected a string"),
        }
    }

    fn tuple(&self, id: Id) -> Result<&[Id]> {
        match &self.objs[id] {
            Obj::Tuple(items) => Ok(items),
            _ => bail!("expected a tuple"),
        }
    }

    /// The strings of a list or tuple of strings.
    fn strs(&self, id: Id) -> Result<Vec<&str>> {
        match &self.objs[id] {
            Obj::List(items) | Obj::Tuple(items) => items.iter().map(|&i| self.str(i)).collect(),
            _ => bail!("expected a list"),
        }
    }

    fn dict_get(&self, dict: Id, key: &str) -> Option<Id> {
        let Obj::Dict(items) = &self.objs[dict] else {
            return None;
        };
        items
            .iter()
            .rev()
            .find(|&&(k, _)| matches!(&self.objs[k], Obj::Str(s) if s == key))
            .map(|&(_, v)| v)
    }

    /// The tensors of the root dict, or else of the first of its [`STATE_DICT_KEYS`]
    /// entries that has some.
    fn state_dict(&self) -> Result<Vec<(String, TensorView)>> {
        let nested = STATE_DICT_KEYS
            .iter()
            .map(|key| self.dict_get(self.root, key));
        std::iter::once(Some(self.root))
            .chain(nested)
            .flatten()
            .map(|dict| self.tensors_in(dict))
            .find(|tensors| !tensors.is_empty())
            .with_context(|| {
                format!(
                    "no tensors found (expected a state dict, or one under {STATE_DICT_KEYS:?})"
                )
            })
    }

    /// The entries of `dict` with a string key and a tensor value, in order.
    fn tensors_in(&self, dict: Id) -> Vec<(String, TensorView)> {
        let Obj::Dict(items) = &self.objs[dict] else {
            return Vec::new();
        };
        let mut tensors: Vec<(String, TensorView)> = Vec::new();
        let mut index = HashMap::<&String, usize>::new();
        for &(k, v) in items {
            let (Obj::Str(name), Obj::Tensor(view)) = (&self.objs[k], &self.objs[v]) else {
                continue;
            };
            match index.entry(name) {
                Entry::Occupied(e) => tensors[*e.get()].1 = (**view).clone(),
                Entry::Vacant(e) => {
                    e.insert(tensors.len());
                    tensors.push((name.clone(), (**view).clone()));
                }
            }
        }
        tensors
    }
}

/// A pickle interpreter that builds [`Obj`]s and never calls anything.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Id>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    out: Pickle,
}

impl<'a> Unpickler<'a> {
    fn run(&mut self) -> Result<()> {
        loop {
            let at = self.pos;
            match self.byte()? {
                op::STOP => {
                    self.out.root = self.pop()?;
                    return Ok(());
                }
                op::PROTO => {
                    self.byte()?;
                }
                op::FRAME => {
                    self.take(8)?;
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = Global::find(module, name)?;
                    self.push(Obj::Global(global));
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let global = Global::find(self.out.str(module)?, self.out.str(name)?)?;
                    self.push(Obj::Global(global));
                }
                op::BINPUT => {
                    let i = self.byte()?;
                    self.memo_put(i.into())?;
                }
                op::LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_put(i.into())?;
                }
                op::MEMOIZE => self.memo_put(self.memo.len() as u64)?,
                op::BINGET => {
                    let i = self.byte()?;
                    self.memo_get(i.into())?;
                }
                op::LONG_BINGET => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.memo_get(i.into())?;
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    if self.stack.len() > self.base() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::NONE => self.push(Obj::None),
                op::NEWTRUE | op::NEWFALSE => self.push(Obj::Other),
                op::BINFLOAT => {
                    self.take(8)?;
                    self.push(Obj::Other);
                }
                op::BININT => {
                    let i = i32::from_le_bytes(self.array()?);
                    self.push(Obj::Int(i.into()));
                }
                op::BININT1 => {
                    let i = self.byte()?;
                    self.push(Obj::Int(i.into()));
                }
                op::BININT2 => {
                    let i = u16::from_le_bytes(self.array()?);
                    self.push(Obj::Int(i.into()));
                }
                op::LONG1 => {
                    let len = self.byte()?;
                    let bytes = self.take(len.into())?;
                    self.push(long(bytes));
                }
                op::LONG4 => {
                    let len = u32::from_le_bytes(self.array()?);
                    let bytes = self.take(len.into())?;
                    self.push(long(bytes));
                }
                op::SHORT_BINUNICODE => {
                    let len = self.byte()?;
                    self.unicode(len.into())?;
                }
                op::BINUNICODE => {
                    let len = u32::from_le_bytes(self.array()?);
                    self.unicode(len.into())?;
                }
                op::BINUNICODE8 => {
                    let len = u64::from_le_bytes(self.array()?);
                    self.unicode(len)?;
                }
                op::SHORT_BINSTRING => {
                    let len = self.byte()?;
                    self.string(len.into())?;
                }
                op::BINSTRING => {
                    let len = u32::from_le_bytes(self.array()?);
                    self.string(len.into())?;
                }
                op::SHORT_BINBYTES => {
                    let len = self.byte()?;
                    self.take(len.into())?;
                    self.push(Obj::Other);
                }
                op::BINBYTES => {
                    let len = u32::from_le_bytes(self.array()?);
                    self.take(len.into())?;
                    self.push(Obj::Other);
                }
                op::BINBYTES8 => {
                    let len = u64::from_le_bytes(self.array()?);
                    self.take(len)?;
                    self.push(Obj::Other);
                }
                op::EMPTY_TUPLE => self.push(Obj::Tuple(Vec::new())),
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                op @ (op::TUPLE1 | op::TUPLE2 | op::TUPLE3) => {
                    let len = usize::from(op - op::TUPLE1 + 1);
                    ensure!(
                        self.stack.len() >= self.base() + len,
                        "pickle stack underflow at byte {at}"
                    );
                    let items = self.stack.split_off(self.stack.len() - len);
                    self.push(Obj::Tuple(items));
                }
                op::EMPTY_LIST => self.push(Obj::List(Vec::new())),
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                op::APPEND => {
                    let item = self.pop()?;
                    self.list_mut(at)?.push(item);
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.list_mut(at)?.extend(items);
                }
                op::EMPTY_DICT => self.push(Obj::Dict(Vec::new())),
                op::DICT => {
                    let items = pairs(self.pop_mark()?, at)?;
                    self.push(Obj::Dict(items));
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.dict_mut(at)?.push((key, value));
                }
                op::SETITEMS => {
                    let items = pairs(self.pop_mark()?, at)?;
                    self.dict_mut(at)?.extend(items);
                }
                op::REDUCE | op::NEWOBJ => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let Obj::Global(global) = self.out.objs[func] else {
                        bail!("the pickle calls a value that is not a function at byte {at}");
                    };
                    let args = self.out.tuple(args)?.to_vec();
                    let result = self.call(global, &args)?;
                    self.stack.push(result);
                }
                op::BUILD => {
                    // Sets attributes (e.g. a state dict's `_metadata`): nothing to keep.
                    self.pop()?;
                    self.top()?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self
                        .persistent_storage(pid)
                        .with_context(|| format!("persistent id at byte {at}"))?;
                    self.push(Obj::Storage(Box::new(storage)));
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at byte {at}"),
            }
        }
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let bytes = usize::try_from(len)
            .ok()
            .and_then(|len| self.data.get(self.pos..self.pos.checked_add(len)?))
            .context("unexpected end of pickle")?;
        self.pos += bytes.len();
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N as u64)?.try_into()?)
    }

    /// A newline-terminated UTF-8 line (GLOBAL's operands).
    fn line(&mut self) -> Result<&'a str> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("unexpected end of pickle")?;
        let line = self.take(len as u64 + 1)?;
        std::str::from_utf8(&line[..len]).context("a global's name is not UTF-8")
    }

    fn unicode(&mut self, len: u64) -> Result<()> {
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).context("a string is not UTF-8")?;
        self.push(Obj::Str(s.to_owned()));
        Ok(())
    }

    /// A Python 2 string: text when it is UTF-8 (torch.load decodes it so).
    fn string(&mut self, len: u64) -> Result<()> {
        let bytes = self.take(len)?;
        let obj = std::str::from_utf8(bytes).map_or(Obj::Other, |s| Obj::Str(s.to_owned()));
        self.push(obj);
        Ok(())
    }

    fn alloc(&mut self, obj: Obj) -> Id {
        self.out.objs.push(obj);
        self.out.objs.len() - 1
    }

    fn push(&mut self, obj: Obj) {
        let id = self.alloc(obj);
        self.stack.push(id);
    }

    /// Stack length below which the innermost MARK hides the stack.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn top(&self) -> Result<Id> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.base() => Ok(id),
            _ => bail!(
                "pickle stack underflow at byte {}",
                self.pos.saturating_sub(1)
            ),
        }
    }

    fn pop(&mut self) -> Result<Id> {
        let id = self.top()?;
        self.stack.pop();
        Ok(id)
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self.marks.pop().context("pickle MARK missing")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn memo_put(&mut self, index: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(index, id);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&index)
            .with_context(|| format!("pickle memo has no entry {index}"))?;
        self.stack.push(id);
        Ok(())
    }

    fn list_mut(&mut self, at: usize) -> Result<&mut Vec<Id>> {
        let top = self.top()?;
        match &mut self.out.objs[top] {
            Obj::List(items) => Ok(items),
            _ => bail!("appending to a value that is not a list at byte {at}"),
        }
    }

    fn dict_mut(&mut self, at: usize) -> Result<&mut Vec<(Id, Id)>> {
        let top = self.top()?;
        match &mut self.out.objs[top] {
            Obj::Dict(items) => Ok(items),
            _ => bail!("setting an item of a value that is not a dict at byte {at}"),
        }
    }

    /// What calling an allowlisted global builds; nothing is ever executed.
    fn call(&mut self, global: Global, args: &[Id]) -> Result<Id> {
        use Global::*;
        match (global, args) {
            (OrderedDict, []) => Ok(self.alloc(Obj::Dict(Vec::new()))),
            (RebuildTensor, &[storage, offset, size, stride])
            | (
                RebuildTensorV2,
                &[storage, offset, size, stride, _, _] | &[storage, offset, size, stride, _, _, _],
            ) => {
                let view = self.tensor(storage, offset, size, stride)?;
                Ok(self.alloc(Obj::Tensor(Box::new(view))))
            }
            (RebuildParameter, &[data, _, _]) | (RebuildParameterWithState, &[data, _, _, _]) => {
                ensure!(
                    matches!(self.out.objs[data], Obj::Tensor(_)),
                    "a parameter's data is not a tensor"
                );
                Ok(data)
            }
            (RebuildFromTypeV2, &[func, class, inner, _]) => {
                let Obj::Global(
                    func @ (RebuildTensor
                    | RebuildTensorV2
                    | RebuildParameter
                    | RebuildParameterWithState),
                ) = self.out.objs[func]
                else {
                    bail!(
                        "{} wraps something other than a tensor-rebuild function",
                        global.name()
                    );
                };
                ensure!(
                    matches!(
                        self.out.objs[class],
                        Obj::Global(TensorClass | ParameterClass)
                    ),
                    "tensor subclasses are not supported"
                );
                let inner = self.out.tuple(inner)?.to_vec();
                self.call(func, &inner)
            }
            (TensorClass | ParameterClass | Storage(_), _) => {
                Err(Refusal(global.name().to_owned()).into())
            }
            _ => bail!("unexpected arguments for {}", global.name()),
        }
    }

    fn tensor(&self, storage: Id, offset: Id, size: Id, stride: Id) -> Result<TensorView> {
        let Obj::Storage(storage) = &self.out.objs[storage] else {
            bail!("a tensor's data is not a storage");
        };
        let shape = self.out.usizes(size).context("tensor size")?;
        let stride = self.out.usizes(stride).context("tensor stride")?;
        ensure!(
            shape.len() == stride.len(),
            "a tensor has {} sizes but {} strides",
            shape.len(),
            stride.len()
        );
        let offset = self.out.usize(offset).context("tensor offset")?;
        Ok(TensorView {
            storage: (**storage).clone(),
            offset,
            shape,
            stride,
        })
    }

    /// A storage persistent id: `('storage', class, key, location, numel)`, in legacy
    /// files with a sixth element, None or `(view_key, offset, view_numel)`.
    fn persistent_storage(&mut self, pid: Id) -> Result<StorageRef> {
        let (kind, class, key, numel, view) = match *self.out.tuple(pid)? {
            [kind, class, key, _location, numel] => (kind, class, key, numel, None),
            [kind, class, key, _location, numel, view] => (kind, class, key, numel, Some(view)),
            _ => bail!("expected 5 or 6 fields"),
        };
        ensure!(self.out.str(kind)? == "storage", "not a storage");
        let Obj::Global(Global::Storage(dtype)) = self.out.objs[class] else {
            bail!("no storage class");
        };
        let key = self.out.str(key)?.to_owned();
        let window = match view {
            Some(view) if !matches!(self.out.objs[view], Obj::None) => Some(self.out.tuple(view)?),
            _ => None,
        };
        let (offset, numel) = match window {
            None => (0, self.out.usize(numel)?),
            Some(&[_view_key, offset, numel]) => (self.out.usize(offset)?, self.out.usize(numel)?),
            Some(_) => bail!("malformed view metadata"),
        };
        self.out.storages.entry(key.clone()).or_insert(dtype);
        Ok(StorageRef {
            key,
            dtype,
            offset,
            numel,
        })
    }
}

/// A LONG1/LONG4 integer (little-endian two's complement); beyond 128 bits, opaque.
fn long(bytes: &[u8]) -> Obj {
    if bytes.len() > 16 {
        return Obj::Other;
    }
    let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    Obj::Int(i128::from_le_bytes(buf))
}

/// Key-value pairs from the flat items of DICT/SETITEMS.
fn pairs(items: Vec<Id>, at: usize) -> Result<Vec<(Id, Id)>> {
    ensure!(
        items.len().is_multiple_of(2),
        "a dict has a key without a value at byte {at}"
    );
    Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pickle"
        ))
        .join(name)
    }

    fn values(tensor: &RawTensor) -> Vec<f64> {
        let size = tensor.dtype.size_in_bytes();
        tensor
            .data
            .chunks_exact(size)
            .map(|b| match tensor.dtype {
                StorageDType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
                StorageDType::F32 => f32::from_le_bytes(b.try_into().unwrap()).into(),
                StorageDType::F16 => half::f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                StorageDType::BF16 => half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
                StorageDType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
                StorageDType::I32 => i32::from_le_bytes(b.try_into().unwrap()).into(),
                StorageDType::I16 => i16::from_le_bytes(b.try_into().unwrap()).into(),
                StorageDType::I8 => i8::from_le_bytes(b.try_into().unwrap()).into(),
                StorageDType::U8 | StorageDType::Bool => b[0].into(),
            })
            .collect()
    }

    fn torch_name(dtype: StorageDType) -> &'static str {
        match dtype {
            StorageDType::F64 => "float64",
            StorageDType::F32 => "float32",
            StorageDType::F16 => "float16",
            StorageDType::BF16 => "bfloat16",
            StorageDType::I64 => "int64",
            StorageDType::I32 => "int32",
            StorageDType::I16 => "int16",
            StorageDType::I8 => "int8",
            StorageDType::U8 => "uint8",
            StorageDType::Bool => "bool",
        }
    }

    fn error(path: &Path) -> String {
        format!("{:#}", read_pytorch(path).unwrap_err())
    }

    fn refused(pickle: &[u8]) -> String {
        let err = Pickle::parse(pickle)
            .err()
            .expect("the pickle should be refused");
        err.root_cause()
            .downcast_ref::<Refusal>()
            .expect("a refusal")
            .0
            .clone()
    }

    fn parse_error(pickle: &[u8]) -> String {
        format!(
            "{:#}",
            Pickle::parse(pickle)
                .err()
                .expect("the pickle should not parse")
        )
    }

    #[test]
    fn reads_fixtures_as_torch_wrote_them() {
        let expected = std::fs::read_to_string(fixture("expected.json")).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
        for (file, want) in expected.as_object().unwrap() {
            let got = read_pytorch(&fixture(file)).unwrap_or_else(|e| panic!("{e:#}"));
            let want = want.as_array().unwrap();
            let names = |ts: &[RawTensor]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
            let want_names: Vec<_> = want
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names(&got), want_names, "{file}");
            for (tensor, want) in got.iter().zip(want) {
                let context = format!("{file}: {}", tensor.name);
                assert_eq!(torch_name(tensor.dtype), want["dtype"], "{context}");
                let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
                assert_eq!(tensor.shape, shape, "{context}");
                let want_values: Vec<f64> = want["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(values(tensor), want_values, "{context}");
            }
        }
    }

    #[test]
    fn refuses_pickles_that_call_anything_else() {
        for file in ["evil.pkl", "evil_zip.pt"] {
            let path = fixture(file);
            assert_eq!(
                error(&path),
                format!(
                    "refusing to load {}: the pickle asks to call posix.system, \
                     which is not a tensor-rebuild function",
                    path.display()
                )
            );
        }
        assert!(!Path::new("/tmp/vit-pwned").exists());

        assert_eq!(refused(b"\x80\x02cbuiltins\neval\n."), "builtins.eval");
        assert_eq!(
            refused(b"\x80\x02c__builtin__\ngetattr\n."),
            "__builtin__.getattr"
        );
        assert_eq!(
            refused(b"\x80\x04\x8c\x0asubprocess\x8c\x05Popen\x93."),
            "subprocess.Popen"
        );
        // Allowlisted classes are data, never called.
        assert_eq!(
            refused(b"\x80\x02ctorch\nFloatStorage\n)R."),
            "torch.FloatStorage"
        );
        assert_eq!(refused(b"\x80\x02ctorch\nTensor\n)\x81."), "torch.Tensor");
    }

    #[test]
    fn reports_broken_files_in_one_line() {
        let truncated = fixture("truncated.pt");
        let message = error(&truncated);
        assert!(
            message.starts_with(&format!(
                "{}: truncated or corrupt zip archive (",
                truncated.display()
            )),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");

        let short = fixture("short_storage.pt");
        assert_eq!(
            error(&short),
            format!(
                "{}: tensor 'f32': storage '0' has 5 elements but the view needs 6",
                short.display()
            )
        );

        let json = fixture("expected.json");
        assert_eq!(
            error(&json),
            format!(
                "{}: not a PyTorch checkpoint (neither a zip archive nor a pickle)",
                json.display()
            )
        );
        assert!(error(&fixture("missing.pt"))
            .starts_with(&format!("{}: ", fixture("missing.pt").display())));
    }

    #[test]
    fn rejects_malformed_pickles() {
        let cases: [(&[u8], &str); 11] = [
            (b"", "unexpected end of pickle"),
            (b"\x80\x02X\xff\xff\xff\x7f", "unexpected end of pickle"),
            (
                b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
                "unexpected end of pickle",
            ),
            (b"\x80\x02cposix", "unexpected end of pickle"),
            (b"\x80\x02.", "pickle stack underflow at byte 2"),
            (b"\x80\x02K\x01(.", "pickle stack underflow at byte 5"),
            (b"\x80\x02h\x05.", "pickle memo has no entry 5"),
            (b"\x80\x02I1\n.", "unsupported pickle opcode 0x49 at byte 2"),
            (
                b"\x80\x02K\x01K\x02a.",
                "appending to a value that is not a list at byte 6",
            ),
            (
                b"\x80\x02(K\x01d.",
                "a dict has a key without a value at byte 5",
            ),
            (
                b"\x80\x02ctorch._utils\n_rebuild_qtensor\n.",
                "tensors rebuilt by torch._utils._rebuild_qtensor",
            ),
        ];
        for (pickle, message) in cases {
            let error = parse_error(pickle);
            assert!(error.starts_with(message), "{pickle:?}: {error}");
        }
    }

    #[test]
    fn deep_and_cyclic_pickles_are_harmless() {
        let mut deep = b"\x80\x02)".to_vec();
        deep.extend(std::iter::repeat_n(op::TUPLE1, 1_000_000));
        deep.push(op::STOP);
        let (pickle, len) = Pickle::parse(&deep).unwrap();
        assert_eq!(len, deep.len());
        assert!(matches!(pickle.root_obj(), Obj::Tuple(_)));

        // A list that contains itself.
        let (pickle, _) = Pickle::parse(b"\x80\x02]q\x00h\x00a.").unwrap();
        let error = format!("{:#}", pickle.state_dict().unwrap_err());
        assert!(error.starts_with("no tensors found"), "{error}");
    }

    /// `data` with one byte replaced, for every position and a few replacements.
    fn corruptions(data: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
        (0..data.len()).flat_map(move |pos| {
            [0x00, 0xff, data[pos] ^ 0x01, data[pos].wrapping_add(0x40)].map(|byte| {
                let mut corrupt = data.to_vec();
                corrupt[pos] = byte;
                corrupt
            })
        })
    }

    #[test]
    fn corrupt_pickles_fail_cleanly() {
        let file = File::open(fixture("state_dict.pt")).unwrap();
        let mut archive = ZipArchive::new(file).unwrap();
        let pkl = read_entry(&mut archive, "state_dict/data.pkl", u64::MAX).unwrap();
        assert_eq!(
            Pickle::parse(&pkl).unwrap().0.state_dict().unwrap().len(),
            9
        );
        for len in 0..pkl.len() {
            assert_eq!(
                parse_error(&pkl[..len]),
                "unexpected end of pickle",
                "{len}"
            );
        }
        for corrupt in corruptions(&pkl) {
            if let Ok((pickle, _)) = Pickle::parse(&corrupt) {
                let _ = pickle.state_dict();
            }
        }
    }

    #[test]
    fn corrupt_files_never_panic() {
        let legacy = std::fs::read(fixture("legacy.pt")).unwrap();
        assert!(read_legacy(&legacy).is_ok());
        for len in 0..legacy.len() {
            assert!(read_legacy(&legacy[..len]).is_err());
        }
        for corrupt in corruptions(&legacy) {
            let _ = read_legacy(&corrupt);
        }
        let zip = std::fs::read(fixture("state_dict.pt")).unwrap();
        for len in 0..zip.len() {
            assert!(read_zip(Cursor::new(&zip[..len]), len as u64).is_err());
        }
    }

    fn view(numel: usize, shape: &[usize], stride: &[usize], offset: usize) -> TensorView {
        TensorView {
            storage: StorageRef {
                key: "k".into(),
                dtype: StorageDType::I16,
                offset: 1,
                numel,
            },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn gathers_strided_and_broadcast_views() {
        // Root elements 0..8 (i16); the storage is elements 1..7 of it.
        let root: Vec<u8> = (0..8i16).flat_map(i16::to_le_bytes).collect();
        let elements = |bytes: Vec<u8>| {
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect::<Vec<_>>()
        };
        let gather = |v: TensorView| -> Result<Vec<i16>> {
            let numel = v.check("t", root.len())?;
            Ok(elements(v.gather(&root, numel)))
        };
        assert_eq!(
            gather(view(6, &[2, 3], &[3, 1], 0)).unwrap(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            gather(view(6, &[3, 2], &[1, 3], 0)).unwrap(),
            [1, 4, 2, 5, 3, 6]
        );
        assert_eq!(gather(view(6, &[2, 2], &[1, 2], 1)).unwrap(), [2, 4, 3, 5]);
        assert_eq!(
            gather(view(6, &[2, 3], &[0, 1], 3)).unwrap(),
            [4, 5, 6, 4, 5, 6]
        );
        assert!(gather(view(6, &[0, 5], &[99, 99], 99)).unwrap().is_empty());

        let err = |v: TensorView| format!("{:#}", gather(v).unwrap_err());
        assert_eq!(
            err(view(6, &[7], &[1], 0)),
            "tensor 't': storage 'k' has 6 elements but the view needs 7"
        );
        assert_eq!(
            err(view(9, &[8], &[1], 0)),
            "tensor 't': storage 'k' has 7 elements but the view needs 8"
        );
        assert_eq!(
            err(view(6, &[3], &[1], usize::MAX)),
            "tensor 't': strides [1] are too large"
        );
        assert_eq!(
            err(view(6, &[usize::MAX, 2], &[0, 0], 0)),
            "tensor 't': shape [18446744073709551615, 2] is too large"
        );
        assert!(err(view(6, &[1 << 30], &[0], 0))
            .starts_with("tensor 't': a broadcast view of 1073741824 elements"));
    }
}
