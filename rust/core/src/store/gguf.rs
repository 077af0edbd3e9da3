//! GGUF files (llama.cpp's model format, versions 2 and 3): a bounds-checked reader of the
//! header (metadata key-value pairs of every value type, tensor infos, alignment) and adoption
//! of the tensors into the store in place, like `load_safetensors`: only the header is read; each
//! tensor's bytes stay in the file and are read with `pread` when asked.
//!
//! Layout (all little-endian): `"GGUF"`, `u32` version, `u64` tensor count, `u64` metadata count,
//! the metadata (`string key, u32 value type, value`), the tensor infos (`string name, u32 n_dims,
//! u64 ne[n_dims], u32 ggml type, u64 offset`), padding to the alignment (`general.alignment`,
//! default 32), then the data section; each tensor's offset is relative to the data section and a
//! multiple of the alignment. A string is `u64 length, bytes`; an array `u32 type, u64 count,
//! values`.
//!
//! Every count and length is checked against the bytes left in the file before anything is
//! allocated from it, so a corrupt or hostile header is a [`CoreError::Corrupt`] naming the
//! problem, never a huge allocation. Tensor types tierflow computes with (F32, F16, BF16, Q8_0,
//! Q4_0) are adopted as they are; the others are listed by [`read_gguf`] but refused by
//! [`Store::load_gguf`] with a [`CoreError::DType`] naming the type.

use super::dtype::DType;
use super::fileio::FileLoc;
use super::{names, Store};
use crate::{CoreError, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's maximum number of dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting depth allowed for arrays of arrays (GGUF files use at most one level).
const MAX_ARRAY_DEPTH: u32 = 8;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type name (as [`Value::type_name`]) and elements.
    Array(&'static str, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The GGUF value type names, indexed by type id.
const VALUE_TYPES: [&str; 13] =
    ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "array", "u64", "i64", "f64"];

impl Value {
    /// The value's GGUF type name (`u32`, `str`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::Array(..) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// A ggml tensor type: id, name, elements per block, bytes per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block: u64,
    pub block_bytes: u64,
}

/// Every ggml type a GGUF file may hold (sizes from ggml's type traits), so that tensors of types
/// tierflow does not compute with can still be listed and bounds-checked.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().find(|t| t.0 == id).map(|&(id, name, block, block_bytes)| GgmlType {
            id,
            name,
            block,
            block_bytes,
        })
    }

    /// The store dtype of a tensor of this type, for the types tierflow computes with: float
    /// types as themselves, Q8_0 / Q4_0 as the `block:q8_0` / `block:q4_0` formats (ggml's block
    /// layouts are tierflow's).
    pub fn store_dtype(&self) -> Option<DType> {
        Some(match self.name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "Q8_0" => DType::Block("q8_0".into()),
            "Q4_0" => DType::Block("q4_0".into()),
            _ => return None,
        })
    }
}

/// One tensor of a GGUF file.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub ty: GgmlType,
    /// ggml's `ne`: `ne[0]` is the contiguous (innermost) dimension.
    pub ne: Vec<u64>,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    pub nbytes: u64,
}

impl GgufTensor {
    /// The store dtype and shape: float tensors as the NumPy array of their bytes (`ne`
    /// reversed, so a weight `ne = [K, N]` is `(N, K)`, PyTorch's `(out, in)`); a block tensor
    /// as the `(K, N)` operand `x @ W` (N rows of K elements, blocks along K), tierflow's
    /// QuantizedTensor layout. `None` for types tierflow does not compute with.
    pub fn store_layout(&self) -> Option<Result<(DType, Vec<usize>)>> {
        let dtype = self.ty.store_dtype()?;
        let dims: Vec<usize> = self.ne.iter().map(|&d| d as usize).collect();
        Some(match dtype {
            DType::Block(_) => {
                if dims.len() > 2 {
                    Err(CoreError::Shape(format!(
                        "tensor {:?}: a {} tensor of {} dimensions (ne = {:?}); block tensors of at most 2 are supported",
                        self.name,
                        self.ty.name,
                        dims.len(),
                        self.ne
                    )))
                } else {
                    Ok((dtype, vec![dims[0], dims.get(1).copied().unwrap_or(1)]))
                }
            }
            _ => Ok((dtype, dims.into_iter().rev().collect())),
        })
    }
}

