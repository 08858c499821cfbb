//! SplitMix64: a tiny PRNG written out here, not taken from `rand`, so the stream for a seed
//! is fixed by this file alone and never changes with a dependency's version or the platform.

/// Golden-ratio increment of SplitMix64 (Steele, Lea, Flood 2014).
pub(crate) const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 output function: a bijection on `u64`, also used to derive unique values.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our small `n`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no valid result");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub(crate) fn between(&mut self, low: i64, high: i64) -> i64 {
        assert!(low <= high, "empty range {low}..={high}");
        let span = high.abs_diff(low) + 1;
        low.wrapping_add(self.below(span) as i64)
    }

    /// True with probability `percent` / 100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Index into `weights`, chosen with probability proportional to its weight.
    pub(crate) fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut ticket = self.below(total);
        for (idx, weight) in weights.iter().enumerate() {
            if ticket < *weight {
                return idx;
            }
            ticket -= weight;
        }
        unreachable!("ticket is below the total weight")
    }

    /// `count` distinct indices below `len`, in the order drawn (partial Fisher-Yates).
    pub(crate) fn distinct(&mut self, len: usize, count: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..len).collect();
        let count = count.min(len);
        for idx in 0..count {
            let other = idx + self.below((len - idx) as u64) as usize;
            pool.swap(idx, other);
        }
        pool.truncate(count);
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_stream() {
        // First outputs for seed 0 from the reference C implementation (Vigna, prng.di.unimi.it).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..10_000 {
            let value = rng.between(-3, 3);
            assert!((-3..=3).contains(&value));
            assert!(rng.below(5) < 5);
        }
        let drawn = rng.distinct(6, 4);
        assert_eq!(drawn.len(), 4);
        let mut sorted = drawn.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        assert_eq!(rng.weighted(&[0, 5, 0]), 1);
    }
}
