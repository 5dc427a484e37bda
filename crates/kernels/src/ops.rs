//! Elementwise and per-row operations of the transformer block.

use crate::dispatch::multiversion;

/// RMSNorm as HF computes it: `out = w ⊙ x / sqrt(mean(x²) + eps)`, compiled for the CPU's
/// instruction set. The squares are summed in order: summing them in lanes, or in f64, moved
/// a near-tie top-1 of SmolLM2 off llama.cpp's (tests/smollm2.rs).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_simd(crate::dispatch::isa(), x, weight, eps, out)
}

multiversion! {
    fn rms_norm_simd(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

/// e^x to about 1 ulp (Cephes' single-precision method: x = n·ln2 + r with |r| ≤ ln2/2, a
/// degree-6 polynomial for e^r, 2^n put in the exponent bits), in plain arithmetic so loops
/// over it vectorize; libm's `expf` is a call per value. The argument is clamped to
/// [−87.3, 88.7], where e^x stays a normal float: below, it gives e^−87.3 ≈ 1.2e−38 instead
/// of 0 or a subnormal (no f32 sum of softmax weights, one of them 1, can see it); above,
/// 3.3e38 instead of infinity.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// SwiGLU's gate: `gate ← silu(gate) ⊙ up`, vectorized for the CPU's instruction set.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_simd(crate::dispatch::isa(), gate, up)
}

multiversion! {
    fn silu_mul_simd(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + exp(-*g)) * u;
        }
    }
}

/// In-place softmax over a slice.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Which dimensions of a head rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// HF checkpoints: dimension i pairs with i + d/2 (`rotate_half`).
    SplitHalves,
    /// Mistral's original code and GGUF files: dimension 2i pairs with 2i + 1.
    Interleaved,
}

/// Rotates one head vector by the angles whose cosines and sines are given (d/2 each),
/// vectorized for the CPU's instruction set.
pub fn rope(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    rope_simd(crate::dispatch::isa(), head, cos, sin, layout)
}

multiversion! {
    fn rope_simd(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
        rope_body(head, cos, sin, layout)
    }
}

#[inline(always)]
fn rope_body(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = head.len() / 2;
    debug_assert_eq!(cos.len(), half);
    match layout {
        RopeLayout::SplitHalves => {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
        RopeLayout::Interleaved => {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * cos[i] - x1 * sin[i];
                pair[1] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within 2 ulp of e^x (in f64) over the normal range, and 1 at 0.
    #[test]
    fn exp_is_accurate_over_the_normal_range() {
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0) > 3e38);
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(
            worst < 2.0 * f32::EPSILON as f64,
            "worst relative error {worst}"
        );
    }

    /// silu(g)·u against the f64 formula, on every instruction set.
    #[test]
    fn silu_mul_matches_the_formula() {
        let g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 25.0).collect();
        let u: Vec<f32> = (0..1000)
            .map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0)
            .collect();
        for isa in [crate::dispatch::Isa::PORTABLE, crate::dispatch::isa()] {
            let mut out = g.clone();
            silu_mul_simd(isa, &mut out, &u);
            for ((o, &gv), &uv) in out.iter().zip(&g).zip(&u) {
                let want = gv as f64 / (1.0 + (-gv as f64).exp()) * uv as f64;
                assert!(
                    (*o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "{gv}: {o} vs {want}"
                );
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v = vec![1.0, 3.0, -2.0, 3.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[1] > v[0] && v[0] > v[2] && v[1] == v[3]);
    }

    #[test]
    fn rms_norm_has_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 5.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    /// Both layouts are the same rotation, up to the permutation llama.cpp's converter applies.
    #[test]
    fn rope_layouts_agree_under_the_converter_permutation() {
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let cos: Vec<f32> = (0..d / 2).map(|i| (0.7 * i as f32).cos()).collect();
        let sin: Vec<f32> = (0..d / 2).map(|i| (0.7 * i as f32).sin()).collect();
        let mut halves = x.clone();
        rope(&mut halves, &cos, &sin, RopeLayout::SplitHalves);
        // Converter permutation: interleaved[2i] = halves[i], interleaved[2i+1] = halves[i+d/2].
        let mut inter: Vec<f32> = (0..d)
            .map(|j| x[if j % 2 == 0 { j / 2 } else { j / 2 + d / 2 }])
            .collect();
        rope(&mut inter, &cos, &sin, RopeLayout::Interleaved);
        for i in 0..d / 2 {
            assert!((inter[2 * i] - halves[i]).abs() < 1e-6);
            assert!((inter[2 * i + 1] - halves[i + d / 2]).abs() < 1e-6);
        }
        // Rotation preserves the norm.
        let n0: f32 = x.iter().map(|v| v * v).sum();
        let n1: f32 = halves.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-5);
    }
}
