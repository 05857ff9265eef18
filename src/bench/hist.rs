//! A latency histogram in the style of HdrHistogram: values below 128 are counted exactly;
//! above, every power of two is split into 128 equal sub-buckets, so a reported value is
//! never more than 1/128 (0.8%) above the value it stands for. Recording is one index
//! computation and one increment; the counts are a fixed array of about 7,400 `u64`s, so a
//! histogram per reader thread is cheap and histograms merge by adding counts.

/// log2 of the number of linear sub-buckets per power of two.
const SUB_BITS: u32 = 7;
/// Linear sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed for every `u64`: the exact range plus one group per higher power of two.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// Counts of `u64` values (nanoseconds, in the benchmark), with exact count, min, max and sum.
#[derive(Clone)]
pub struct Hist {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hist")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

/// The bucket of `v`.
#[inline]
fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    // `top` is the position of the highest set bit (at least SUB_BITS here); `shift` drops
    // every bit below the SUB_BITS + 1 highest ones.
    let top = 63 - v.leading_zeros();
    let shift = top - SUB_BITS;
    let sub = (v >> shift) - SUB;
    ((u64::from(shift) + 1) * SUB + sub) as usize
}

/// The lowest and highest value that fall into bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    let low = (SUB + sub) << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Hist {
    /// An empty histogram.
    pub fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every value counted in `other`.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest value counted, exactly (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// The largest value counted, exactly (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The exact mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at percentile `p` (0 to 100): the highest value of the bucket holding the
    /// ⌈p% × count⌉-th smallest value, kept within the exact min and max. So it is at least
    /// the true percentile and at most 1/128 above it. 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bounds(i).1.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the tests need no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn buckets_tile_the_whole_range() {
        assert_eq!(bounds(0), (0, 0));
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, high) = bounds(i);
            assert_eq!(low, next, "bucket {i} starts where the previous ended");
            assert!(high >= low);
            assert_eq!(bucket(low), i);
            assert_eq!(bucket(high), i);
            if i + 1 == BUCKETS {
                assert_eq!(high, u64::MAX);
            } else {
                next = high + 1;
            }
        }
    }

    #[test]
    fn buckets_are_narrow() {
        let mut s = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..100_000 {
            let v = xorshift(&mut s) >> (xorshift(&mut s) % 64);
            let (low, high) = bounds(bucket(v));
            assert!(low <= v && v <= high, "{v} in [{low}, {high}]");
            // The width of a bucket is at most 1/128 of its lowest value.
            assert!(
                (high - low) as f64 <= low as f64 / 128.0,
                "{v}: [{low}, {high}]"
            );
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Hist::new();
        for v in 0..128 {
            h.record(v);
        }
        assert_eq!(h.count(), 128);
        assert_eq!(h.percentile(50.0), 63);
        assert_eq!(h.percentile(100.0), 127);
        assert_eq!(h.percentile(0.0), 0);
        assert_eq!(h.min(), 0);
        assert_eq!(h.mean(), 63.5);
    }

    #[test]
    fn percentiles_are_within_one_part_in_128() {
        // Latency-like values in nanoseconds, spread over twenty powers of two.
        let mut s = 42;
        let mut values: Vec<u64> = (0..200_000)
            .map(|_| 1_000 + (xorshift(&mut s) >> (24 + xorshift(&mut s) % 20)))
            .collect();
        let mut h = Hist::new();
        for &v in &values {
            h.record(v);
        }
        values.sort_unstable();
        for p in [1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0] {
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            let exact = values[rank.max(1) - 1];
            let got = h.percentile(p);
            assert!(got >= exact, "p{p}: {got} < {exact}");
            assert!(
                (got - exact) as f64 <= exact as f64 / 128.0,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(h.max(), *values.last().unwrap());
        assert_eq!(h.percentile(100.0), h.max());
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        assert!((h.mean() - mean).abs() < 1e-6 * mean);
    }

    #[test]
    fn one_value_is_reported_exactly() {
        let mut h = Hist::new();
        h.record(123_456_789);
        for p in [0.0, 50.0, 99.9, 100.0] {
            assert_eq!(h.percentile(p), 123_456_789);
        }
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b, mut both) = (Hist::new(), Hist::new(), Hist::new());
        for v in 1..=5_000u64 {
            a.record(v * 1_000);
            both.record(v * 1_000);
        }
        for v in 1..=1_000u64 {
            b.record(v * 7_919);
            both.record(v * 7_919);
        }
        a.merge(&b);
        assert_eq!(a.count(), both.count());
        assert_eq!((a.min(), a.max()), (both.min(), both.max()));
        for p in [50.0, 90.0, 99.0, 99.9] {
            assert_eq!(a.percentile(p), both.percentile(p));
        }
        assert_eq!(a.mean(), both.mean());
    }

    #[test]
    fn empty() {
        let h = Hist::new();
        assert_eq!(
            (h.count(), h.min(), h.max(), h.percentile(99.0)),
            (0, 0, 0, 0)
        );
        assert_eq!(h.mean(), 0.0);
    }
}
