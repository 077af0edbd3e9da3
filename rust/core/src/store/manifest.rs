//! The store's manifest: `tierflow-store.json` in the store's folder, rewritten atomically after
//! every committed change. Only tensors named in it exist: a crash between writing a tensor's file
//! and committing the manifest leaves an orphan file (removed on the next open), never a partial
//! tensor.

use super::fileio::{write_atomic, FileLoc};
use super::tiers::TierSpec;
use crate::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "tierflow-store.json";
pub const FORMAT: &str = "tierflow-store";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nbytes: u64,
    /// Relative to the store's folder for the store's own files; absolute for adopted files.
    pub file: PathBuf,
    pub offset: u64,
    pub file_len: u64,
    pub crc32: Option<u32>,
    #[serde(default)]
    pub mtime_ns: Option<i64>,
    #[serde(default)]
    pub adopted: bool,
    /// The file tier this entry's file lives in (adopted files may live in any).
    #[serde(default)]
    pub tier: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub generation: u64,
    pub policy: String,
    pub tiers: Vec<TierSpec>,
    pub tensors: BTreeMap<String, ManifestEntry>,
}

impl ManifestEntry {
    pub fn loc(&self, root: &Path) -> FileLoc {
        let path = if self.file.is_absolute() { self.file.clone() } else { root.join(&self.file) };
        FileLoc {
            path,
            offset: self.offset,
            file_len: self.file_len,
            crc32: self.crc32,
            mtime_ns: self.mtime_ns,
            adopted: self.adopted,
        }
    }
}

pub fn load(root: &Path) -> Result<Option<Manifest>> {
    let p = root.join(MANIFEST);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CoreError::io(&p, e)),
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| CoreError::corrupt(&p, None, format!("invalid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(CoreError::corrupt(
            &p,
            None,
            format!("not a tierflow store manifest (format {:?})", m.format),
        ));
    }
    if m.version > VERSION {
        return Err(CoreError::corrupt(
            &p,
            None,
            format!("manifest version {} is newer than this tierflow ({VERSION})", m.version),
        ));
    }
    Ok(Some(m))
}

pub fn save(root: &Path, m: &Manifest) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(m)
        .map_err(|e| CoreError::Internal(format!("serialising the manifest: {e}")))?;
    write_atomic(&root.join(MANIFEST), |f| f.write_all(&bytes))
}
