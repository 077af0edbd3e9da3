//! Element types the store holds, and their safetensors names.

use crate::{CoreError, Result};

/// The element type of a stored tensor. `Block` is an opaque typed byte block (quantized formats
/// such as GGUF Q8_0 / Q4_0): its logical shape is the dequantized one and its size in bytes is
/// whatever the format says; the store moves it byte-exact without interpreting it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I32,
    I64,
    Bool,
    Block(String),
}

impl DType {
    /// Parse the names used across the bindings: numpy names (`float32`, `bool`, ...),
    /// safetensors names (`F32`, `BOOL`, ...) and `block:<format>`.
    pub fn parse(s: &str) -> Result<DType> {
        if let Some(fmt) = s.strip_prefix("block:") {
            if fmt.is_empty()
                || fmt.len() > 64
                || !fmt.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(CoreError::DType(format!("invalid block format name {fmt:?}")));
            }
            return Ok(DType::Block(fmt.to_owned()));
        }
        Ok(match s {
            "float32" | "F32" | "f32" => DType::F32,
            "float64" | "F64" | "f64" => DType::F64,
            "float16" | "F16" | "f16" => DType::F16,
            "bfloat16" | "BF16" | "bf16" => DType::BF16,
            "int8" | "I8" | "i8" => DType::I8,
            "uint8" | "U8" | "u8" => DType::U8,
            "int32" | "I32" | "i32" => DType::I32,
            "int64" | "I64" | "i64" => DType::I64,
            "bool" | "BOOL" => DType::Bool,
            other => {
                return Err(CoreError::DType(format!(
                    "unsupported dtype {other:?}: the store holds float32, float64, float16, bfloat16, int8, uint8, int32, int64, bool and block:<format>"
                )))
            }
        })
    }

    /// The canonical (numpy-style) name.
    pub fn name(&self) -> String {
        match self {
            DType::F32 => "float32".into(),
            DType::F64 => "float64".into(),
            DType::F16 => "float16".into(),
            DType::BF16 => "bfloat16".into(),
            DType::I8 => "int8".into(),
            DType::U8 => "uint8".into(),
            DType::I32 => "int32".into(),
            DType::I64 => "int64".into(),
            DType::Bool => "bool".into(),
            DType::Block(f) => format!("block:{f}"),
        }
    }

    /// Bytes per element; `None` for block formats (their size is the format's business).
    pub fn itemsize(&self) -> Option<usize> {
        Some(match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Block(_) => return None,
        })
    }

    /// The safetensors dtype the tensor is written as (blocks are written as raw `U8`).
    pub fn to_safetensors(&self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::F32 => S::F32,
            DType::F64 => S::F64,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I8 => S::I8,
            DType::U8 | DType::Block(_) => S::U8,
            DType::I32 => S::I32,
            DType::I64 => S::I64,
            DType::Bool => S::BOOL,
        }
    }

    /// The store dtype of a safetensors dtype, if the store supports it.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match d {
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I8 => DType::I8,
            S::U8 => DType::U8,
            S::I32 => DType::I32,
            S::I64 => DType::I64,
            S::BOOL => DType::Bool,
            _ => return None,
        })
    }
}

/// `prod(shape) * itemsize`, or an error when it overflows.
pub fn nbytes_of(dtype: &DType, shape: &[usize]) -> Result<Option<usize>> {
    let Some(item) = dtype.itemsize() else { return Ok(None) };
    let mut n: usize = item;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(|| {
            CoreError::Shape(format!("shape {shape:?} is too large: its size overflows"))
        })?;
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_round_trip() {
        for s in [
            "float32",
            "float64",
            "float16",
            "bfloat16",
            "int8",
            "uint8",
            "int32",
            "int64",
            "bool",
            "block:q4_0",
        ] {
            assert_eq!(DType::parse(s).unwrap().name(), s);
        }
        assert!(DType::parse("complex64").is_err());
        assert!(DType::parse("block:../x").is_err());
        assert_eq!(nbytes_of(&DType::F32, &[2, 3]).unwrap(), Some(24));
        assert!(nbytes_of(&DType::F64, &[usize::MAX, 2]).is_err());
    }
}