/// A parsed and validated GGUF header.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensor>,
    pub file_len: u64,
    pub mtime_ns: i64,
}

impl GgufFile {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A cursor over the file that reads through a buffer with `pread` and checks every read
/// against the file's length first.
struct Cursor<'a> {
    f: &'a File,
    path: &'a Path,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

const BUF: usize = 1 << 16;

impl<'a> Cursor<'a> {
    fn corrupt(&self, msg: impl Into<String>) -> CoreError {
        CoreError::corrupt(self.path, None, msg)
    }

    fn left(&self) -> u64 {
        self.len - self.pos
    }

    /// Fail unless `n` more bytes exist (`what` names what was being read).
    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.left() {
            return Err(self.corrupt(format!(
                "truncated: {what} at offset {} needs {n} bytes but the file ({} bytes) has {} left",
                self.pos,
                self.len,
                self.left()
            )));
        }
        Ok(())
    }

    /// Read exactly `out.len()` bytes (the caller checked they exist).
    fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            let in_buf =
                self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
            if !in_buf {
                let n = (self.len - self.pos).min(BUF as u64) as usize;
                self.buf.resize(n, 0);
                self.f.read_exact_at(&mut self.buf, self.pos).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        self.corrupt("the file shrank while its header was read")
                    } else {
                        CoreError::io(self.path, e)
                    }
                })?;
                self.buf_start = self.pos;
            }
            let at = (self.pos - self.buf_start) as usize;
            let n = (self.buf.len() - at).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[at..at + n]);
            done += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A string: its length checked against the bytes left before the allocation.
    fn string(&mut self, what: &str) -> Result<Vec<u8>> {
        let n = self.u64(what)?;
        self.need(n, what)?;
        let mut s = vec![0u8; n as usize];
        self.fill(&mut s)?;
        Ok(s)
    }

    fn utf8(&mut self, what: &str) -> Result<String> {
        let s = self.string(what)?;
        String::from_utf8(s).map_err(|_| self.corrupt(format!("{what} is not valid UTF-8")))
    }

    /// A count of items of at least `min_size` bytes each: fail unless that many could fit in
    /// the bytes left.
    fn count(&mut self, what: &str, min_size: u64) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n.checked_mul(min_size).map_or(true, |b| b > self.left()) {
            return Err(self.corrupt(format!(
                "{what} at offset {at} is {n}, more than the {} bytes left in the file could hold",
                self.left()
            )));
        }
        Ok(n)
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>(key)?[0]),
            1 => Value::I8(self.bytes::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.bytes(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => match self.bytes::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("key {key:?}: bool value {b} is not 0 or 1"))),
            },
            8 => Value::Str(String::from_utf8_lossy(&self.string(key)?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!("key {key:?}: arrays nested too deep")));
                }
                let et = self.u32(key)?;
                let min = value_min_size(et).ok_or_else(|| {
                    self.corrupt(format!("key {key:?}: unknown array element type {et}"))
                })?;
                let n = self.count(&format!("element count of array {key:?}"), min)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(VALUE_TYPES[et as usize], items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(key)?)),
            t => return Err(self.corrupt(format!("key {key:?}: unknown value type {t}"))),
        })
    }
}

