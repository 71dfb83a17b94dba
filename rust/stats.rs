//! The numbers of docs/method.md §2: quantiles, IQR sigma, the Marchenko-Pastur threshold, signal
//! and noise sums and the normalised signal-to-noise ratio of one weight matrix, given
//! its singular values.

/// What to report when no singular value is at or below the threshold (docs/method.md §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoNoise {
    /// Current reference tool: the noise sum is taken as 1.0.
    One,
    /// Older reference versions: the SNR is `+inf`.
    Infinity,
}

/// Everything the statistics say about one matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spectrum {
    /// `signal / noise / S[0]`; NaN for an all-zero or non-finite matrix.
    pub snr: f64,
    pub sigma: f64,
    pub threshold: f64,
    /// The largest singular value `S[0]`.
    pub max_singular_value: f64,
    /// How many singular values are strictly above the threshold.
    pub n_signal: usize,
}

/// The `q` quantile of values sorted ascending, with linear interpolation between order
/// statistics, computed the way numpy's default method does (including its choice of
/// which end to interpolate from).
pub fn quantile_sorted(sorted_asc: &[f64], q: f64) -> f64 {
    let n = sorted_asc.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let t = pos - lo as f64;
    let (a, b) = (sorted_asc[lo], sorted_asc[hi]);
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// `(q75 - q25) / 1.349`: the noise scale estimated from the interquartile range.
pub fn iqr_sigma(sorted_asc: &[f64]) -> f64 {
    (quantile_sorted(sorted_asc, 0.75) - quantile_sorted(sorted_asc, 0.25)) / 1.349
}

/// `sigma * (1 + sqrt(beta))` with `beta = min(n, m) / max(n, m)`.
pub fn marchenko_pastur_threshold(sigma: f64, rows: usize, cols: usize) -> f64 {
    let (small, large) = if rows < cols { (rows, cols) } else { (cols, rows) };
    let beta = if large == 0 { 0.0 } else { small as f64 / large as f64 };
    sigma * (1.0 + beta.sqrt())
}

/// The spectrum statistics of a `rows x cols` matrix from its singular values, in any
/// order (they are sorted here). Negative values, which an eigenvalue route can leave
/// from rounding, are clamped at 0.
pub fn spectrum(singular_values: &[f64], rows: usize, cols: usize, no_noise: NoNoise) -> Spectrum {
    let nan =
        Spectrum { snr: f64::NAN, sigma: f64::NAN, threshold: f64::NAN, max_singular_value: f64::NAN, n_signal: 0 };
    if singular_values.is_empty() || singular_values.iter().any(|s| !s.is_finite()) {
        return nan;
    }
    let mut s: Vec<f64> = singular_values.iter().map(|&v| v.max(0.0)).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let max = s[s.len() - 1];
    let sigma = iqr_sigma(&s);
    let threshold = marchenko_pastur_threshold(sigma, rows, cols);
    if max == 0.0 {
        // An all-zero matrix has no spectrum (docs/method.md §2.7).
        return Spectrum { max_singular_value: 0.0, sigma, threshold, ..nan };
    }
    let (mut signal, mut noise, mut n_signal, mut n_noise) = (0.0f64, 0.0f64, 0usize, 0usize);
    for &v in &s {
        if v > threshold {
            signal += v;
            n_signal += 1;
        } else {
            noise += v;
            n_noise += 1;
        }
    }
    let ratio = if n_noise == 0 {
        match no_noise {
            NoNoise::One => signal / 1.0,
            NoNoise::Infinity => f64::INFINITY,
        }
    } else if noise == 0.0 {
        f64::INFINITY
    } else {
        signal / noise
    };
    Spectrum { snr: ratio / max, sigma, threshold, max_singular_value: max, n_signal }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.quantile([1, 2, 4, 8, 16], [0.25, 0.75]) == [2.0, 8.0]
        let v = [1.0, 2.0, 4.0, 8.0, 16.0];
        assert_eq!(quantile_sorted(&v, 0.25), 2.0);
        assert_eq!(quantile_sorted(&v, 0.75), 8.0);
        // numpy.quantile([1, 2, 3, 10], 0.25) == 1.75, 0.75 -> 4.75
        let w = [1.0, 2.0, 3.0, 10.0];
        assert!((quantile_sorted(&w, 0.25) - 1.75).abs() < 1e-15);
        assert!((quantile_sorted(&w, 0.75) - 4.75).abs() < 1e-15);
        assert_eq!(quantile_sorted(&[3.0], 0.25), 3.0);
    }

    #[test]
    fn hand_computed_spectrum() {
        // S = [10, 4, 3, 2, 1] for a 5x8 matrix.
        // q25 = 2, q75 = 4, sigma = 2/1.349, beta = 5/8.
        let s = [1.0, 10.0, 3.0, 2.0, 4.0];
        let r = spectrum(&s, 5, 8, NoNoise::One);
        let sigma = 2.0 / 1.349;
        let thr = sigma * (1.0 + (5.0f64 / 8.0).sqrt());
        assert!((r.sigma - sigma).abs() < 1e-12);
        assert!((r.threshold - thr).abs() < 1e-12);
        // thr ~ 2.6548: signal = 10 + 4 + 3 = 17, noise = 2 + 1 = 3.
        assert_eq!(r.n_signal, 3);
        assert!((r.snr - 17.0 / 3.0 / 10.0).abs() < 1e-12);
        assert_eq!(r.max_singular_value, 10.0);
    }

    #[test]
    fn no_noise_rule_and_its_legacy_variant() {
        // One value: sigma 0, threshold 0, everything is signal.
        let r = spectrum(&[5.0], 1, 7, NoNoise::One);
        assert_eq!(r.snr, 1.0);
        let r = spectrum(&[5.0], 1, 7, NoNoise::Infinity);
        assert_eq!(r.snr, f64::INFINITY);
        // Noise values that exist but sum to zero: +inf in both variants.
        // S = [3, 3, 3, 0]: q25 = 2.25, q75 = 3, threshold ~ 1.11, noise = {0}.
        let r = spectrum(&[3.0, 3.0, 3.0, 0.0], 4, 4, NoNoise::One);
        assert_eq!(r.n_signal, 3);
        assert_eq!(r.snr, f64::INFINITY);
    }

    #[test]
    fn zero_and_non_finite_give_nan() {
        assert!(spectrum(&[0.0, 0.0], 2, 2, NoNoise::One).snr.is_nan());
        assert!(spectrum(&[1.0, f64::NAN], 2, 2, NoNoise::One).snr.is_nan());
        assert!(spectrum(&[f64::INFINITY, 1.0], 2, 2, NoNoise::One).snr.is_nan());
        assert!(spectrum(&[], 0, 0, NoNoise::One).snr.is_nan());
    }

    #[test]
    fn tiny_negative_eigenvalue_noise_is_clamped() {
        let a = spectrum(&[-1e-12, 1.0, 2.0, 3.0], 4, 4, NoNoise::One);
        let b = spectrum(&[0.0, 1.0, 2.0, 3.0], 4, 4, NoNoise::One);
        assert_eq!(a, b);
    }
}
