//! Rotary position embedding: per-position cos/sin, computed once per step for all layers.

/// `inv_freq[i] = θ^(−2i/d)`, rounded to f32 as transformers computes it.
pub struct Rope {
    inv_freq: Vec<f32>, // [head_dim / 2]
}

/// cos and sin of every token's angles in a step: `[tokens, head_dim / 2]` each.
#[derive(Default)]
pub struct RopeAngles {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / ((theta as f32) as f64).powf(exponent as f64) as f32
            })
            .collect();
        Self { inv_freq }
    }

    /// Fills `angles` with the cos and sin of each position's angles, reusing its buffers.
    pub fn angles_into(&self, positions: impl Iterator<Item = usize>, angles: &mut RopeAngles) {
        let half = self.inv_freq.len();
        let RopeAngles { cos, sin, .. } = angles;
        cos.clear();
        sin.clear();
        for p in positions {
            for &f in &self.inv_freq {
                // The angle is an f32 product, as in the reference; its cos/sin are then exact.
                let a = (p as f32 * f) as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        angles.half = half;
    }
}

impl RopeAngles {
    pub fn row(&self, t: usize) -> (&[f32], &[f32]) {
        let r = t * self.half..(t + 1) * self.half;
        (&self.cos[r.clone()], &self.sin[r])
    }
}
