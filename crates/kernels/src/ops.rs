//! Elementwise and per-row operations of the transformer block.

/// RMSNorm as HF computes it: `out = w ⊙ x / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// SwiGLU's gate: `gate ← silu(gate) ⊙ up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
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

/// Rotates one head vector by the angles whose cosines and sines are given (d/2 each).
pub fn rope(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
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
