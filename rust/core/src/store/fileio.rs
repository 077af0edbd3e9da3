//! Files of the file tiers: safetensors written atomically, headers validated, data read with
//! `pread` (never `mmap`, so a file truncated by someone else is an error, not a SIGBUS).

use super::dtype::DType;
use crate::{CoreError, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Piece of a verified read: read, then checksummed while it is in L2.
const VERIFY_PIECE: usize = 256 << 10;

/// Largest chunk of parallel reads and checksums (each chunk is one `pread`).
pub const READ_CHUNK: usize = 8 << 20;

/// Chunk size for a read of `len` bytes: about four chunks per worker thread, so the threads
/// stay balanced on mid-sized tensors, between 512 KiB and [`READ_CHUNK`], a multiple of 64 KiB.
fn chunk_for(len: usize) -> usize {
    let per = len / (4 * crate::pool::num_threads()).max(1);
    (per.clamp(512 << 10, READ_CHUNK) >> 16) << 16
}

/// Where one tensor's bytes are in a file, and what the file looked like when they were written
/// or adopted (to detect a file changed behind the store's back).
#[derive(Clone, Debug, PartialEq)]
pub struct FileLoc {
    pub path: PathBuf,
    /// Absolute offset of the tensor's first byte in the file.
    pub offset: u64,
    /// Expected total file length.
    pub file_len: u64,
    /// CRC-32 of the tensor's bytes (absent for adopted files until known).
    pub crc32: Option<u32>,
    /// Modification time (ns since the epoch) of adopted files.
    pub mtime_ns: Option<i64>,
    /// Adopted files belong to the user: the store never writes or deletes them.
    pub adopted: bool,
}

/// One tensor of a safetensors header.
#[derive(Clone, Debug)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// A parsed and validated safetensors header.
#[derive(Clone, Debug)]
pub struct Header {
    pub tensors: Vec<HeaderTensor>,
    pub metadata: BTreeMap<String, String>,
    pub file_len: u64,
    pub mtime_ns: i64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoreError + '_ {
    move |e| CoreError::io(path, e)
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

/// Read and validate a safetensors header: the length word, JSON, dtypes, shapes against byte
/// ranges, ranges inside the file and neither overlapping nor leaving gaps (the `safetensors`
/// crate's validation). Only the header pages are touched.
pub fn read_header(path: &Path) -> Result<Header> {
    let f = File::open(path).map_err(io(path))?;
    let meta = f.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(CoreError::corrupt(path, None, "not a regular file"));
    }
    let file_len = meta.len();
    if file_len < 8 {
        return Err(CoreError::corrupt(
            path,
            None,
            format!("truncated: {file_len} bytes, a safetensors file has at least 8"),
        ));
    }
    let mut word = [0u8; 8];
    f.read_exact_at(&mut word, 0).map_err(io(path))?;
    let n = u64::from_le_bytes(word);
    if n > file_len - 8 {
        return Err(CoreError::corrupt(
            path,
            None,
            format!("header length {n} is larger than the file ({file_len} bytes)"),
        ));
    }
    if n > 100 << 20 {
        return Err(CoreError::corrupt(path, None, format!("header length {n} exceeds 100 MiB")));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact_at(&mut head, 8).map_err(io(path))?;
    let json: serde_json::Value = serde_json::from_slice(&head)
        .map_err(|e| CoreError::corrupt(path, None, format!("invalid JSON header: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| CoreError::corrupt(path, None, "header is not a JSON object"))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (k, v) in obj {
        if k == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (mk, mv) in m {
                    if let Some(s) = mv.as_str() {
                        metadata.insert(mk.clone(), s.to_owned());
                    }
                }
            }
            continue;
        }
        let info: safetensors::tensor::TensorInfo = serde_json::from_value(v.clone())
            .map_err(|e| CoreError::corrupt(path, Some(k), format!("invalid tensor entry: {e}")))?;
        let (b, e) = info.data_offsets;
        if b > e || e as u64 > data_len {
            return Err(CoreError::corrupt(
                path,
                Some(k),
                format!(
                    "data offsets [{b}, {e}) out of range: the data section has {data_len} bytes"
                ),
            ));
        }
        let bits = info.dtype.bitsize();
        let mut want: Option<usize> = Some(bits);
        for &d in &info.shape {
            want = want.and_then(|w| w.checked_mul(d));
        }
        let want = want.map(|w| w.div_ceil(8));
        if want != Some(e - b) {
            return Err(CoreError::corrupt(
                path,
                Some(k),
                format!(
                    "{:?} x {:?} needs {want:?} bytes but offsets give {}",
                    info.dtype,
                    info.shape,
                    e - b
                ),
            ));
        }
        tensors.push(HeaderTensor {
            name: k.clone(),
            dtype: info.dtype,
            shape: info.shape,
            start: data_start + b as u64,
            end: data_start + e as u64,
        });
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    for w in tensors.windows(2) {
        if w[1].start < w[0].end {
            return Err(CoreError::corrupt(
                path,
                Some(&w[1].name),
                format!("data overlaps tensor {:?}", w[0].name),
            ));
        }
    }
    Ok(Header { tensors, metadata, file_len, mtime_ns: mtime_ns(&meta) })
}

fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(io(dir))?;
    d.sync_all().map_err(io(dir))
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder. On error nothing is left behind and an old `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(CoreError::io(path, e));
    }
    fsync_dir(dir)
}

/// The header of a one-tensor safetensors file holding `name`.
fn one_tensor_header(name: &str, dtype: &DType, shape: &[usize], nbytes: usize) -> Vec<u8> {
    let st_dtype = dtype.to_safetensors();
    let st_shape: Vec<usize> = match dtype {
        DType::Block(_) => vec![nbytes],
        _ => shape.to_vec(),
    };
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    meta.insert("tierflow.dtype".into(), dtype.name().into());
    meta.insert("tierflow.shape".into(), serde_json::to_string(shape).unwrap_or_default().into());
    let mut obj = serde_json::Map::new();
    obj.insert("__metadata__".into(), serde_json::Value::Object(meta));
    obj.insert(
        name.to_owned(),
        serde_json::json!({"dtype": format!("{st_dtype:?}"), "shape": st_shape, "data_offsets": [0, nbytes]}),
    );
    let mut h = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap_or_default();
    while (h.len() + 8) % 64 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out
}

/// CRC-32 of `data`, computed in parallel chunks on the tierflow pool.
pub fn crc32_par(data: &[u8]) -> u32 {
    if data.len() <= READ_CHUNK {
        return crc32fast::hash(data);
    }
    let parts: Vec<crc32fast::Hasher> = crate::pool::install(|| {
        data.par_chunks(READ_CHUNK)
            .map(|c| {
                let mut h = crc32fast::Hasher::new();
                h.update(c);
                h
            })
            .collect()
    });
    let mut it = parts.into_iter();
    let mut acc = it.next().unwrap_or_default();
    for h in it {
        acc.combine(&h);
    }
    acc.finalize()
}

/// Write one tensor as a safetensors file (atomically) and return where its bytes are.
pub fn write_tensor_file(
    path: &Path,
    name: &str,
    dtype: &DType,
    shape: &[usize],
    data: &[u8],
) -> Result<FileLoc> {
    let header = one_tensor_header(name, dtype, shape, data.len());
    let crc = crc32_par(data);
    write_atomic(path, |f| {
        f.write_all(&header)?;
        f.write_all(data)
    })?;
    Ok(FileLoc {
        path: path.to_owned(),
        offset: header.len() as u64,
        file_len: (header.len() + data.len()) as u64,
        crc32: Some(crc),
        mtime_ns: None,
        adopted: false,
    })
}

/// Tensors whose CRC-32 this process has checked, with the file's (mtime, length) at the time:
/// a later whole-tensor read of the unchanged file skips the CRC (a writer changes the mtime,
/// so a file modified since is checked again). Keyed by (file, offset).
static VERIFIED: parking_lot::Mutex<Option<std::collections::HashMap<(PathBuf, u64), (i64, u64)>>> =
    parking_lot::Mutex::new(None);

fn verified(loc: &FileLoc, mtime: i64) -> bool {
    VERIFIED.lock().as_ref().and_then(|m| m.get(&(loc.path.clone(), loc.offset)).copied())
        == Some((mtime, loc.file_len))
}

fn mark_verified(loc: &FileLoc, mtime: i64) {
    VERIFIED
        .lock()
        .get_or_insert_with(Default::default)
        .insert((loc.path.clone(), loc.offset), (mtime, loc.file_len));
}

/// Check that the file at `loc` still looks as it did: size (and, for adopted files, mtime).
/// Returns its mtime.
fn check_unchanged(f: &File, loc: &FileLoc, tensor: &str) -> Result<i64> {
    let m = f.metadata().map_err(io(&loc.path))?;
    if m.len() != loc.file_len {
        return Err(CoreError::corrupt(
            &loc.path,
            Some(tensor),
            format!(
                "file changed on disk: it has {} bytes, {} were expected (truncated or rewritten)",
                m.len(),
                loc.file_len
            ),
        ));
    }
    if let Some(t) = loc.mtime_ns {
        if mtime_ns(&m) != t {
            return Err(CoreError::corrupt(
                &loc.path,
                Some(tensor),
                "file was modified on disk after the store adopted it",
            ));
        }
    }
    Ok(mtime_ns(&m))
}

/// Read bytes `[start, start + out.len())` of the tensor at `loc` into `out` (parallel chunks).
/// When `verify` and the tensor's CRC is known and the whole tensor is read, check it.
pub fn read_into(
    loc: &FileLoc,
    tensor: &str,
    start: u64,
    out: &mut [u8],
    verify: bool,
) -> Result<Option<u32>> {
    let f = File::open(&loc.path).map_err(io(&loc.path))?;
    let mtime = check_unchanged(&f, loc, tensor)?;
    let whole = start == 0 && loc.crc32.is_some();
    let verify = verify && !(whole && verified(loc, mtime));
    let base = loc.offset + start;
    if base + out.len() as u64 > loc.file_len {
        return Err(CoreError::corrupt(&loc.path, Some(tensor), "read past the end of the file"));
    }
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CoreError::corrupt(
                &loc.path,
                Some(tensor),
                "file is shorter than its header says (truncated)",
            )
        } else {
            CoreError::io(&loc.path, e)
        }
    };
    let chunk = chunk_for(out.len());
    let read_chunk = |(i, c): (usize, &mut [u8])| -> Result<crc32fast::Hasher> {
        let mut h = crc32fast::Hasher::new();
        let at = base + (i * chunk) as u64;
        if !verify {
            f.read_exact_at(c, at).map_err(eof)?;
            return Ok(h);
        }
        // Read in pieces that fit in L2 and checksum each while it is still there: the
        // CRC then costs no second trip through memory.
        for (j, piece) in c.chunks_mut(VERIFY_PIECE).enumerate() {
            f.read_exact_at(piece, at + (j * VERIFY_PIECE) as u64).map_err(eof)?;
            h.update(piece);
        }
        Ok(h)
    };
    // One chunk (an embedding row, a KV page): on this thread. `install` would hand it to a
    // rayon worker (a wake-up of tens of microseconds, and workers left spinning on cores the
    // decode kernels' team is using).
    let parts: Vec<Result<crc32fast::Hasher>> = if out.len() <= chunk {
        vec![read_chunk((0, out))]
    } else {
        crate::pool::install(|| out.par_chunks_mut(chunk).enumerate().map(read_chunk).collect())
    };
    let mut acc: Option<crc32fast::Hasher> = None;
    for p in parts {
        let h = p?;
        match acc.as_mut() {
            None => acc = Some(h),
            Some(a) => a.combine(&h),
        }
    }
    let crc = acc.unwrap_or_default().finalize();
    // The file may have been truncated while we read (pread then returns short: caught above)
    // or rewritten in place: check the size once more.
    let mtime_after = check_unchanged(&f, loc, tensor)?;
    if !verify {
        return Ok(None);
    }
    if let (Some(want), true) = (loc.crc32, start == 0) {
        if want == crc && mtime_after == mtime {
            mark_verified(loc, mtime);
        }
        if want != crc {
            return Err(CoreError::corrupt(
                &loc.path,
                Some(tensor),
                format!("checksum mismatch: crc32 {crc:08x}, manifest says {want:08x}"),
            ));
        }
    }
    Ok(Some(crc))
}

/// Advise the OS to drop its cached pages of bytes `[start, start + len)` of the tensor at
/// `loc` (`posix_fadvise(POSIX_FADV_DONTNEED)`; the kernel drops the clean pages wholly inside
/// the range). Advice only: the data stay correct either way, so errors are ignored.
pub fn drop_cached(loc: &FileLoc, start: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = File::open(&loc.path) else { return };
    let (Ok(off), Ok(n)) =
        (libc::off_t::try_from(loc.offset.saturating_add(start)), libc::off_t::try_from(len))
    else {
        return;
    };
    // SAFETY: an advice call on a valid, open file descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), off, n, libc::POSIX_FADV_DONTNEED) };
}

/// Copy a whole file (another file tier): read, then write atomically.
pub fn copy_tensor_file(
    src: &FileLoc,
    tensor: &str,
    nbytes: usize,
    dst: &Path,
    dtype: &DType,
    shape: &[usize],
    verify: bool,
) -> Result<FileLoc> {
    let mut buf = super::buf::AlignedBuf::for_overwrite(nbytes)?;
    read_into(src, tensor, 0, buf.as_mut_slice(), verify)?;
    write_tensor_file(dst, tensor, dtype, shape, buf.as_slice())
}
