//! Log-probabilities from a row of logits, summed in f64 as llama.cpp's perplexity does.

/// The largest logit, its index (the first on ties) and ln Σ exp(logit − max).
#[derive(Debug, Clone, Copy)]
pub struct RowSoftmax {
    pub max: f32,
    pub argmax: usize,
    pub log_sum_exp: f64,
}

impl RowSoftmax {
    pub fn new(row: &[f32]) -> Self {
        let (mut max, mut argmax) = (f32::NEG_INFINITY, 0);
        for (i, &l) in row.iter().enumerate() {
            if l > max {
                max = l;
                argmax = i;
            }
        }
        let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
        Self {
            max,
            argmax,
            log_sum_exp: sum.ln(),
        }
    }

    /// ln p(token).
    pub fn log_prob(&self, row: &[f32], token: u32) -> f64 {
        f64::from(row[token as usize] - self.max) - self.log_sum_exp
    }
}

/// Sums of per-token negative log-likelihoods and their squares, for a mean and its error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NllSums {
    pub nll: f64,
    pub nll2: f64,
    pub count: usize,
}

impl NllSums {
    pub fn add(&mut self, nll: f64) {
        self.nll += nll;
        self.nll2 += nll * nll;
        self.count += 1;
    }

    pub fn perplexity(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// Standard error of the perplexity: that of the mean NLL, carried through exp.
    pub fn perplexity_stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * self.perplexity()
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_are_a_distribution_and_match_the_naive_formula() {
        let row: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 11) as f32) * 0.7 - 3.0)
            .collect();
        let s = RowSoftmax::new(&row);
        let total: f64 = (0..50).map(|t| s.log_prob(&row, t).exp()).sum();
        // Each term is an f32 exp, as in llama.cpp.
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to {total}");
        let z: f64 = row.iter().map(|&l| f64::from(l).exp()).sum();
        for t in [0u32, 7, 49] {
            let naive = f64::from(row[t as usize]) - z.ln();
            assert!((s.log_prob(&row, t) - naive).abs() < 1e-6);
        }
        assert_eq!(row[s.argmax], s.max);
    }

    #[test]
    fn perplexity_of_a_uniform_guess_is_the_vocabulary_size() {
        let mut sums = NllSums::default();
        for _ in 0..10 {
            sums.add((32000f64).ln());
        }
        assert!((sums.perplexity() - 32000.0).abs() < 1e-6);
        // Equal terms: no spread, up to the rounding of Σx²/n − mean².
        assert!(sums.perplexity_stderr() / sums.perplexity() < 1e-6);
    }
}
