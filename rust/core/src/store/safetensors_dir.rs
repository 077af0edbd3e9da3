//! Adopting existing safetensors files (single files, folders, Hugging Face sharded checkpoints
//! with `model.safetensors.index.json`) in place: only headers are read; the store records where
//! each tensor's bytes are and reads them when asked. Adopted files are never written or deleted.

use super::dtype::DType;
use super::fileio::{self, FileLoc};
use super::state::Entry;
use super::{names, Store};
use crate::{CoreError, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A tensor to adopt: store name, dtype, shape, where its bytes are, their count.
pub(super) type Adopted = (String, DType, Vec<usize>, FileLoc, u64);

/// The safetensors files a path names, and for an index the tensors each must hold.
fn resolve(path: &Path) -> Result<Vec<(PathBuf, Option<BTreeSet<String>>)>> {
    let meta = std::fs::metadata(path).map_err(|e| CoreError::io(path, e))?;
    let index = if meta.is_dir() {
        let idx = path.join("model.safetensors.index.json");
        if idx.exists() {
            Some(idx)
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| CoreError::io(path, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(CoreError::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no .safetensors files in this folder",
                    ),
                ));
            }
            return Ok(files.into_iter().map(|f| (f, None)).collect());
        }
    } else if path.extension().is_some_and(|x| x == "json") {
        Some(path.to_owned())
    } else {
        None
    };
    let Some(idx) = index else { return Ok(vec![(path.to_owned(), None)]) };
    let bytes = std::fs::read(&idx).map_err(|e| CoreError::io(&idx, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| CoreError::corrupt(&idx, None, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CoreError::corrupt(&idx, None, "no \"weight_map\" object"))?;
    let dir = idx.parent().unwrap_or(Path::new("."));
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (t, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| CoreError::corrupt(&idx, Some(t), "file name is not a string"))?;
        let p = Path::new(f);
        if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(CoreError::corrupt(
                &idx,
                Some(t),
                format!("shard {f:?} is not a plain file name inside the checkpoint folder"),
            ));
        }
        files.entry(f.to_owned()).or_default().insert(t.clone());
    }
    Ok(files.into_iter().map(|(f, ts)| (dir.join(f), Some(ts))).collect())
}

impl Store {
    /// Adopt the tensors of `path` into file tier `tier` (default: home) as `prefix + name`,
    /// without copying. All or nothing: on any error nothing is added. Returns the new names.
    pub fn load_safetensors(
        &self,
        path: &Path,
        tier: Option<usize>,
        prefix: &str,
        overwrite: bool,
    ) -> Result<Vec<String>> {
        let mut found: Vec<Adopted> = Vec::new();
        for (file, expect) in resolve(path)? {
            let file = std::path::absolute(&file).map_err(|e| CoreError::io(&file, e))?;
            let h = fileio::read_header(&file)?;
            let present: BTreeSet<String> = h.tensors.iter().map(|t| t.name.clone()).collect();
            if let Some(want) = &expect {
                if let Some(missing) = want.difference(&present).next() {
                    return Err(CoreError::corrupt(
                        &file,
                        Some(missing),
                        "the index names this tensor but the shard lacks it",
                    ));
                }
            }
            let single = h.tensors.len() == 1;
            for t in &h.tensors {
                if let Some(want) = &expect {
                    if !want.contains(&t.name) {
                        continue;
                    }
                }
                let mut dtype = DType::from_safetensors(t.dtype).ok_or_else(|| {
                    CoreError::DType(format!(
                        "tensor {:?} in {} has dtype {:?}, which the store does not hold",
                        t.name,
                        file.display(),
                        t.dtype
                    ))
                })?;
                let mut shape = t.shape.clone();
                if single {
                    // Our own files carry the logical dtype and shape of block formats.
                    if let (Some(d), Some(s)) =
                        (h.metadata.get("tierflow.dtype"), h.metadata.get("tierflow.shape"))
                    {
                        if let (Ok(d), Ok(s)) =
                            (DType::parse(d), serde_json::from_str::<Vec<usize>>(s))
                        {
                            if matches!(d, DType::Block(_)) {
                                dtype = d;
                                shape = s;
                            }
                        }
                    }
                }
                let name = format!("{prefix}{}", t.name);
                names::validate(&name)?;
                let loc = FileLoc {
                    path: file.clone(),
                    offset: t.start,
                    file_len: h.file_len,
                    crc32: None,
                    mtime_ns: Some(h.mtime_ns),
                    adopted: true,
                };
                found.push((name, dtype, shape, loc, t.end - t.start));
            }
        }
        self.adopt(tier, found, overwrite)
    }

