//! Cache sizes as the CPU reports them, and the block sizes of the matrix product derived
//! from them.

use std::sync::OnceLock;

/// Data cache sizes of one core, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    pub l1d: usize,
    pub l2: usize,
}

impl CacheSizes {
    /// What a CPU that reports nothing is assumed to have.
    const FALLBACK: CacheSizes = CacheSizes {
        l1d: 32 * 1024,
        l2: 512 * 1024,
    };

    /// The sizes the engine blocks for, read once per process: `VIT_CACHE_SIZES` when set
    /// (see [`CacheSizes::parse`]), else this CPU's (CPUID's deterministic cache parameters
    /// on x86-64). A malformed `VIT_CACHE_SIZES` is reported on stderr and ignored.
    pub fn current() -> Self {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| {
            let detected = || detect().unwrap_or(Self::FALLBACK);
            match std::env::var(ENV) {
                Ok(text) if !text.trim().is_empty() => match Self::parse(&text) {
                    Ok(sizes) => sizes,
                    Err(message) => {
                        let detected = detected();
                        crate::kernels::warn(format_args!(
                            "vit: {ENV}={text}: {message}; using this CPU's ({})",
                            detected.kib()
                        ));
                        detected
                    }
                },
                _ => detected(),
            }
        })
    }

    /// Reads `L1D_KIB,L2_KIB` (for example `32,256`): the sizes of one core's L1 data cache
    /// and L2 in KiB, each from 4 KiB to 64 MiB, so that any blocking can be run (by tests,
    /// or by a user comparing blockings on a slow CPU).
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected L1D_KIB,L2_KIB (for example 32,256)";
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let [l1d, l2] = fields[..] else {
            return Err(expected.into());
        };
        let kib = |field: &str, name: &str| match field.parse::<usize>() {
            Ok(n) if (4..=64 * 1024).contains(&n) => Ok(n * 1024),
            Ok(n) => Err(format!("{name} of {n} KiB is outside 4 to 65536")),
            Err(_) => Err(format!(
                "{name} {field:?} is not a whole number of KiB; {expected}"
            )),
        };
        Ok(Self {
            l1d: kib(l1d, "L1D")?,
            l2: kib(l2, "L2")?,
        })
    }

    /// `L1D_KIB,L2_KIB`, as [`CacheSizes::parse`] reads it.
    pub fn kib(&self) -> String {
        format!("{},{}", self.l1d / 1024, self.l2 / 1024)
    }
}

/// The variable that overrides the detected cache sizes.
pub const ENV: &str = "VIT_CACHE_SIZES";

/// CPUID leaf 4 (Intel) or 0x8000001D (AMD): one sub-leaf per cache, with its level, type,
/// ways, partitions, line size and sets.
#[cfg(target_arch = "x86_64")]
fn detect() -> Option<CacheSizes> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let vendor = __cpuid(0);
    let amd = vendor.ebx == u32::from_le_bytes(*b"Auth");
    let leaf = if amd { 0x8000_001D } else { 4 };
    let max_leaf = __cpuid(leaf & 0x8000_0000).eax;
    if max_leaf < leaf {
        return None;
    }
    let (mut l1d, mut l2) = (None, None);
    for sub_leaf in 0..16 {
        let regs = __cpuid_count(leaf, sub_leaf);
        let kind = regs.eax & 0x1f;
        if kind == 0 {
            break;
        }
        let level = (regs.eax >> 5) & 0x7;
        let ways = ((regs.ebx >> 22) & 0x3ff) as usize + 1;
        let partitions = ((regs.ebx >> 12) & 0x3ff) as usize + 1;
        let line = (regs.ebx & 0xfff) as usize + 1;
        let sets = regs.ecx as usize + 1;
        let size = ways * partitions * line * sets;
        match (level, kind) {
            (1, 1) => l1d = Some(size),
            (2, 1 | 3) => l2 = Some(size),
            _ => {}
        }
    }
    Some(CacheSizes { l1d: l1d?, l2: l2? })
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Option<CacheSizes> {
    None
}

/// Block sizes of the product for a microkernel of `mr x nr`: `kc`, the depth of one block,
/// sizes a `kc x nr` panel of B at about a fifth of L2, from 256 to 1024; `mc` rows of A by
/// `kc` fill about 5/8 of L2 beside it. The panel is read from L2 either way, so the deeper
/// block costs no L1 misses that 256 did not, and C is loaded and stored once per block:
/// measured on Zen 5 (L2 1 MiB, so `kc` 768 and `mc` 210, one block of A for one image of
/// 197 rows, read in place when the depth is 768), ViT-B's four dense products at 197 and
/// 1576 rows ran 5-15% faster than with `kc` 256 (the earlier rule, which sized the panel
/// by L1), on both kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    pub kc: usize,
    pub mc: usize,
}

impl Blocking {
    pub fn for_kernel(caches: CacheSizes, mr: usize, nr: usize) -> Self {
        let kc = (caches.l2 / 5 / (4 * nr) / 64 * 64).clamp(256, 1024);
        let mc = (caches.l2 * 5 / 8 / (4 * kc) / mr * mr).clamp(mr, 1024 / mr * mr);
        Self { kc, mc }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_cpu_reports_plausible_caches() {
        let Some(caches) = detect() else {
            return; // not x86-64, or a CPU whose CPUID leaves report no caches
        };
        assert!((8 * 1024..=1024 * 1024).contains(&caches.l1d), "{caches:?}");
        assert!(
            (64 * 1024..=64 * 1024 * 1024).contains(&caches.l2),
            "{caches:?}"
        );
    }

    #[test]
    fn overrides_are_read_as_kib_and_bad_ones_refused() {
        let sizes = CacheSizes::parse(" 32, 256 ").unwrap();
        assert_eq!(
            sizes,
            CacheSizes {
                l1d: 32 * 1024,
                l2: 256 * 1024
            }
        );
        assert_eq!(sizes.kib(), "32,256");
        for bad in [
            "",
            "32",
            "32,256,1024",
            "32,x",
            "0,256",
            "32,100000",
            "-1,256",
        ] {
            assert!(CacheSizes::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blocks_fit_their_caches() {
        let zen5 = CacheSizes {
            l1d: 48 * 1024,
            l2: 1024 * 1024,
        };
        let blocking = Blocking::for_kernel(zen5, 6, 64);
        assert_eq!((blocking.kc, blocking.mc), (768, 210));
        // A small CPU, a Zen 3 and a Zen 5, for the AVX2 (6x16) and AVX-512 (6x64) kernels.
        for caches in ["32,256", "32,512", "48,1024"].map(|s| CacheSizes::parse(s).unwrap()) {
            for (mr, nr) in [(6, 16), (6, 64)] {
                let blocking = Blocking::for_kernel(caches, mr, nr);
                let what = format!("{} {mr}x{nr}: {blocking:?}", caches.kib());
                assert!((256..=1024).contains(&blocking.kc), "{what}");
                assert!(
                    blocking.kc * nr * 4 <= caches.l2 / 5 || blocking.kc == 256,
                    "{what}"
                );
                assert!(blocking.mc * blocking.kc * 4 <= caches.l2 * 5 / 8, "{what}");
                assert_eq!(blocking.mc % mr, 0, "{what}");
            }
        }
    }
}
