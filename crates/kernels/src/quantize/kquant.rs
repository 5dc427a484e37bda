//! K-quant blocks from f32 weights, as ggml's reference quantizers compute them
//! (`quantize_row_q{4,5,6}_K_ref`, what llama-quantize runs without an importance matrix).
//!
//! Each 32 weights (Q4_K, Q5_K) or 16 (Q6_K) get the scale, and for Q4_K/Q5_K the min, that a
//! small search finds best for a weighted squared error (`make_qkx2_quants`,
//! `make_qx_quants`); the group scales are then quantized to the super-block's 6- or 8-bit
//! grid and the weights quantized against what is stored. The arithmetic is ggml's, operation
//! for operation in f32 (ggml's reference code is compiled without FMA contraction, so each
//! product and sum rounds as it does here), with its rounding (`nearest_int`: half to even), so
//! the bytes are llama.cpp's: a test compares them with ggml's own output on the same rows.
//!
//! A plain choice (each group's range sets its scale) was the first version here; on rows
//! with outliers the search lowers the round-trip error of Q4_K by about a tenth (see the
//! tests), which is what separates llama-quantize's files from naive ones.

use crate::blocks::{f16_bytes, f16_le, QK_K};

/// ggml's smallest group maximum that is not treated as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: `x` rounded half to even by adding 1.5·2²³, bit for bit, including
/// what that gives for |x| ≥ 2²² (garbage its callers then clamp, as here).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// The f16 a value is stored as, read back: later steps quantize against what is stored.
fn as_stored(v: f32) -> f32 {
    f16_le(f16_bytes(v))
}

