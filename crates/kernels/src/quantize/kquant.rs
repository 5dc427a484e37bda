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
//! A plain choice (each group's range sets its scale) was the first version here; against it
//! the searches lower the round-trip RMS error by 7–9% for Q4_K and 1–6% for Q6_K on normal
//! and heavy-tailed rows (BENCHMARKS.md, "`bora quantize`").

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

/// Groups searched at once, one per lane: a super-block's eight 32-weight groups (Q4_K,
/// Q5_K), or half of its sixteen 16-weight groups (Q6_K).
const LANES: usize = 8;

/// One f32 per group.
type Lanes = [f32; LANES];

/// ggml's `make_qkx2_quants` for eight groups of 32 weights at once: `x[i][g]` is weight i of
/// group g, `w` its error weight. Each group gets levels `l[i][g]` in `0..=nmax` and the
/// (scale, −min) of `x ≈ scale·l + min` (min ≤ 0) with the smallest weighted squared error
/// among the searched scales, each met by its least-squares fit. Every lane runs ggml's
/// operations in ggml's order (its branches become selects), so each group's result is
/// ggml's to the bit; the lanes only let the compiler run eight groups per instruction, where
/// one group's sums are chains of dependent adds.
#[inline(always)]
fn scale_min_search(
    x: &[Lanes; 32],
    w: &[Lanes; 32],
    s: &Search,
    l: &mut [[u8; LANES]; 32],
) -> (Lanes, Lanes) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x: Lanes = std::array::from_fn(|g| w[0][g] * x[0][g]);
    for i in 1..32 {
        for g in 0..LANES {
            if x[i][g] < min[g] {
                min[g] = x[i][g];
            }
            if x[i][g] > max[g] {
                max[g] = x[i][g];
            }
            sum_w[g] += w[i][g];
            sum_x[g] += w[i][g] * x[i][g];
        }
    }
    for m in &mut min {
        if *m > 0.0 {
            *m = 0.0;
        }
    }
    // A flat group is all zeros in ggml; its lane computes garbage below, replaced at the end.
    let flat: [bool; LANES] = std::array::from_fn(|g| max[g] == min[g]);
    let flat_min = min;
    let nmax = s.nmax as f32;
    let level =
        |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, s.nmax) as u8;
    let mut scale: Lanes = std::array::from_fn(|g| 1.0 / (nmax / (max[g] - min[g])));
    let mut best_error = [0f32; LANES];
    for i in 0..32 {
        for g in 0..LANES {
            let iscale = nmax / (max[g] - min[g]);
            l[i][g] = level(iscale, x[i][g], min[g]);
            let diff = scale[g] * l[i][g] as f32 + min[g] - x[i][g];
            best_error[g] += w[i][g] * (diff * diff);
        }
    }
    let mut aux = [[0u8; LANES]; 32];
    for step in 0..=s.nstep {
        // ggml's search reads `min` as it goes: a better fit's min moves the later scales' grid.
        let numerator = s.rmin + s.rdelta * step as f32 + nmax;
        let iscale: Lanes = std::array::from_fn(|g| numerator / (max[g] - min[g]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for i in 0..32 {
            for g in 0..LANES {
                aux[i][g] = level(iscale[g], x[i][g], min[g]);
                let li = aux[i][g] as f32;
                sum_l[g] += w[i][g] * li;
                sum_l2[g] += w[i][g] * li * li;
                sum_xl[g] += w[i][g] * li * x[i][g];
            }
        }
        let mut this_scale = [0f32; LANES];
        let mut this_min = [0f32; LANES];
        let mut fits = [false; LANES];
        for g in 0..LANES {
            let det = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g];
            fits[g] = det > 0.0;
            this_scale[g] = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / det;
            this_min[g] = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / det;
            if this_min[g] > 0.0 {
                this_min[g] = 0.0;
                this_scale[g] = sum_xl[g] / sum_l2[g];
            }
        }
        let mut error = [0f32; LANES];
        for i in 0..32 {
            for g in 0..LANES {
                let diff = this_scale[g] * aux[i][g] as f32 + this_min[g] - x[i][g];
                error[g] += w[i][g] * (diff * diff);
            }
        }
        let better: [bool; LANES] = std::array::from_fn(|g| fits[g] && error[g] < best_error[g]);
        take_levels(&better, &aux, l);
        for g in 0..LANES {
            if better[g] {
                best_error[g] = error[g];
                scale[g] = this_scale[g];
                min[g] = this_min[g];
            }
        }
    }
    for g in (0..LANES).filter(|&g| flat[g]) {
        l.iter_mut().for_each(|li| li[g] = 0);
        scale[g] = 0.0;
        min[g] = flat_min[g];
    }
    (scale, min.map(|m| -m))
}

