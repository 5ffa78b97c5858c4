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

    /// This CPU's, read once (CPUID's deterministic cache parameters on x86-64).
    pub fn current() -> Self {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| detect().unwrap_or(Self::FALLBACK))
    }
}

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
/// sizes a `kc x nr` panel of B at about 4/3 of L1 (measured on Zen 5 with AVX-512: 256
/// beats 128, where the panel fits L1 whole, by 10-15%, as fewer passes over C outweigh the
/// L1 misses, which the L2 serves), at most 256; `mc` rows of A by `kc` fill about half of
/// L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    pub kc: usize,
    pub mc: usize,
}

impl Blocking {
    pub fn for_kernel(caches: CacheSizes, mr: usize, nr: usize) -> Self {
        let kc = (caches.l1d * 4 / 3 / (4 * nr) / 64 * 64).clamp(128, 256);
        let mc = ((caches.l2 / 2) / (4 * kc) / mr * mr).clamp(mr, 1024 / mr * mr);
        Self { kc, mc }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_cpu_reports_plausible_caches() {
        let caches = CacheSizes::current();
        assert!((8 * 1024..=1024 * 1024).contains(&caches.l1d), "{caches:?}");
        assert!(
            (64 * 1024..=64 * 1024 * 1024).contains(&caches.l2),
            "{caches:?}"
        );
    }

    #[test]
    fn blocks_fit_their_caches() {
        let caches = CacheSizes {
            l1d: 48 * 1024,
            l2: 1024 * 1024,
        };
        let blocking = Blocking::for_kernel(caches, 6, 64);
        assert_eq!(blocking.kc, 256);
        assert!(blocking.kc * 64 * 4 <= caches.l1d * 4 / 3);
        assert_eq!(blocking.mc % 6, 0);
        assert!(blocking.mc * blocking.kc * 4 <= caches.l2 / 2);
    }
}