/// The fewest bytes a value of type `ty` takes (None: no such type).
fn value_min_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Read and validate the header of the GGUF file at `path`: magic, version (2 or 3), metadata,
/// tensor infos (at most 4 dimensions, known ggml types, sizes without overflow, rows of whole
/// blocks, unique names), alignment (a power of two), and every tensor's data aligned, inside the
/// file and overlapping no other. Only the header is read.
pub fn read_gguf(path: &Path) -> Result<GgufFile> {
    let f = File::open(path).map_err(|e| CoreError::io(path, e))?;
    let meta = f.metadata().map_err(|e| CoreError::io(path, e))?;
    if !meta.is_file() {
        return Err(CoreError::corrupt(path, None, "not a regular file"));
    }
    let mut c =
        Cursor { f: &f, path, len: meta.len(), pos: 0, buf: Vec::new(), buf_start: u64::MAX };
    let magic: [u8; 4] = c.bytes("the magic number")?;
    if &magic != MAGIC {
        return Err(c.corrupt(format!(
            "not a GGUF file: the magic number is {magic:?}, expected {:?} (\"GGUF\")",
            MAGIC
        )));
    }
    let version = c.u32("the version")?;
    if version != 2 && version != 3 {
        return Err(c.corrupt(format!(
            "GGUF version {version} is not supported (tierflow reads versions 2 and 3)"
        )));
    }
    // a tensor info takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes, a
    // metadata pair at least 8 (key) + 4 (type) + 1 (value)
    let n_tensors = c.count("the tensor count", 24)?;
    let n_kv = c.count("the metadata count", 13)?;
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = BTreeSet::new();
    for _ in 0..n_kv {
        let key = c.utf8("a metadata key")?;
        let ty = c.u32(&format!("the type of key {key:?}"))?;
        let v = c.value(ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(c.corrupt(format!("metadata key {key:?} appears twice")));
        }
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(
                    c.corrupt(format!("general.alignment is {v:?}: it must be a power of two"))
                )
            }
        },
    };
    let mut tensors: Vec<GgufTensor> = Vec::with_capacity(n_tensors as usize);
    let mut names = BTreeSet::new();
    for _ in 0..n_tensors {
        let name = c.utf8("a tensor name")?;
        let bad = |c: &Cursor, msg: String| CoreError::corrupt(c.path, Some(&name), msg);
        let n_dims = c.u32("a tensor's dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(&c, format!("{n_dims} dimensions (GGUF tensors have 1 to 4)")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64("a tensor dimension")?);
        }
        let id = c.u32("a tensor type")?;
        let ty = GgmlType::from_id(id)
            .ok_or_else(|| bad(&c, format!("unknown ggml tensor type id {id}")))?;
        let rel = c.u64("a tensor offset")?;
        let n_el = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= c.len.saturating_mul(ty.block))
            .ok_or_else(|| bad(&c, format!("dimensions {ne:?} are absurdly large")))?;
        if ne[0] % ty.block != 0 {
            return Err(bad(
                &c,
                format!(
                    "{} rows of {} elements are not whole blocks of {}",
                    ty.name, ne[0], ty.block
                ),
            ));
        }
        let nbytes = (n_el / ty.block) * ty.block_bytes;
        if rel % alignment != 0 {
            return Err(bad(
                &c,
                format!("data offset {rel} is not a multiple of the alignment {alignment}"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(bad(&c, "a second tensor of this name".into()));
        }
        tensors.push(GgufTensor { name, ty, ne, offset: rel, nbytes });
    }
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    if data_offset > c.len && !tensors.is_empty() {
        return Err(c.corrupt(format!(
            "truncated: the data section starts at {data_offset}, past the end of the file ({} bytes)",
            c.len
        )));
    }
    let data_len = c.len.saturating_sub(data_offset);
    for t in &mut tensors {
        if t.offset.checked_add(t.nbytes).map_or(true, |e| e > data_len) {
            return Err(CoreError::corrupt(
                path,
                Some(&t.name),
                format!(
                    "data [{}, +{}) lies beyond the end of the file (the data section has {data_len} bytes)",
                    t.offset, t.nbytes
                ),
            ));
        }
        t.offset += data_offset;
    }
    let mut order: Vec<&GgufTensor> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.nbytes));
    for w in order.windows(2) {
        if w[1].offset < w[0].offset + w[0].nbytes {
            return Err(CoreError::corrupt(
                path,
                Some(&w[1].name),
                format!("data overlaps tensor {:?}", w[0].name),
            ));
        }
    }
    let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
    Ok(GgufFile {
        path: path.to_owned(),
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        file_len: c.len,
        mtime_ns,
    })
}