/// How `make_qkx2_quants` searches: `nstep + 1` scales of `(nmax + rmin + rdelta·i) / range`.
struct Search {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// Q4_K's search, and Q5_K's (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`).
const Q4_K_SEARCH: Search = Search {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
};
const Q5_K_SEARCH: Search = Search {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
};

/// ggml's `make_qkx2_quants` for 32 weights `x` with error weights `w`: levels `l` in
/// `0..=nmax` and the (scale, −min) of `x ≈ scale·l + min` (min ≤ 0) with the smallest
/// weighted squared error among the searched scales, each met by its least-squares fit.
fn scale_min_search(x: &[f32; 32], w: &[f32; 32], s: &Search, l: &mut [u8; 32]) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    // ggml's search reads `min` as it goes: a better fit's min moves the later scales' grid.
    let level =
        |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, s.nmax) as u8;
    let iscale = s.nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..32 {
        l[i] = level(iscale, x[i], min);
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for step in 0..=s.nstep {
        let iscale = (s.rmin + s.rdelta * step as f32 + s.nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            aux[i] = level(iscale, x[i], min);
            let li = aux[i] as f32;
            sum_l += w[i] * li;
            sum_l2 += w[i] * li * li;
            sum_xl += w[i] * li * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0f32;
            for i in 0..32 {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                error += w[i] * (diff * diff);
            }
            if error < best_error {
                *l = aux;
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type` 1 (errors weighted by x²), for Q6_K's 16 weights:
/// levels `l` (stored as `l + nmax`) and the scale of `x ≈ scale·l`, searched over 19 scales
/// around `nmax / max|x|`.
fn scale_search(x: &[f32; 16], nmax: i32, l: &mut [u8; 16]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l² for one scale, with w = x², in ggml's order of operations.
    let sums = |iscale: f32| {
        let (mut sum_lx, mut sum_l2) = (0f32, 0f32);
        for &v in x {
            let li = level(iscale, v) as f32;
            let w = v * v;
            sum_lx += w * v * li;
            sum_l2 += w * li * li;
        }
        (sum_lx, sum_l2)
    };
    let store = |iscale: f32, l: &mut [u8; 16]| {
        for (q, &v) in l.iter_mut().zip(x) {
            *q = (level(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    store(iscale, l);
    let (sum_lx, sum_l2) = sums(iscale);
    let mut scale = if sum_l2 != 0.0 { sum_lx / sum_l2 } else { 0.0 };
    let mut best = scale * sum_lx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sum_lx, sum_l2) = sums(iscale);
        if sum_l2 > 0.0 && sum_lx * sum_lx > best * sum_l2 {
            store(iscale, l);
            scale = sum_lx / sum_l2;
            best = scale * sum_lx;
        }
    }
    scale
}

/// The levels, 6-bit scales and mins, and d/dmin of one Q4_K or Q5_K super-block.
struct ScaleMinBlock {
    l: [u8; QK_K],
    /// The packed 12 bytes of eight 6-bit scales and eight 6-bit mins.
    scales: [u8; 12],
    d: f32,
    dmin: f32,
}

/// Q4_K's and Q5_K's common part (`quantize_row_q4_K_ref` up to the packing of the levels).
fn scale_min_block(x: &[f32], s: &Search) -> ScaleMinBlock {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (j, xs) in x.chunks_exact(32).enumerate() {
        let xs: &[f32; 32] = xs.try_into().expect("32 weights");
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let group: &mut [u8; 32] = (&mut l[32 * j..32 * j + 32]).try_into().expect("32");
        (scales[j], mins[j]) = scale_min_search(xs, &w, s, group);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml stores nearest_int into a u8 (wrapping) before taking the min with 63.
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let ls: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * scales[j]));
    let lm: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * mins[j]));
    let mut packed = [0u8; 12];
    for i in 0..4 {
        packed[i] = ls[i] | ((ls[i + 4] >> 4) << 6);
        packed[i + 4] = lm[i] | ((lm[i + 4] >> 4) << 6);
        packed[i + 8] = (ls[i + 4] & 0x0F) | ((lm[i + 4] & 0x0F) << 4);
    }
    let d = as_stored(max_scale / 63.0);
    let dmin = as_stored(max_min / 63.0);
    for (j, xs) in x.chunks_exact(32).enumerate() {
        let dl = d * ls[j] as f32;
        // A zero scale keeps the search's levels, as ggml does.
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * lm[j] as f32;
        for (q, &v) in l[32 * j..32 * j + 32].iter_mut().zip(xs) {
            *q = nearest_int((v + ml) / dl).clamp(0, s.nmax) as u8;
        }
    }
    ScaleMinBlock {
        l,
        scales: packed,
        d,
        dmin,
    }
}

/// Q4_K: 8 groups of 32, `w = d·sc·q − dmin·m` with q in 0..16 and 6-bit sc, m.
pub(super) fn q4_k(x: &[f32], out: &mut [u8]) {
    let b = scale_min_block(x, &Q4_K_SEARCH);
    out[..2].copy_from_slice(&f16_bytes(b.d));
    out[2..4].copy_from_slice(&f16_bytes(b.dmin));
    out[4..16].copy_from_slice(&b.scales);
    let qs = &mut out[16..];
    for c in 0..4 {
        for i in 0..32 {
            qs[32 * c + i] = b.l[64 * c + i] | (b.l[64 * c + 32 + i] << 4);
        }
    }
}

/// Q5_K: Q4_K with q in 0..32, the fifth bits in 32 bytes (bit 2c of byte i: weight 64c + i's,
/// bit 2c + 1: weight 64c + 32 + i's) before the low nibbles.
pub(super) fn q5_k(x: &[f32], out: &mut [u8]) {
    let b = scale_min_block(x, &Q5_K_SEARCH);
    out[..2].copy_from_slice(&f16_bytes(b.d));
    out[2..4].copy_from_slice(&f16_bytes(b.dmin));
    out[4..16].copy_from_slice(&b.scales);
    let (qh, qs) = out[16..].split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        for i in 0..32 {
            let (lo, hi) = (b.l[64 * c + i], b.l[64 * c + 32 + i]);
            qh[i] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            qs[32 * c + i] = (lo & 0x0F) | ((hi & 0x0F) << 4);
        }
    }
}

/// Q6_K: 16 groups of 16, `w = d·sc·(q − 32)` with q in 0..64 and i8 sc.
pub(super) fn q6_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (g, xs) in x.chunks_exact(16).enumerate() {
        let xs: &[f32; 16] = xs.try_into().expect("16 weights");
        let group: &mut [u8; 16] = (&mut l[16 * g..16 * g + 16]).try_into().expect("16");
        scales[g] = scale_search(xs, 32, group);
        if scales[g].abs() > max_abs_scale {
            max_abs_scale = scales[g].abs();
            max_scale = scales[g];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = as_stored(1.0 / iscale);
    let sc: [i8; 16] = std::array::from_fn(|g| nearest_int(iscale * scales[g]).min(127) as i8);
    for (g, xs) in x.chunks_exact(16).enumerate() {
        let dl = d * sc[g] as f32;
        // A zero scale keeps the search's levels, as ggml does.
        if dl == 0.0 {
            continue;
        }
        for (q, &v) in l[16 * g..16 * g + 16].iter_mut().zip(xs) {
            *q = (nearest_int(v / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(QK_K / 2);
    let (qh, rest) = rest.split_at_mut(QK_K / 4);
    let (scale_bytes, d_bytes) = rest.split_at_mut(QK_K / 16);
    for h in 0..2 {
        for i in 0..32 {
            let e = |r: usize| l[128 * h + 32 * r + i];
            ql[64 * h + i] = (e(0) & 0x0F) | ((e(2) & 0x0F) << 4);
            ql[64 * h + 32 + i] = (e(1) & 0x0F) | ((e(3) & 0x0F) << 4);
            qh[32 * h + i] =
                (e(0) >> 4) | ((e(1) >> 4) << 2) | ((e(2) >> 4) << 4) | ((e(3) >> 4) << 6);
        }
    }
    for (o, s) in scale_bytes.iter_mut().zip(sc) {
        *o = s as u8;
    }
    d_bytes.copy_from_slice(&f16_bytes(d));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even_as_ggml() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
        for i in -5000..5000 {
            let x = i as f32 * 0.37;
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }
}
