//! Small statistics: a log-linear histogram of wait times (mergeable between processes),
//! medians.

/// Values below this are counted exactly.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above `LINEAR` (about 3 % resolution).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (LINEAR + (64 - 6) * SUB) as usize;

/// A histogram of nanosecond values with ~3 % resolution, plus the exact maximum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    max: u64,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            max: 0,
            total: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 6
    let m = (v >> (e - SUB_BITS)) & (SUB - 1);
    (LINEAR + u64::from(e - 6) * SUB + m) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let e = (i - LINEAR) / SUB + 6;
    let m = (i - LINEAR) % SUB;
    let low = (SUB + m) << (e - u64::from(SUB_BITS));
    low + (1 << (e - u64::from(SUB_BITS))) - 1
}

impl Histogram {
    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.max = self.max.max(v);
        self.total += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    /// Number of values.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The exact largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `q` quantile (0..=1), as the upper edge of its bucket (never above the maximum).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }

    /// A compact text form: `max total i:c i:c …` (non-empty buckets only).
    pub fn encode(&self) -> String {
        let mut s = format!("{} {}", self.max, self.total);
        for (i, &c) in self.counts.iter().enumerate() {
            if c != 0 {
                s.push_str(&format!(" {i}:{c}"));
            }
        }
        s
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(s: &str) -> Histogram {
        let mut h = Histogram::default();
        let mut it = s.split_ascii_whitespace();
        h.max = it.next().unwrap().parse().unwrap();
        h.total = it.next().unwrap().parse().unwrap();
        for pair in it {
            let (i, c) = pair.split_once(':').unwrap();
            h.counts[i.parse::<usize>().unwrap()] = c.parse().unwrap();
        }
        h
    }
}

/// The median of `xs` (mean of the middle two for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
