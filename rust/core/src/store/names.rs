//! Tensor names and the file names they are stored under.
//!
//! Any non-empty UTF-8 name without NUL is a valid tensor name (Hugging Face names have dots,
//! some tools use `/`). A name never becomes a path: it is percent-encoded into a single file
//! name component (`/`, `\`, a leading `.` and every byte outside `[A-Za-z0-9_.-]` are escaped),
//! so `../../etc/passwd` or `/abs` stays inside the store's folder.

use crate::{CoreError, Result};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 4096;

/// Check a tensor name.
pub fn validate(name: &str) -> Result<()> {
    let bad = |why: &str| Err(CoreError::InvalidName(name.chars().take(200).collect(), why.into()));
    if name.is_empty() {
        return bad("names must not be empty");
    }
    if name.contains('\0') {
        return bad("names must not contain NUL");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("names must be at most 4096 bytes");
    }
    Ok(())
}

/// A single path component for `name` (no separators, never `.` or `..`), at most ~150 bytes.
/// Uniqueness comes from the generation number the store appends.
pub fn file_stem(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        if out.len() > 120 {
            out.truncate(120);
            out.push_str(&format!("~{:08x}", crc32fast::hash(name.as_bytes())));
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stems_stay_in_folder() {
        for n in ["../../etc/passwd", "/abs/path", "..", ".", "a/b", "a\\b", "x.y.z", "ünï"] {
            let s = file_stem(n);
            assert!(!s.contains('/') && !s.contains('\\') && !s.starts_with('.'), "{n} -> {s}");
            assert!(s != "." && s != "..");
        }
        assert_eq!(file_stem("model.layers.0.w"), "model.layers.0.w");
        assert!(file_stem(&"x".repeat(1000)).len() < 140);
        assert!(validate("").is_err());
        assert!(validate("a\0b").is_err());
        assert!(validate("ok").is_ok());
    }
}
