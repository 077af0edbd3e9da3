//! Tier descriptions and capacity strings.

use crate::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One tier, as configured. Tiers are ordered fastest first. A tier with a `path` is
/// file-backed; otherwise it lives in memory. `capacity: None` means unbounded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TierSpec {
    pub name: String,
    pub capacity: Option<u64>,
    pub path: Option<PathBuf>,
}

/// Parse a capacity: a whole number of bytes, or a number with a unit (`512MiB`, `1.5 GB`,
/// `64k`). Binary units (KiB, MiB, GiB, TiB; and K, M, G, T) are powers of 1024; decimal units
/// (kB, MB, GB, TB) powers of 1000. `inf`/`unbounded` give `None`.
pub fn parse_size(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    let bad = || {
        CoreError::Value(format!(
            "cannot parse capacity {s:?}: expected bytes or a size such as \"512MiB\" or \"2GB\""
        ))
    };
    if t.eq_ignore_ascii_case("inf")
        || t.eq_ignore_ascii_case("unbounded")
        || t.eq_ignore_ascii_case("none")
    {
        return Ok(None);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.replace('_', "").parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(bad()),
    };
    let v = num * mult;
    if !v.is_finite() || !(0.0..=1.8e19).contains(&v) {
        return Err(bad());
    }
    Ok(Some(v.round() as u64))
}

/// Human-readable bytes (binary units).
pub fn fmt_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), Some(512 << 20));
        assert_eq!(parse_size("2GB").unwrap(), Some(2_000_000_000));
        assert_eq!(parse_size("1.5 GiB").unwrap(), Some(3 << 29));
        assert_eq!(parse_size("100").unwrap(), Some(100));
        assert_eq!(parse_size("inf").unwrap(), None);
        for b in ["-1", "abc", "12 parsecs", "", "1e400"] {
            assert!(parse_size(b).is_err(), "{b}");
        }
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }
}
