//! How far a model's predictions moved from a base run's: the KL divergence per token, top-1
//! agreement and the change in perplexity, with the statistics llama.cpp's
//! `--kl-divergence` reports, on a base file either program saved.

use crate::logits_file::BaseRow;
use crate::logprob::{NllSums, RowSoftmax};

/// Log-probs below this are left out of the KL sum, as llama.cpp does (they carry < 1e-7).
const NEGLIGIBLE: f32 = -16.0;

#[derive(Debug, Default)]
pub struct KlAccumulator {
    nll: NllSums,
    nll_base: NllSums,
    kld: Vec<f64>,
    same_top: usize,
    /// Σ (p − p_base)² of the target token's probability.
    p_diff2: f64,
}

impl KlAccumulator {
    /// One scored position: this model's logits, the base's stored log-probs, the target.
    pub fn add(&mut self, logits: &[f32], base: &BaseRow<'_>, target: u32) {
        let s = RowSoftmax::new(logits);
        let lp = s.log_prob(logits, target);
        self.nll.add(-lp);
        let lp_base = base.log_prob(target as usize);
        self.nll_base.add(-f64::from(lp_base));
        let (mut kld, mut top_base, mut best) = (0f64, 0usize, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            let b = base.log_prob(i);
            if b > best {
                best = b;
                top_base = i;
            }
            if b > NEGLIGIBLE {
                let log_p = f64::from(l - s.max) - s.log_sum_exp;
                kld += f64::from(b.exp()) * (f64::from(b) - log_p);
            }
        }
        self.kld.push(kld);
        self.same_top += usize::from(top_base == s.argmax);
        let d = lp.exp() - f64::from(lp_base).exp();
        self.p_diff2 += d * d;
    }

    pub fn report(&self) -> KlReport {
        let n = self.kld.len();
        let nf = n.max(1) as f64;
        let mean = self.kld.iter().sum::<f64>() / nf;
        let var = self
            .kld
            .iter()
            .map(|k| (k - mean) * (k - mean))
            .sum::<f64>()
            / nf;
        let mut sorted = self.kld.clone();
        sorted.sort_by(f64::total_cmp);
        // Linear interpolation between the nearest ranks, as llama.cpp reports them.
        let pct = |q: f64| {
            let Some(&last) = sorted.last() else {
                return 0.0;
            };
            let p = q * (sorted.len() - 1) as f64;
            let i = p as usize;
            let next = sorted.get(i + 1).copied().unwrap_or(last);
            (1.0 - (p - i as f64)) * sorted[i] + (p - i as f64) * next
        };
        let same = self.same_top as f64 / nf;
        let (ppl, ppl_base) = (self.nll.perplexity(), self.nll_base.perplexity());
        KlReport {
            tokens: n,
            perplexity: ppl,
            perplexity_stderr: self.nll.perplexity_stderr(),
            base_perplexity: ppl_base,
            base_perplexity_stderr: self.nll_base.perplexity_stderr(),
            delta_perplexity: ppl - ppl_base,
            perplexity_ratio: ppl / ppl_base,
            kld_mean: mean,
            kld_stderr: if n > 1 {
                (var / (nf - 1.0)).sqrt()
            } else {
                0.0
            },
            kld_median: pct(0.5),
            kld_p99: pct(0.99),
            kld_max: sorted.last().copied().unwrap_or(0.0),
            same_top: same,
            same_top_stderr: if n > 1 {
                (same * (1.0 - same) / (nf - 1.0)).sqrt()
            } else {
                0.0
            },
            delta_p_rms: (self.p_diff2 / nf).sqrt(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KlReport {
    pub tokens: usize,
    pub perplexity: f64,
    pub perplexity_stderr: f64,
    pub base_perplexity: f64,
    pub base_perplexity_stderr: f64,
    pub delta_perplexity: f64,
    pub perplexity_ratio: f64,
    /// Mean over positions of KL(base ‖ this model), in nats.
    pub kld_mean: f64,
    pub kld_stderr: f64,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Share of positions where both put the same token first.
    pub same_top: f64,
    pub same_top_stderr: f64,
    /// RMS change of the probability given to the actual next token.
    pub delta_p_rms: f64,
}
