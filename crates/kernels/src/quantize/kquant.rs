//! K-quant blocks from f32 weights, as ggml's reference quantizers compute them
//! (`quantize_row_q{2,3,4,5,6}_K_ref`, what llama-quantize runs without an importance matrix).
//!
//! Each 32 weights (Q4_K, Q5_K) or 16 (Q2_K, Q3_K, Q6_K) get the scale, and for Q2_K, Q4_K and
//! Q5_K the min, that a small search finds best: over a range of scales for a weighted squared
//! error (`make_qkx2_quants`; Q2_K's weighs absolute errors), over 19 scales (`make_qx_quants`,
//! Q6_K), or by moving single levels while the fit improves (`make_q3_quants`, Q3_K). The group
//! scales are then quantized to the super-block's 4-, 6- or 8-bit grid and the weights
//! quantized against what is stored. The arithmetic is ggml's, operation for operation in f32
//! (ggml's reference code is compiled without FMA contraction, so each product and sum rounds
//! as it does here), with its rounding (`nearest_int`: half to even), so the bytes are
//! llama.cpp's: a test compares them with ggml's own output on the same rows.
//!
//! The searches run eight groups at once, one per lane. The portable code is the reference;
//! on x86-64 with AVX2 the searches are intrinsics ([`avx2`]), tested equal to it bit for bit.
//!
//! A plain choice (each group's range sets its scale) was the first version here; against it
//! the searches lower the round-trip RMS error by 7–9% for Q4_K and 1–6% for Q6_K on normal
//! and heavy-tailed rows (BENCHMARKS.md, "`bora quantize`").

use crate::blocks::{f16_bytes, f16_le, QK_K};
use crate::DType;

#[cfg(target_arch = "x86_64")]
mod avx2;

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

/// How `make_qkx2_quants` searches: `nstep + 1` scales of `(nmax + rmin + rdelta·i) / range`,
/// each judged by its weighted squared error, or with `mad` its weighted absolute error.
struct Search {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    mad: bool,
}

/// Q2_K's search (`quantize_row_q2_K_ref`).
const Q2_K_SEARCH: Search = Search {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    mad: true,
};

/// Q4_K's search, and Q5_K's (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`).
const Q4_K_SEARCH: Search = Search {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    mad: false,
};
const Q5_K_SEARCH: Search = Search {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    mad: false,
};

/// Groups searched at once, one per lane: a super-block's eight 32-weight groups (Q4_K,
/// Q5_K), or half of its sixteen 16-weight groups (Q2_K, Q3_K, Q6_K).
const LANES: usize = 8;

/// One f32 per group.
type Lanes = [f32; LANES];

