//! Portable randomness: a ChaCha8 stream and samplers that give the same bits on every machine.
//!
//! Why not `rand`'s `StdRng` and `rand_distr`: neither promises the same values across versions, and
//! `f64::ln`/`exp` call the platform's libm, whose last bit differs between systems. Here every
//! sampler uses only the ChaCha8 byte stream, integer arithmetic and IEEE 754 `+ − × ÷ √` (correctly
//! rounded everywhere; Rust never fuses them), with [`ln`] and [`exp`] written out as polynomials.
//! Floats only ever *sample*; amounts are rounded into integer minor units right away.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded random stream (ChaCha8).
pub struct Rng {
    inner: ChaCha8Rng,
}

/// SplitMix64: expands (seed, stream) into a 32-byte ChaCha key, our own so the expansion cannot
/// change under us.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The stream `stream` of `seed` (independent streams keep, say, the population from shifting
    /// when an abuse parameter changes).
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut state = seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut key = [0u8; 32];
        for chunk in key.chunks_exact_mut(8) {
            chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        Rng { inner: ChaCha8Rng::from_seed(key) }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `(0, 1]` (safe for `ln`).
    pub fn unit_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[0, n)`; `n` must be positive. Multiply-shift (bias below 2⁻⁴⁰ for the
    /// sizes used here, and the same on every machine).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform integer in `[lo, hi]`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Marsaglia's polar method; only `ln` and `√`).
    pub fn normal(&mut self) -> f64 {
        for _ in 0..64 {
            let u = 2.0 * self.unit() - 1.0;
            let v = 2.0 * self.unit() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * ln(s) / s).sqrt();
            }
        }
        0.0 // (1 − π/4)⁶⁴ ≈ 10⁻⁴³: never in practice, and still deterministic
    }

    /// Log-normal with the given median and σ of the log.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * exp(sigma * self.normal())
    }

    /// Pareto with scale `x_min` and shape `alpha` (heavy tail: `alpha` near 1 is 80/20).
    pub fn pareto(&mut self, x_min: f64, alpha: f64) -> f64 {
        x_min * exp(-ln(self.unit_open()) / alpha)
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -ln(self.unit_open()) * mean
    }

    /// Poisson with mean `lambda` (Knuth's product below 30, a rounded normal above).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = exp(-lambda);
            let mut product = self.unit_open();
            let mut k = 0u64;
            // Bounded: P(k > 200 | λ < 30) is below 10⁻⁸⁰.
            while product > limit && k < 200 {
                product *= self.unit_open();
                k += 1;
            }
            return k;
        }
        let x = lambda + lambda.sqrt() * self.normal();
        if x <= 0.0 {
            0
        } else {
            (x + 0.5) as u64
        }
    }

    /// An index drawn in proportion to integer weights given as running totals (`cumulative[i]` =
    /// sum of weights 0..=i). `None` if the total is zero.
    pub fn pick_cumulative(&mut self, cumulative: &[u64]) -> Option<usize> {
        let total = *cumulative.last()?;
        if total == 0 {
            return None;
        }
        let x = self.below(total);
        Some(cumulative.partition_point(|&c| c <= x))
    }

    /// An index drawn in proportion to small fixed weights.
    pub fn pick_weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| w as u64).sum();
        debug_assert!(total > 0);
        let mut x = self.below(total.max(1));
        for (i, &w) in weights.iter().enumerate() {
            if x < w as u64 {
                return i;
            }
            x -= w as u64;
        }
        weights.len() - 1
    }
}

const LN_2: f64 = core::f64::consts::LN_2;

/// Natural logarithm with basic IEEE operations only (relative error below 10⁻¹⁵ on normal
/// positive inputs); `x ≤ 0` gives −∞-like `-745.0`.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return -745.0;
    }
    if x.is_infinite() {
        return 710.0;
    }
    let mut bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64;
    if exponent == 0 {
        // Subnormal: scale up by 2⁵⁴ first.
        bits = (x * (1u64 << 54) as f64).to_bits();
        exponent = ((bits >> 52) & 0x7ff) as i64 - 54;
    }
    // m in [1, 2): then fold to [√½, √2) so the series converges fast.
    let mut e = exponent - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > core::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh s, s = (m − 1)/(m + 1), |s| ≤ 0.1716: odd series to s²¹.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    let mut k = 21.0;
    while k > 1.0 {
        sum = (sum + 1.0 / k) * s2;
        k -= 2.0;
    }
    let ln_m = 2.0 * s * (1.0 + sum);
    e as f64 * LN_2 + ln_m
}

/// e^x with basic IEEE operations only (relative error below 10⁻¹⁵); clamped to `[e⁻⁷⁰⁸, e⁷⁰⁹]`.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return 1.0;
    }
    let x = x.clamp(-708.0, 709.0);
    // x = k ln2 + r, |r| ≤ ln2/2; e^r by Taylor to r¹⁴ (|r|¹⁵/15! < 10⁻¹⁸).
    let k = (x / LN_2 + if x >= 0.0 { 0.5 } else { -0.5 }) as i64;
    // Cody–Waite: ln 2 split in two so k·ln2 is exact enough for |k| up to 1023 (fdlibm's constants).
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let r = (x - k as f64 * LN2_HI) - k as f64 * LN2_LO;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=14 {
        term = term * r / i as f64;
        sum += term;
    }
    // 2^k by building the exponent bits (k in [−1022, 1023] after the clamp).
    let k = k.clamp(-1022, 1023);
    sum * f64::from_bits(((k + 1023) as u64) << 52)
}

/// A non-negative float (major or minor units, the caller says) rounded half up to a multiple of
/// `step_minor` minor units; `scale` converts to minor units first (100 for major → CNY fen).
pub fn to_minor(value: f64, scale: u64, step_minor: u64) -> u64 {
    debug_assert!(step_minor > 0);
    if value.is_nan() || value <= 0.0 {
        return 0;
    }
    let minor = value * scale as f64;
    let capped = if minor > 1e15 { 1e15 } else { minor };
    let steps = (capped / step_minor as f64 + 0.5) as u64;
    steps * step_minor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_match_libm_closely() {
        for &x in &[1e-300, 1e-10, 0.001, 0.3, 0.5, 0.999, 1.0, 1.5, 2.0, 10.0, 12345.678, 1e200] {
            let ours = ln(x);
            let libm = x.ln();
            assert!((ours - libm).abs() <= 1e-14 * libm.abs().max(1.0), "ln({x}) {ours} vs {libm}");
        }
        for &x in &[-700.0, -20.0, -1.0, -0.1, 0.0, 0.1, 1.0, 2.5, 20.0, 700.0] {
            let ours = exp(x);
            let libm = x.exp();
            assert!((ours - libm).abs() <= 1e-14 * libm, "exp({x}) {ours} vs {libm}");
        }
    }

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7, 1);
                move |_| r.next_u64()
            })
            .collect();
        let mut again = Rng::new(7, 1);
        assert_eq!(a, (0..4).map(|_| again.next_u64()).collect::<Vec<_>>());
        let mut other = Rng::new(7, 2);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn samplers_have_the_right_means() {
        let mut r = Rng::new(1, 0);
        let n = 100_000;
        let poisson: f64 = (0..n).map(|_| r.poisson(3.5) as f64).sum::<f64>() / n as f64;
        assert!((poisson - 3.5).abs() < 0.05, "{poisson}");
        let big: f64 = (0..n).map(|_| r.poisson(80.0) as f64).sum::<f64>() / n as f64;
        assert!((big - 80.0).abs() < 0.3, "{big}");
        let normal: f64 = (0..n).map(|_| r.normal()).sum::<f64>() / n as f64;
        assert!(normal.abs() < 0.02, "{normal}");
        let mut logs: Vec<f64> = (0..n).map(|_| r.lognormal(50.0, 0.8)).collect();
        logs.sort_by(f64::total_cmp);
        assert!((logs[n / 2] - 50.0).abs() < 1.5, "median {}", logs[n / 2]);
        let below = (0..n).filter(|_| r.below(10) == 3).count();
        assert!((below as f64 / n as f64 - 0.1).abs() < 0.005);
    }

    #[test]
    fn rounding_to_minor_units() {
        assert_eq!(to_minor(12.345, 100, 1), 1_235);
        assert_eq!(to_minor(12.345, 100, 10), 1_230);
        assert_eq!(to_minor(12.6, 100, 100), 1_300);
        assert_eq!(to_minor(-3.0, 100, 1), 0);
        assert_eq!(to_minor(f64::NAN, 100, 1), 0);
    }
}