/// ggml's `make_qx_quants` with `rmse_type` 1 (errors weighted by x²) for eight groups of 16
/// weights at once (`x[i][g]`, as [`scale_min_search`]): levels `l` (stored as `l + nmax`) and
/// the scale of `x ≈ scale·l`, searched over 19 scales around `nmax / max|x|`.
#[inline(always)]
fn scale_search(x: &[Lanes; 16], nmax: i32, l: &mut [[u8; LANES]; 16]) -> Lanes {
    let mut max = [0f32; LANES];
    let mut amax = [0f32; LANES];
    for xi in x {
        for g in 0..LANES {
            if xi[g].abs() > amax[g] {
                amax[g] = xi[g].abs();
                max[g] = xi[g];
            }
        }
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Each lane's levels at its scale, and Σ w·x·l and Σ w·l² with w = x², in ggml's order.
    let sums = |iscale: &Lanes, levels: &mut [[u8; LANES]; 16]| {
        let (mut sum_lx, mut sum_l2) = ([0f32; LANES], [0f32; LANES]);
        for (xi, li) in x.iter().zip(levels.iter_mut()) {
            for g in 0..LANES {
                let q = level(iscale[g], xi[g]);
                li[g] = (q + nmax) as u8;
                let (q, w) = (q as f32, xi[g] * xi[g]);
                sum_lx[g] += w * xi[g] * q;
                sum_l2[g] += w * q * q;
            }
        }
        (sum_lx, sum_l2)
    };
    let iscale: Lanes = std::array::from_fn(|g| -(nmax as f32) / max[g]);
    let (sum_lx, sum_l2) = sums(&iscale, l);
    let mut scale: Lanes = std::array::from_fn(|g| {
        if sum_l2[g] != 0.0 {
            sum_lx[g] / sum_l2[g]
        } else {
            0.0
        }
    });
    let mut best: Lanes = std::array::from_fn(|g| scale[g] * sum_lx[g]);
    let mut aux = [[0u8; LANES]; 16];
    for is in (-9..=9).filter(|&is| is != 0) {
        let numerator = -(nmax as f32 + 0.1 * is as f32);
        let iscale: Lanes = std::array::from_fn(|g| numerator / max[g]);
        let (sum_lx, sum_l2) = sums(&iscale, &mut aux);
        let better: [bool; LANES] =
            std::array::from_fn(|g| sum_l2[g] > 0.0 && sum_lx[g] * sum_lx[g] > best[g] * sum_l2[g]);
        take_levels(&better, &aux, l);
        for g in 0..LANES {
            if better[g] {
                scale[g] = sum_lx[g] / sum_l2[g];
                best[g] = scale[g] * sum_lx[g];
            }
        }
    }
    // An all-zero group (ggml's test) has zero levels and scale.
    for g in (0..LANES).filter(|&g| amax[g] < GROUP_MAX_EPS) {
        l.iter_mut().for_each(|li| li[g] = 0);
        scale[g] = 0.0;
    }
    scale
}

/// Each group's levels from `found` where `better` says so.
#[inline(always)]
fn take_levels<const N: usize>(
    better: &[bool; LANES],
    found: &[[u8; LANES]; N],
    l: &mut [[u8; LANES]; N],
) {
    for (li, fi) in l.iter_mut().zip(found) {
        for g in 0..LANES {
            if better[g] {
                li[g] = fi[g];
            }
        }
    }
}

/// `x` (groups of `N` weights, LANES of them) laid out as `[weight][group]`.
#[inline(always)]
fn by_lanes<const N: usize>(x: &[f32]) -> [Lanes; N] {
    std::array::from_fn(|i| std::array::from_fn(|g| x[N * g + i]))
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, detected just above.
        return unsafe { scale_min_block_avx2(x, s) };
    }
    scale_min_block_lanes(x, s)
}

