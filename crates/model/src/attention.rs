//! Causal, optionally windowed, grouped-query attention over the paged KV cache.
//!
//! Keys are visited one cache block at a time with an online softmax (running max m, running
//! sum l, running weighted sum of values), so no T×T score matrix exists even for long prompts:
//!   m' = max(m, max_j s_j);  acc ← acc·e^(m−m') + Σ_j e^(s_j−m')·v_j;  l ← l·e^(m−m') + Σ_j e^(s_j−m')

use rayon::prelude::*;

use crate::kv_cache::{KvPool, SeqKv, MAX_BLOCK_SIZE};

pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
}

/// A query row of the step: which sequence's cache it reads and its position.
pub struct QueryRow<'a> {
    pub kv: &'a SeqKv,
    pub pos: usize,
}

/// `out[t, h] = softmax(q[t,h]·K/√d) · V` over keys `pos−W+1 ..= pos` of row t's sequence.
/// `q` and `out` are `[T, n_heads·head_dim]`.
pub fn attend(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    rows: &[QueryRow<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / shape.n_heads, i % shape.n_heads);
        let qh = &q[i * hd..(i + 1) * hd];
        attend_one(pool, layer, shape, &rows[t], h, qh, o);
    });
}

fn attend_one(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    row: &QueryRow<'_>,
    head: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_dim = shape.n_kv_heads * hd;
    let kv_head = head / (shape.n_heads / shape.n_kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let bs = pool.layout().block_size;
    let first = shape.window.map_or(0, |w| (row.pos + 1).saturating_sub(w));
    let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
    out.fill(0.0);
    let mut scores = [0f32; MAX_BLOCK_SIZE];
    let mut start = first;
    while start <= row.pos {
        let (block, slot) = row.kv.locate(start, bs);
        let n = (bs - slot).min(row.pos + 1 - start);
        let (ks, vs) = pool.block_slots(block, layer, slot, n);
        let mut block_max = f32::NEG_INFINITY;
        for j in 0..n {
            let k = &ks[j * kv_dim + kv_head * hd..][..hd];
            let s = bora_kernels::dot_f32(q, k) * scale;
            scores[j] = s;
            block_max = block_max.max(s);
        }
        let m_new = m.max(block_max);
        let correction = (m - m_new).exp();
        if correction != 1.0 {
            for o in out.iter_mut() {
                *o *= correction;
            }
        }
        l *= correction;
        for j in 0..n {
            let p = (scores[j] - m_new).exp();
            l += p;
            let v = &vs[j * kv_dim + kv_head * hd..][..hd];
            for (o, vv) in out.iter_mut().zip(v) {
                *o += p * vv;
            }
        }
        m = m_new;
        start += n;
    }
    let inv = 1.0 / l;
    for o in out.iter_mut() {
        *o *= inv;
    }
}
