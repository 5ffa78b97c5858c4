//! Which microkernel the CPU runs, chosen at run time from the CPU's features.

use std::sync::OnceLock;

/// An instruction set the matrix product has a microkernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 with AVX-512F: a 6x64 microkernel on 512-bit registers.
    Avx512,
    /// x86-64 with AVX2 and FMA: a 6x16 microkernel on 256-bit registers.
    Avx2,
    /// Any other CPU (aarch64, x86-64 without AVX2): the `gemm` crate over plain weights.
    Portable,
}

impl Isa {
    /// Every instruction set, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The name used in `VIT_GEMM` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Parses a name of [`Isa::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|isa| isa.name() == name)
    }

    /// Whether this CPU can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The instruction sets this CPU can run, fastest first.
    pub fn supported() -> Vec<Isa> {
        Self::ALL
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// The fastest instruction set of this CPU, unless `VIT_GEMM` (`avx512`, `avx2`,
    /// `portable`) names a slower one it supports. Read once per process; a name that is
    /// unknown or unsupported here is reported on stderr and ignored.
    pub fn current() -> Self {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let fastest = Self::supported()[0];
            let Ok(requested) = std::env::var("VIT_GEMM") else {
                return fastest;
            };
            match Self::from_name(requested.trim()) {
                Some(isa) if isa.is_supported() => isa,
                Some(isa) => {
                    crate::kernels::warn(format_args!(
                        "vit: VIT_GEMM={}: this CPU lacks {}; using {}",
                        requested,
                        isa.name(),
                        fastest.name()
                    ));
                    fastest
                }
                None if requested.trim().is_empty() || requested.trim() == "auto" => fastest,
                None => {
                    crate::kernels::warn(format_args!(
                        "vit: VIT_GEMM={requested}: expected auto, avx512, avx2 or portable; using {}",
                        fastest.name()
                    ));
                    fastest
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_portable_is_always_there() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert!(Isa::supported().contains(&Isa::Portable));
        assert!(Isa::current().is_supported());
        assert_eq!(Isa::from_name("sse9"), None);
    }
}