/// [`scale_min_block_lanes`] compiled for AVX2: eight lanes an instruction where x86-64's
/// baseline (SSE2) has four. The same operations, so the same bits (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scale_min_block_avx2(x: &[f32], s: &Search) -> ScaleMinBlock {
    scale_min_block_lanes(x, s)
}

#[inline(always)]
fn scale_min_block_lanes(x: &[f32], s: &Search) -> ScaleMinBlock {
    let xt = by_lanes::<32>(x);
    let mut w = [[0f32; LANES]; 32];
    for g in 0..LANES {
        let mut sum_x2 = 0f32;
        for xi in &xt {
            sum_x2 += xi[g] * xi[g];
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (wi, xi) in w.iter_mut().zip(&xt) {
            wi[g] = av_x + xi[g].abs();
        }
    }
    let mut lt = [[0u8; LANES]; 32];
    let (scales, mins) = scale_min_search(&xt, &w, s, &mut lt);
    let mut l: [u8; QK_K] = std::array::from_fn(|k| lt[k % 32][k / 32]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..LANES {
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

/// Q6_K's sixteen groups searched, eight at a time: their levels and scales.
fn q6_k_search(x: &[f32]) -> ([u8; QK_K], [f32; 16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, detected just above.
        return unsafe { q6_k_search_avx2(x) };
    }
    q6_k_search_lanes(x)
}

/// [`q6_k_search_lanes`] compiled for AVX2, as [`scale_min_block_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn q6_k_search_avx2(x: &[f32]) -> ([u8; QK_K], [f32; 16]) {
    q6_k_search_lanes(x)
}

#[inline(always)]
fn q6_k_search_lanes(x: &[f32]) -> ([u8; QK_K], [f32; 16]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    for half in 0..2 {
        let xs = &x[128 * half..128 * half + 128];
        let mut lt = [[0u8; LANES]; 16];
        let found = scale_search(&by_lanes::<16>(xs), 32, &mut lt);
        scales[LANES * half..LANES * half + LANES].copy_from_slice(&found);
        for (k, q) in l[128 * half..128 * half + 128].iter_mut().enumerate() {
            *q = lt[k % 16][k / 16];
        }
    }
    (l, scales)
}

/// Q6_K: 16 groups of 16, `w = d·sc·(q − 32)` with q in 0..64 and i8 sc.
pub(super) fn q6_k(x: &[f32], out: &mut [u8]) {
    let (mut l, scales) = q6_k_search(x);
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &sc in &scales {
        if sc.abs() > max_abs_scale {
            max_abs_scale = sc.abs();
            max_scale = sc;
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

    /// The AVX2 build of the searches against the baseline one, on rows like real weights and
    /// on degenerate ones: the same levels, scales and mins to the bit.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_searches_equal_the_baseline_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: skipped");
            return;
        }
        let mut seed = 9u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for case in 0..64 {
            let x: Vec<f32> = (0..QK_K)
                .map(|i| match case % 4 {
                    0 => next() * 0.05,
                    1 if i % 37 == 0 => next() * 20.0,
                    2 if i < 64 => 0.0,
                    3 => next().abs(),
                    _ => next(),
                })
                .collect();
            for s in [&Q4_K_SEARCH, &Q5_K_SEARCH] {
                let a = scale_min_block_lanes(&x, s);
                // SAFETY: AVX2 was detected above.
                let b = unsafe { scale_min_block_avx2(&x, s) };
                assert_eq!((a.l, a.scales), (b.l, b.scales), "case {case}");
                assert_eq!(
                    (a.d.to_bits(), a.dmin.to_bits()),
                    (b.d.to_bits(), b.dmin.to_bits())
                );
            }
            let (la, sa) = q6_k_search_lanes(&x);
            // SAFETY: AVX2 was detected above.
            let (lb, sb) = unsafe { q6_k_search_avx2(&x) };
            assert_eq!(la, lb, "case {case}");
            assert_eq!(sa.map(f32::to_bits), sb.map(f32::to_bits), "case {case}");
        }
    }

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
