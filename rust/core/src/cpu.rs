//! CPU features found at run time (never at build time: wheels run on CPUs other than the
//! builder's). Kernels pick their instruction-set path from [`Isa::detect`].

/// An instruction-set path a kernel may take, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, compiled for every target; the reference the SIMD paths are tested against.
    Scalar,
    /// x86-64 AVX2 + FMA (Haswell and later, Zen).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/DQ (Skylake-SP and later, Zen 4).
    Avx512,
}

impl Isa {
    /// The name used by `TIERFLOW_ISA` and `tierflow.info()`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parse a `TIERFLOW_ISA` value.
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" | "generic" => Some(Isa::Scalar),
            "avx2" | "avx2+fma" => Some(Isa::Avx2),
            "avx512" | "avx-512" | "avx512f" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every kernel path this CPU can run, fastest last. Within the AVX-512 path, VNNI and BF16
    /// bodies are chosen per call from [`features`] (see `kernels/x86/avx512/`).
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.supported()).collect()
    }

    /// The best supported path, or the one `TIERFLOW_ISA` forces (falling back to the best one
    /// when the forced path is unsupported here; `tierflow.info()` shows which runs).
    pub fn detect() -> Isa {
        let best = *Isa::available().last().unwrap_or(&Isa::Scalar);
        match std::env::var("TIERFLOW_ISA").ok().and_then(|s| Isa::parse(&s)) {
            Some(forced) if Isa::available().contains(&forced) => forced,
            _ => best,
        }
    }
}

/// An optional instruction-set extension with kernel bodies of its own, used by the backends
/// when the CPU has it (checked per call, cached by `std`'s feature detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// AVX-512-VNNI `vpdpbusd`: Q8_0 / Q4_0 integer dot products in the AVX-512 backend.
    Avx512Vnni,
    /// AVX-512-BF16 `vdpbf16ps`: bf16 weight dot products in the AVX-512 backend.
    Avx512Bf16,
    /// AVX-VNNI (256-bit `vpdpbusd`, Alder Lake / Zen 5): Q8_0 / Q4_0 in the AVX2 backend.
    AvxVnni,
}

impl Ext {
    /// Every extension, in the order `tierflow.info()["isa_extensions"]` lists them.
    pub const ALL: [Ext; 3] = [Ext::Avx512Vnni, Ext::Avx512Bf16, Ext::AvxVnni];

    /// The name in `tierflow.info()` and `TIERFLOW_EXPECT_EXT`.
    pub fn name(self) -> &'static str {
        match self {
            Ext::Avx512Vnni => "avx512vnni",
            Ext::Avx512Bf16 => "avx512bf16",
            Ext::AvxVnni => "avxvnni",
        }
    }

    /// Whether tierflow has kernel bodies for this extension (flipped on as each is written and
    /// tested against the scalar reference).
    pub const fn implemented(self) -> bool {
        match self {
            Ext::Avx512Vnni => true,
            Ext::Avx512Bf16 => true,
            Ext::AvxVnni => true,
        }
    }

    /// Whether this CPU has the extension (and the base instruction set its bodies build on).
    #[inline]
    pub fn present(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Ext::Avx512Vnni => {
                    Isa::Avx512.supported() && is_x86_feature_detected!("avx512vnni")
                }
                Ext::Avx512Bf16 => {
                    Isa::Avx512.supported() && is_x86_feature_detected!("avx512bf16")
                }
                Ext::AvxVnni => Isa::Avx2.supported() && is_x86_feature_detected!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The extensions whose bodies run on this CPU (implemented and present).
    pub fn active() -> Vec<Ext> {
        Ext::ALL.into_iter().filter(|e| e.implemented() && e.present()).collect()
    }
}

/// CPU features relevant to tierflow, as (name, present) pairs.
pub fn features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        vec![
            ("sse4.2", is_x86_feature_detected!("sse4.2")),
            ("avx", is_x86_feature_detected!("avx")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bw", is_x86_feature_detected!("avx512bw")),
            ("avx512vl", is_x86_feature_detected!("avx512vl")),
            ("avx512dq", is_x86_feature_detected!("avx512dq")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avx512bf16", is_x86_feature_detected!("avx512bf16")),
            ("avxvnni", is_x86_feature_detected!("avxvnni")),
        ]
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![("neon", std::arch::is_aarch64_feature_detected!("neon"))]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn scalar_always_available() {
        assert!(Isa::available().contains(&Isa::Scalar));
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("nope"), None);
        assert!(Isa::detect().supported());
    }
}