impl Store {
    /// Adopt the tensors of the GGUF file `path` into file tier `tier` (default: home) in place,
    /// as `prefix + name` (`rename` maps a GGUF tensor name to another name first). F32 / F16 /
    /// BF16 tensors become arrays of their bytes (`ne` reversed), Q8_0 / Q4_0 tensors the
    /// `block:q8_0` / `block:q4_0` operands of shape `(ne[0], ne[1])`. All or nothing: a tensor
    /// of another type is a [`CoreError::DType`] naming it and its type. Returns the new names.
    pub fn load_gguf(
        &self,
        path: &Path,
        tier: Option<usize>,
        prefix: &str,
        overwrite: bool,
        rename: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        let file = std::path::absolute(path).map_err(|e| CoreError::io(path, e))?;
        let g = read_gguf(&file)?;
        let mut found = Vec::with_capacity(g.tensors.len());
        for t in &g.tensors {
            let (dtype, shape) = t.store_layout().ok_or_else(|| {
                CoreError::DType(format!(
                    "tensor {:?} in {} has GGUF type {}, which tierflow does not support (supported: F32, F16, BF16, Q8_0, Q4_0)",
                    t.name,
                    file.display(),
                    t.ty.name
                ))
            })??;
            let name = format!("{prefix}{}", rename.get(&t.name).unwrap_or(&t.name));
            names::validate(&name)?;
            let loc = FileLoc {
                path: file.clone(),
                offset: t.offset,
                file_len: g.file_len,
                crc32: None,
                mtime_ns: Some(g.mtime_ns),
                adopted: true,
            };
            found.push((name, dtype, shape, loc, t.nbytes));
        }
        self.adopt(tier, found, overwrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }

    /// A valid file: two metadata pairs (one an array of strings), one F32 tensor 32 x 2.
    fn valid() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "b");
        s(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend([0u8; 256]);
        b
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        let dir = std::env::temp_dir().join(format!("tierflow-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{:x}.gguf", crc32fast::hash(bytes)));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        let r = read_gguf(&p);
        let _ = std::fs::remove_file(&p);
        r
    }

    fn msg(r: Result<GgufFile>) -> String {
        match r {
            Err(e @ CoreError::Corrupt { .. }) => e.to_string(),
            other => panic!("expected a corrupt-file error, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_valid_file() {
        let g = parse(&valid()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get("general.architecture"), Some(&Value::Str("llama".into())));
        assert_eq!(
            g.get("tokenizer.ggml.tokens"),
            Some(&Value::Array("str", vec![Value::Str("a".into()), Value::Str("b".into())]))
        );
        assert_eq!(g.tensors[0].ne, vec![32, 2]);
        assert_eq!(g.tensors[0].nbytes, 256);
        assert_eq!(g.tensors[0].offset, g.data_offset);
        assert_eq!(g.data_offset % 32, 0);
    }

    #[test]
    fn absurd_counts_fail_before_allocating() {
        let mut b = valid();
        b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(msg(parse(&b)).contains("tensor count"));
        let mut b = valid();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(msg(parse(&b)).contains("metadata count"));
        // the first key's length
        let mut b = valid();
        b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(msg(parse(&b)).contains("truncated"));
        // the array's element count (after key, type, string value, key, type 9, element type)
        let at = 24 + 8 + 20 + 4 + 8 + 5 + 8 + 21 + 4 + 4;
        let mut b = valid();
        assert_eq!(u64::from_le_bytes(b[at..at + 8].try_into().unwrap()), 2);
        b[at..at + 8].copy_from_slice(&(1u64 << 61).to_le_bytes());
        assert!(msg(parse(&b)).contains("element count"));
    }

    #[test]
    fn bad_headers_are_named() {
        let mut b = valid();
        b[0] = b'X';
        assert!(msg(parse(&b)).contains("magic"));
        let mut b = valid();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(msg(parse(&b)).contains("version 1"));
        for cut in [0, 3, 7, 20, 40, 90, 130, 160] {
            let m = msg(parse(&valid()[..cut]));
            assert!(m.contains("truncated") || m.contains("bytes left"), "cut at {cut}: {m}");
        }
        let v = valid();
        let cut = v.len() - 1;
        assert!(msg(parse(&v[..cut])).contains("beyond the end"));
    }
}