/// ggml's `make_qkx2_quants` for eight groups of `N` weights at once: `x[i][g]` is weight i of
/// group g, `w` its error weight. Each group gets levels `l[i][g]` in `0..=nmax` and the
/// (scale, −min) of `x ≈ scale·l + min` (min ≤ 0) with the smallest weighted error among the
/// searched scales, each met by its least-squares fit. Every lane runs ggml's
/// operations in ggml's order (its branches become selects), so each group's result is
/// ggml's to the bit; the lanes only let the compiler run eight groups per instruction, where
/// one group's sums are chains of dependent adds.
#[inline(always)]
fn scale_min_search<const N: usize>(
    x: &[Lanes; N],
    w: &[Lanes; N],
    s: &Search,
    l: &mut [[u8; LANES]; N],
) -> (Lanes, Lanes) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x: Lanes = std::array::from_fn(|g| w[0][g] * x[0][g]);
    for i in 1..N {
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
    let error_of = |diff: f32| if s.mad { diff.abs() } else { diff * diff };
    let mut best_error = [0f32; LANES];
    for i in 0..N {
        for g in 0..LANES {
            let iscale = nmax / (max[g] - min[g]);
            l[i][g] = level(iscale, x[i][g], min[g]);
            let diff = scale[g] * l[i][g] as f32 + min[g] - x[i][g];
            best_error[g] += w[i][g] * error_of(diff);
        }
    }
    let mut aux = [[0u8; LANES]; N];
    for step in 0..=s.nstep {
        // ggml's search reads `min` as it goes: a better fit's min moves the later scales' grid.
        let numerator = s.rmin + s.rdelta * step as f32 + nmax;
        let iscale: Lanes = std::array::from_fn(|g| numerator / (max[g] - min[g]));
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for i in 0..N {
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
        for i in 0..N {
            for g in 0..LANES {
                let diff = this_scale[g] * aux[i][g] as f32 + this_min[g] - x[i][g];
                error[g] += w[i][g] * error_of(diff);
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

/// Each lane's value of largest magnitude (the first, on ties) and that magnitude.
#[inline(always)]
fn signed_max(x: &[Lanes; 16]) -> (Lanes, Lanes) {
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
    (max, amax)
}

/// ggml's `make_qx_quants` with `rmse_type` 1 (errors weighted by x²) for eight groups of 16
/// weights at once (`x[i][g]`, as [`scale_min_search`]): levels `l` (stored as `l + nmax`) and
/// the scale of `x ≈ scale·l`, searched over 19 scales around `nmax / max|x|`.
#[inline(always)]
fn scale_search(x: &[Lanes; 16], nmax: i32, l: &mut [[u8; LANES]; 16]) -> Lanes {
    let (max, amax) = signed_max(x);
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

/// Eight groups' searches, as [`scale_min_search`] computes them.
type ScaleMinSearch<const N: usize> =
    fn(&[Lanes; N], &[Lanes; N], &Search, &mut [[u8; LANES]; N]) -> (Lanes, Lanes);

/// The searches a row is quantized with: the portable ones, or their AVX2 builds.
struct Searches {
    /// `make_qkx2_quants` over 32-weight groups (Q4_K, Q5_K).
    scale_min_32: ScaleMinSearch<32>,
    /// `make_qkx2_quants` over 16-weight groups (Q2_K).
    scale_min_16: ScaleMinSearch<16>,
    /// `make_qx_quants` (Q6_K).
    scale: ScaleSearch,
    /// `make_q3_quants` (Q3_K).
    q3: Q3Search,
}

/// Eight groups' searches, as [`scale_search`] computes them.
type ScaleSearch = fn(&[Lanes; 16], i32, &mut [[u8; LANES]; 16]) -> Lanes;

/// Eight groups' searches, as [`q3_search`] computes them.
type Q3Search = fn(&[Lanes; 16], &mut [[u8; LANES]; 16]) -> Lanes;

const PORTABLE: Searches = Searches {
    scale_min_32: scale_min_search::<32>,
    scale_min_16: scale_min_search::<16>,
    scale: scale_search,
    q3: q3_search,
};

/// A row of k-quant super-blocks (`x`: whole super-blocks; `out`: their bytes).
pub(super) fn quantize_row(dtype: DType, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, detected just above.
        return unsafe { quantize_row_avx2(dtype, x, out) };
    }
    quantize_row_with(dtype, x, out, &PORTABLE)
}

/// [`quantize_row_with`] with the AVX2 searches, and the rest compiled for AVX2 too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_row_avx2(dtype: DType, x: &[f32], out: &mut [u8]) {
    // Closures take the enclosing function's target features, so these calls are safe.
    let searches = Searches {
        scale_min_32: |x, w, s, l| avx2::scale_min_search(x, w, s, l),
        scale_min_16: |x, w, s, l| avx2::scale_min_search(x, w, s, l),
        scale: |x, nmax, l| avx2::scale_search(x, nmax, l),
        q3: |x, l| avx2::q3_search(x, l),
    };
    quantize_row_with(dtype, x, out, &searches)
}

#[inline(always)]
fn quantize_row_with(dtype: DType, x: &[f32], out: &mut [u8], searches: &Searches) {
    let blocks = x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(dtype.block_bytes()));
    for (xs, blk) in blocks {
        match dtype {
            DType::Q2_K => q2_k(xs, blk, searches.scale_min_16),
            DType::Q3_K => q3_k(xs, blk, searches.q3),
            DType::Q4_K => q4_k(xs, blk, searches.scale_min_32),
            DType::Q5_K => q5_k(xs, blk, searches.scale_min_32),
            DType::Q6_K => q6_k(xs, blk, searches.scale),
            _ => unreachable!("{dtype} is not a k-quant this module writes"),
        }
    }
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
#[inline(always)]
fn scale_min_block(x: &[f32], s: &Search, search: ScaleMinSearch<32>) -> ScaleMinBlock {
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
    let (scales, mins) = search(&xt, &w, s, &mut lt);
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
#[inline(always)]
fn q4_k(x: &[f32], out: &mut [u8], search: ScaleMinSearch<32>) {
    let b = scale_min_block(x, &Q4_K_SEARCH, search);
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
#[inline(always)]
fn q5_k(x: &[f32], out: &mut [u8], search: ScaleMinSearch<32>) {
    let b = scale_min_block(x, &Q5_K_SEARCH, search);
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
#[inline(always)]
fn q6_k_search(x: &[f32], search: ScaleSearch) -> ([u8; QK_K], [f32; 16]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    for half in 0..2 {
        let xs = &x[128 * half..128 * half + 128];
        let mut lt = [[0u8; LANES]; 16];
        let found = search(&by_lanes::<16>(xs), 32, &mut lt);
        scales[LANES * half..LANES * half + LANES].copy_from_slice(&found);
        for (k, q) in l[128 * half..128 * half + 128].iter_mut().enumerate() {
            *q = lt[k % 16][k / 16];
        }
    }
    (l, scales)
}

/// Q6_K: 16 groups of 16, `w = d·sc·(q − 32)` with q in 0..64 and i8 sc.
#[inline(always)]
fn q6_k(x: &[f32], out: &mut [u8], search: ScaleSearch) {
    let (mut l, scales) = q6_k_search(x, search);
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

/// ggml's `make_q3_quants` (nmax 4, `do_rmse`) for eight groups of 16 weights at once
/// (`x[i][g]`, as [`scale_min_search`]): levels −4..=3 (stored as `l + 4`) start at the
/// nearest to `−4·x / max`, then up to five passes move single levels where that raises
/// (Σ w·x·l)² / Σ w·l² (w = x²); the scale is the fit Σ w·x·l / Σ w·l². A lane whose pass
/// changes nothing would change nothing in the next one either, so running passes on until
/// no lane changes leaves each group where ggml's own loop stops.
#[inline(always)]
fn q3_search(x: &[Lanes; 16], l: &mut [[u8; LANES]; 16]) -> Lanes {
    const NMAX: i32 = 4;
    let (max, amax) = signed_max(x);
    let iscale: Lanes = std::array::from_fn(|g| -(NMAX as f32) / max[g]);
    let mut q = [[0i32; LANES]; 16];
    let (mut sum_lx, mut sum_l2) = ([0f32; LANES], [0f32; LANES]);
    for (xi, qi) in x.iter().zip(q.iter_mut()) {
        for g in 0..LANES {
            qi[g] = nearest_int(iscale[g] * xi[g]).clamp(-NMAX, NMAX - 1);
            let (lf, w) = (qi[g] as f32, xi[g] * xi[g]);
            sum_lx[g] += w * xi[g] * lf;
            sum_l2[g] += w * lf * lf;
        }
    }
    for _ in 0..5 {
        let mut changed = false;
        for (xi, qi) in x.iter().zip(q.iter_mut()) {
            for g in 0..LANES {
                let (v, li) = (xi[g], qi[g] as f32);
                let w = v * v;
                let mut slx = sum_lx[g] - w * v * li;
                if slx > 0.0 {
                    let mut sl2 = sum_l2[g] - w * li * li;
                    let new_l = nearest_int(v * sl2 / slx).clamp(-NMAX, NMAX - 1);
                    if new_l != qi[g] {
                        let nl = new_l as f32;
                        slx += w * v * nl;
                        sl2 += w * nl * nl;
                        if sl2 > 0.0 && slx * slx * sum_l2[g] > sum_lx[g] * sum_lx[g] * sl2 {
                            qi[g] = new_l;
                            sum_lx[g] = slx;
                            sum_l2[g] = sl2;
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let zero_group: [bool; LANES] = std::array::from_fn(|g| amax[g] < GROUP_MAX_EPS);
    for (li, qi) in l.iter_mut().zip(&q) {
        for g in 0..LANES {
            // An all-zero group's levels are 0 (that is −4), as ggml leaves them.
            li[g] = if zero_group[g] {
                0
            } else {
                (qi[g] + NMAX) as u8
            };
        }
    }
    std::array::from_fn(|g| {
        if !zero_group[g] && sum_l2[g] > 0.0 {
            sum_lx[g] / sum_l2[g]
        } else {
            0.0
        }
    })
}

/// A super-block's sixteen groups of 16, searched eight at a time: their levels (in weight
/// order) and what the search gives each group (two values a group at most).
#[inline(always)]
fn sixteen_groups<const K: usize>(
    x: &[f32],
    mut search: impl FnMut(&[Lanes; 16], &mut [[u8; LANES]; 16]) -> [Lanes; K],
) -> ([u8; QK_K], [[f32; 16]; K]) {
    let mut l = [0u8; QK_K];
    let mut found = [[0f32; 16]; K];
    for half in 0..2 {
        let mut lt = [[0u8; LANES]; 16];
        let got = search(&by_lanes::<16>(&x[128 * half..128 * half + 128]), &mut lt);
        for (f, g) in found.iter_mut().zip(got) {
            f[LANES * half..LANES * half + LANES].copy_from_slice(&g);
        }
        for (k, q) in l[128 * half..128 * half + 128].iter_mut().enumerate() {
            *q = lt[k % 16][k / 16];
        }
    }
    (l, found)
}

/// Q2_K/Q3_K's 2-bit fields: weight 128n + 32j + i in bits 2j..2j+2 of byte 32n + i.
#[inline(always)]
fn pack_2_bits(l: &[u8; QK_K], qs: &mut [u8]) {
    for n in 0..2 {
        for i in 0..32 {
            let e = |j: usize| l[128 * n + 32 * j + i];
            qs[32 * n + i] = e(0) | (e(1) << 2) | (e(2) << 4) | (e(3) << 6);
        }
    }
}

/// Q2_K: 16 groups of 16, `w = d·sc·q − dmin·m` with q in 0..4 and 4-bit sc, m
/// (`quantize_row_q2_K_ref`). Layout: scales (sc | m << 4), quants, d, dmin.
#[inline(always)]
fn q2_k(x: &[f32], out: &mut [u8], search: ScaleMinSearch<16>) {
    let (mut l, [scales, mins]) = sixteen_groups(x, |xt, lt| {
        let w = xt.map(|r| r.map(f32::abs));
        let (sc, m) = search(xt, &w, &Q2_K_SEARCH, lt);
        [sc, m]
    });
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (&sc, &m) in scales.iter().zip(&mins) {
        if sc > max_scale {
            max_scale = sc;
        }
        if m > max_min {
            max_min = m;
        }
    }
    // ggml keeps nearest_int's int in a u8 (wrapping), as the stores below do.
    let mut sm = [0u8; 16];
    let mut d_bytes = f16_bytes(0.0);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (b, &sc) in sm.iter_mut().zip(&scales) {
            *b = nearest_int(iscale * sc) as u8;
        }
        d_bytes = f16_bytes(max_scale / 15.0);
    }
    let mut dmin_bytes = f16_bytes(0.0);
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (b, &m) in sm.iter_mut().zip(&mins) {
            *b |= (nearest_int(iscale * m) << 4) as u8;
        }
        dmin_bytes = f16_bytes(max_min / 15.0);
    }
    let (d, dmin) = (f16_le(d_bytes), f16_le(dmin_bytes));
    for (j, xs) in x.chunks_exact(16).enumerate() {
        let dl = d * (sm[j] & 0x0F) as f32;
        // A zero scale keeps the search's levels, as ggml does.
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * (sm[j] >> 4) as f32;
        for (q, &v) in l[16 * j..16 * j + 16].iter_mut().zip(xs) {
            *q = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
        }
    }
    out[..16].copy_from_slice(&sm);
    pack_2_bits(&l, &mut out[16..80]);
    out[80..82].copy_from_slice(&d_bytes);
    out[82..84].copy_from_slice(&dmin_bytes);
}

/// Q3_K: 16 groups of 16, `w = d·(sc − 32)·(q − 4)` with q in 0..8 and 6-bit sc
/// (`quantize_row_q3_K_ref`). Layout: the quants' high bits (hmask), their low two bits,
/// the scales (low 4 bits two a byte, high 2 bits four a byte), d.
#[inline(always)]
fn q3_k(x: &[f32], out: &mut [u8], search: Q3Search) {
    let (mut l, [scales]) = sixteen_groups(x, |xt, lt| [search(xt, lt)]);
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for &sc in &scales {
        if sc.abs() > amax {
            amax = sc.abs();
            max_scale = sc;
        }
    }
    let mut sb = [0u8; 12];
    let mut d_bytes = f16_bytes(0.0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &sc) in scales.iter().enumerate() {
            // ggml keeps nearest_int's int in an i8 (wrapping) before clamping it.
            let v = ((nearest_int(iscale * sc) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                sb[j] = v & 0x0F;
            } else {
                sb[j - 8] |= (v & 0x0F) << 4;
            }
            sb[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
        }
        d_bytes = f16_bytes(1.0 / iscale);
    }
    let d = f16_le(d_bytes);
    for (j, xs) in x.chunks_exact(16).enumerate() {
        let low = if j < 8 { sb[j] & 0x0F } else { sb[j - 8] >> 4 };
        let sc = (low | (((sb[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let dl = d * sc as f32;
        // A zero scale keeps the search's levels, as ggml does.
        if dl == 0.0 {
            continue;
        }
        for (q, &v) in l[16 * j..16 * j + 16].iter_mut().zip(xs) {
            *q = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    let (hmask, rest) = out.split_at_mut(QK_K / 8);
    hmask.fill(0);
    for (j, q) in l.iter_mut().enumerate() {
        if *q > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *q -= 4;
        }
    }
    let (qs, rest) = rest.split_at_mut(QK_K / 4);
    pack_2_bits(&l, qs);
    rest[..12].copy_from_slice(&sb);
    rest[12..14].copy_from_slice(&d_bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 searches against the portable ones, on rows like real weights and on
    /// degenerate ones: the same levels, scales and mins to the bit.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_searches_equal_the_portable_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: skipped");
            return;
        }
        let avx2_scale_min: ScaleMinSearch<32> = |x, w, s, l| {
            // SAFETY: AVX2 was detected above.
            unsafe { avx2::scale_min_search(x, w, s, l) }
        };
        let avx2_scale_min_16: ScaleMinSearch<16> = |x, w, s, l| {
            // SAFETY: AVX2 was detected above.
            unsafe { avx2::scale_min_search(x, w, s, l) }
        };
        let avx2_q3: Q3Search = |x, l| {
            // SAFETY: AVX2 was detected above.
            unsafe { avx2::q3_search(x, l) }
        };
        let avx2_scale: ScaleSearch = |x, nmax, l| {
            // SAFETY: AVX2 was detected above.
            unsafe { avx2::scale_search(x, nmax, l) }
        };
        let mut seed = 9u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for case in 0..256 {
            let x: Vec<f32> = (0..QK_K)
                .map(|i| match case % 8 {
                    0 => next() * 0.05,
                    1 if i % 37 == 0 => next() * 20.0,
                    2 if i < 64 => 0.0,
                    3 => next().abs(),
                    4 => -next().abs() * 1e-3,
                    5 if i < 128 => 0.25,
                    6 => next() * 1e-38,
                    7 => next() * 1e30,
                    _ => next(),
                })
                .collect();
            for s in [&Q4_K_SEARCH, &Q5_K_SEARCH] {
                let a = scale_min_block(&x, s, scale_min_search);
                let b = scale_min_block(&x, s, avx2_scale_min);
                assert_eq!((a.l, a.scales), (b.l, b.scales), "case {case}");
                assert_eq!(
                    (a.d.to_bits(), a.dmin.to_bits()),
                    (b.d.to_bits(), b.dmin.to_bits()),
                    "case {case}"
                );
                // Error weights other than the block's own (`|x| + rms`): ggml's importance weights.
                let w: Vec<f32> = x.iter().map(|v| v.abs() * 0.5 + 1e-3).collect();
                let (xt, w) = (by_lanes::<32>(&x), by_lanes::<32>(&w));
                let (mut la, mut lb) = ([[0u8; LANES]; 32], [[0u8; LANES]; 32]);
                let (sa, ma) = scale_min_search(&xt, &w, s, &mut la);
                let (sb, mb) = avx2_scale_min(&xt, &w, s, &mut lb);
                assert_eq!(la, lb, "case {case}");
                assert_eq!(sa.map(f32::to_bits), sb.map(f32::to_bits), "case {case}");
                assert_eq!(ma.map(f32::to_bits), mb.map(f32::to_bits), "case {case}");
            }
            // Q2_K's: 16-weight groups, absolute errors.
            for half in x.chunks_exact(128) {
                let xt = by_lanes::<16>(half);
                let w = xt.map(|r| r.map(f32::abs));
                let (mut la, mut lb) = ([[0u8; LANES]; 16], [[0u8; LANES]; 16]);
                let (sa, ma) = scale_min_search(&xt, &w, &Q2_K_SEARCH, &mut la);
                let (sb, mb) = avx2_scale_min_16(&xt, &w, &Q2_K_SEARCH, &mut lb);
                assert_eq!(la, lb, "case {case}");
                assert_eq!(sa.map(f32::to_bits), sb.map(f32::to_bits), "case {case}");
                assert_eq!(ma.map(f32::to_bits), mb.map(f32::to_bits), "case {case}");
            }
            for half in x.chunks_exact(128) {
                let xt = by_lanes::<16>(half);
                let (mut la, mut lb) = ([[0u8; LANES]; 16], [[0u8; LANES]; 16]);
                let sa = q3_search(&xt, &mut la);
                let sb = avx2_q3(&xt, &mut lb);
                assert_eq!(la, lb, "case {case}");
                assert_eq!(sa.map(f32::to_bits), sb.map(f32::to_bits), "case {case}");
            }
            let (la, sa) = q6_k_search(&x, scale_search);
            let (lb, sb) = q6_k_search(&x, avx2_scale);
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
