//! The numbers behind the pictures: a paired test of two runs on the same test items, and a
//! histogram with its tails folded into the edge bins.

/// Exact McNemar test of "after" against "before" on the same items.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    /// Items wrong before and right after.
    pub gained: Vec<usize>,
    /// Items right before and wrong after.
    pub lost: Vec<usize>,
    /// Two-sided exact p-value (binomial on the discordant pairs, p = 1/2).
    pub p_value: f64,
}

/// `before` and `after` are per-item correctness strings of '1' and '0' of equal length.
pub fn mcnemar(before: &str, after: &str) -> Option<Paired> {
    if before.len() != after.len() || before.is_empty() {
        return None;
    }
    let (mut gained, mut lost) = (Vec::new(), Vec::new());
    for (i, (b, a)) in before.bytes().zip(after.bytes()).enumerate() {
        match (b, a) {
            (b'0', b'1') => gained.push(i),
            (b'1', b'0') => lost.push(i),
            (b'0' | b'1', b'0' | b'1') => {}
            _ => return None,
        }
    }
    let p_value = exact_two_sided(gained.len(), lost.len());
    Some(Paired {
        gained,
        lost,
        p_value,
    })
}

/// 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1 (1 with no discordant pair).
fn exact_two_sided(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln C(n, i) summed in log space: n can be in the thousands.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// One bin of a histogram: values in [lo, hi), split by whether they were pruned.
#[derive(Clone, Debug, PartialEq)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub pruned: usize,
    pub kept: usize,
}

/// `bins` equal bins between the 0.5th and 99.5th percentiles of `values`; values beyond fall
/// into the edge bins (attribution scores have long tails). `pruned[i]` marks `values[i]`.
pub fn histogram(values: &[f32], pruned: &[bool], bins: usize) -> Vec<Bin> {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() || bins == 0 {
        return Vec::new();
    }
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64;
    let (lo, mut hi) = (at(0.005), at(0.995));
    if hi <= lo {
        hi = lo + 1.0;
    }
    let width = (hi - lo) / bins as f64;
    let mut out: Vec<Bin> = (0..bins)
        .map(|b| Bin {
            lo: lo + width * b as f64,
            hi: lo + width * (b + 1) as f64,
            pruned: 0,
            kept: 0,
        })
        .collect();
    for (v, &p) in values.iter().zip(pruned) {
        if !v.is_finite() {
            continue;
        }
        let b = (((*v as f64 - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        if p {
            out[b].pruned += 1;
        } else {
            out[b].kept += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_by_hand() {
        // 1 gained, 5 lost: 2 * (C(6,0) + C(6,1)) / 64 = 14 / 64.
        let p = mcnemar("0111110", "1000000").unwrap();
        assert_eq!(p.gained, vec![0]);
        assert_eq!(p.lost, vec![1, 2, 3, 4, 5]);
        assert!((p.p_value - 14.0 / 64.0).abs() < 1e-12, "{}", p.p_value);
        // No discordant pair: nothing to see.
        assert_eq!(mcnemar("0101", "0101").unwrap().p_value, 1.0);
        // Balanced: capped at 1.
        assert_eq!(mcnemar("01", "10").unwrap().p_value, 1.0);
        // 20 gained, 0 lost: 2 / 2^20.
        let p = mcnemar(&"0".repeat(20), &"1".repeat(20)).unwrap();
        assert!((p.p_value - 2.0 / (1u64 << 20) as f64).abs() < 1e-15);
        assert!(mcnemar("01", "011").is_none());
        assert!(mcnemar("0x", "01").is_none());
    }

    #[test]
    fn histogram_keeps_every_value_and_its_mark() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).chain([1e9, -1e9]).collect();
        let pruned: Vec<bool> = (0..values.len()).map(|i| i % 3 == 0).collect();
        let bins = histogram(&values, &pruned, 20);
        assert_eq!(bins.len(), 20);
        let count: usize = bins.iter().map(|b| b.pruned + b.kept).sum();
        assert_eq!(count, values.len());
        let marked: usize = bins.iter().map(|b| b.pruned).sum();
        assert_eq!(marked, pruned.iter().filter(|&&p| p).count());
        // The tails land in the edge bins, not in bins of their own.
        assert!(bins[0].lo > -10.0 && bins[19].hi < 1010.0);
        assert!(histogram(&[], &[], 10).is_empty());
    }
}