    /// Register `found` (name, dtype, shape, location, size) as tensors adopted in place into
    /// file tier `tier` (default: home). All or nothing. Returns the new names.
    pub(super) fn adopt(
        &self,
        tier: Option<usize>,
        found: Vec<Adopted>,
        overwrite: bool,
    ) -> Result<Vec<String>> {
        let tier = match tier.or(self.inner.home) {
            Some(t) => t,
            None => {
                return Err(CoreError::Value(
                    "adopting files needs a file tier: this store has none".into(),
                ))
            }
        };
        let mut st = self.lock();
        Self::check_open(&st)?;
        if tier >= st.tiers.len() {
            return Err(CoreError::Value(format!("no tier number {tier}")));
        }
        if !st.tiers[tier].is_file() {
            return Err(CoreError::Value(format!(
                "tier {:?} is not file-backed: adopted files must live in a file tier",
                st.tiers[tier].name
            )));
        }
        let mut seen = BTreeSet::new();
        for (name, ..) in &found {
            if !seen.insert(name.clone()) {
                return Err(CoreError::Exists(name.clone()));
            }
            if !overwrite && st.entries.contains_key(name) {
                return Err(CoreError::Exists(name.clone()));
            }
            if st.entries.get(name).is_some_and(|e| e.busy.is_some()) {
                return Err(CoreError::Value(format!("tensor {name:?} is being moved; try again")));
            }
        }
        let total: u64 = found.iter().map(|f| f.4).sum();
        if let Some(cap) = st.tiers[tier].capacity {
            if st.tiers[tier].used + total > cap {
                return Err(CoreError::Capacity(format!(
                    "adopting {total} bytes into tier {:?} would exceed its capacity ({cap} bytes, {} used)",
                    st.tiers[tier].name, st.tiers[tier].used
                )));
            }
        }
        let mut replaced = Vec::new();
        let mut added = Vec::new();
        for (name, dtype, shape, loc, n) in found {
            if let Some(old) = st.entries.remove(&name) {
                st.tiers[old.tier].used -= old.nbytes;
                replaced.push((name.clone(), old));
            }
            st.tiers[tier].used += n;
            st.entries.insert(
                name.clone(),
                Entry {
                    dtype,
                    shape,
                    nbytes: n,
                    tier,
                    mem: None,
                    home: Some(loc),
                    home_tier: Some(tier),
                    resfile: None,
                    pinned: false,
                    count: 0,
                    busy: None,
                    prefetched: false,
                },
            );
            added.push(name);
        }
        if let Err(e) = self.save_manifest(&st) {
            for n in &added {
                if let Some(e) = st.entries.remove(n) {
                    st.tiers[e.tier].used -= e.nbytes;
                }
            }
            for (n, old) in replaced {
                st.tiers[old.tier].used += old.nbytes;
                st.entries.insert(n, old);
            }
            return Err(e);
        }
        drop(st);
        for (_, old) in replaced {
            for l in [old.home, old.resfile].into_iter().flatten() {
                if !l.adopted {
                    let _ = std::fs::remove_file(l.path);
                }
            }
        }
        Ok(added)
    }
}
