//! Sampling as a chain of small steps over candidate tokens, in llama.cpp's order:
//! repetition penalty → top-k → top-p → min-p → temperature → draw (or argmax at temp 0).

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 → greedy.
    pub temperature: f32,
    /// 0 → off.
    pub top_k: usize,
    /// 1 → off.
    pub top_p: f32,
    /// 0 → off.
    pub min_p: f32,
    /// 1 → off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::Sampling(m.to_string()));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p must be in [0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat penalty must be > 0");
        }
        Ok(())
    }
}

/// splitmix64: small, seedable, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

#[derive(Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// The index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks the next token from `logits`; `history` is the sequence so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(EngineError::Sampling(
                "no logits to sample from".to_string(),
            ));
        }
        Ok(self.sample_nonempty(logits, history))
    }

    fn sample_nonempty(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut c: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
            })
            .collect();
        if p.repeat_penalty != 1.0 {
            penalize_repeats(&mut c, history, p.repeat_last_n, p.repeat_penalty);
        }
        if p.temperature == 0.0 {
            let l: Vec<f32> = c.iter().map(|c| c.logit).collect();
            return argmax(&l);
        }
        c.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
        if p.top_k > 0 {
            c.truncate(p.top_k.max(1));
        }
        let probs = softmax_of(&c, 1.0);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    cum += q;
                    cum >= p.top_p
                })
                .map_or(c.len(), |i| i + 1);
            c.truncate(keep);
        }
        if p.min_p > 0.0 {
            let probs = softmax_of(&c, 1.0);
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            c.truncate(keep);
        }
        let probs = softmax_of(&c, p.temperature);
        let r = self.rng.next_f32();
        let mut cum = 0.0;
        for (cand, q) in c.iter().zip(&probs) {
            cum += q;
            if r < cum {
                return cand.id;
            }
        }
        c.last().map_or(0, |x| x.id)
    }
}

fn penalize_repeats(c: &mut [Candidate], history: &[u32], last_n: usize, penalty: f32) {
    let start = history.len().saturating_sub(last_n);
    let mut seen = std::collections::HashSet::new();
    for &id in &history[start..] {
        if seen.insert(id) {
            if let Some(x) = c.get_mut(id as usize) {
                x.logit = if x.logit > 0.0 {
                    x.logit / penalty
                } else {
                    x.logit * penalty
                };
            }
        }
    }
}

/// Probabilities of sorted candidates at a temperature.
fn softmax_of(c: &[Candidate], temperature: f32) -> Vec<f32> {
    let max = c.first().map_or(0.0, |x| x.logit);
    let mut p: Vec<f32> = c
        .iter()
        .map(|x| ((x.logit - max) / temperature).exp())
        .collect();
    let s: f32 = p.iter().sum();
    for v in &mut p {
        *v /= s;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9], &[]).unwrap(), 1);
    }

    #[test]
    fn repeat_penalty_can_change_the_argmax() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9], &[1]).unwrap(), 3);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 1.0,
            ..SamplingParams::default()
        })
        .unwrap();
        assert_eq!(s.sample(&logits, &[]).unwrap(), argmax(&logits));
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..SamplingParams::default()
            })
            .unwrap();
            (0..20)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn samples_follow_the_distribution() {
        // Two tokens with p = e/(1+e) ≈ 0.731 and 0.269 at temperature 1.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 1,
            ..SamplingParams::default()
        })
        .unwrap();
        let n = 20000;
        let ones = (0..n)
            .filter(|_| s.sample(&[1.0, 0.0], &[]).unwrap() == 0)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.731).abs() < 0.02, "{frac}");
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [5.0, 0.0, -5.0];
        for params in [
            SamplingParams {
                min_p: 0.5,
                top_p: 1.0,
                top_k: 0,
                temperature: 1.0,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 0.0,
                top_p: 0.5,
                top_k: 0,
                temperature: 1.0,
                ..SamplingParams::default()
            },
        ] {
            let mut s = Sampler::new(params).unwrap();
            assert!((0..200).all(|_| s.sample(&logits, &[]).unwrap() == 0));
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        }
        .validate()
        .is_err());
    }
}
