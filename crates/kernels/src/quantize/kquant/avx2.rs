//! The k-quant searches ([`super::scale_min_search`], [`super::scale_search`],
//! [`super::q3_search`]) written in AVX2 intrinsics: one group per f32 lane, as there, and ggml's operations in ggml's order, with
//! no FMA (ggml's reference code has none), so the results are the portable code's to the bit
//! (tested).
//!
//! The compiler's build of the portable code ran the same arithmetic at 13 µs a Q4_K
//! super-block on a Zen 3 core: it kept each step's levels as bytes (a pack and an unpack per
//! level), copied the better levels byte by byte under branches, and left the Q6_K sums in an
//! SSE2 closure. Here a step's levels stay in registers as f32, and no levels are copied at
//! all: each lane remembers the scale and offset that gave its best levels, and the levels are
//! computed once more from them at the end, by the same operations.

use std::arch::x86_64::*;

use super::{Lanes, Search, GROUP_MAX_EPS, LANES};

/// Eight lanes from memory.
#[target_feature(enable = "avx2")]
#[inline]
fn load(v: &Lanes) -> __m256 {
    // SAFETY: `v` is eight f32s; the load needs no alignment.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// Eight lanes to memory.
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_of(v: __m256) -> Lanes {
    let mut out = [0f32; LANES];
    // SAFETY: `out` is eight f32s; the store needs no alignment.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Eight i32 lanes as bytes (each lane holds a level in 0..=255).
#[target_feature(enable = "avx2")]
#[inline]
fn bytes_of(v: __m256i) -> [u8; LANES] {
    let mut words = [0i32; LANES];
    // SAFETY: `words` is eight i32s; the store needs no alignment.
    unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), v) };
    words.map(|q| q as u8)
}

/// `b` in the lanes where `mask` is set, `a` elsewhere.
#[target_feature(enable = "avx2")]
#[inline]
fn select(a: __m256, b: __m256, mask: __m256) -> __m256 {
    _mm256_blendv_ps(a, b, mask)
}

/// ggml's `nearest_int` (add 1.5·2²³, keep the mantissa) on eight lanes: `super::nearest_int`.
#[target_feature(enable = "avx2")]
#[inline]
fn nearest_int(v: __m256) -> __m256i {
    let t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
    _mm256_sub_epi32(
        _mm256_and_si256(t, _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    )
}

/// `nearest_int(iscale·(x − min))` clamped to `lo..=hi`.
#[target_feature(enable = "avx2")]
#[inline]
fn level(iscale: __m256, x: __m256, min: __m256, lo: __m256i, hi: __m256i) -> __m256i {
    let q = nearest_int(_mm256_mul_ps(iscale, _mm256_sub_ps(x, min)));
    _mm256_min_epi32(_mm256_max_epi32(q, lo), hi)
}

/// `acc + a·b`, rounded twice as ggml's unfused code rounds it.
#[target_feature(enable = "avx2")]
#[inline]
fn add_mul(acc: __m256, a: __m256, b: __m256) -> __m256 {
    _mm256_add_ps(acc, _mm256_mul_ps(a, b))
}

/// A difference's error: |d| with `mad`, else d².
#[target_feature(enable = "avx2")]
#[inline]
fn error_of(diff: __m256, mad: bool) -> __m256 {
    if mad {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), diff)
    } else {
        _mm256_mul_ps(diff, diff)
    }
}

/// [`super::scale_min_search`] (ggml's `make_qkx2_quants`), the same results.
#[target_feature(enable = "avx2")]
pub(super) fn scale_min_search<const N: usize>(
    x: &[Lanes; N],
    w: &[Lanes; N],
    s: &Search,
    l: &mut [[u8; LANES]; N],
) -> (Lanes, Lanes) {
    let zero = _mm256_setzero_ps();
    let mut min = load(&x[0]);
    let mut max = min;
    let mut sum_w = load(&w[0]);
    let mut sum_x = _mm256_mul_ps(sum_w, min);
    for (xi, wi) in x.iter().zip(w).skip(1) {
        let (xi, wi) = (load(xi), load(wi));
        // `minps a, b` is `a < b ? a : b`: ggml's `if (x < min) min = x`, ties and all.
        min = _mm256_min_ps(xi, min);
        max = _mm256_max_ps(xi, max);
        sum_w = _mm256_add_ps(sum_w, wi);
        sum_x = add_mul(sum_x, wi, xi);
    }
    min = select(min, zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min, zero));
    // A flat group is all zeros in ggml; its lane computes garbage below, replaced at the end.
    let flat = _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min);
    let flat_min = min;
    let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(s.nmax));
    let nmax = _mm256_set1_ps(s.nmax as f32);

    let iscale = _mm256_div_ps(nmax, _mm256_sub_ps(max, min));
    let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
    let mut best_error = zero;
    for (xi, wi) in x.iter().zip(w) {
        let (xi, wi) = (load(xi), load(wi));
        let li = _mm256_cvtepi32_ps(level(iscale, xi, min, lo, hi));
        let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, li), min), xi);
        best_error = add_mul(best_error, wi, error_of(diff, s.mad));
    }
    // What the best levels so far were computed with.
    let (mut best_iscale, mut best_offset) = (iscale, min);

    let mut aux = [zero; N];
    for step in 0..=s.nstep {
        // ggml's search reads `min` as it goes: a better fit's min moves the later scales' grid.
        let numerator = s.rmin + s.rdelta * step as f32 + s.nmax as f32;
        let iscale = _mm256_div_ps(_mm256_set1_ps(numerator), _mm256_sub_ps(max, min));
        let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
        for ((xi, wi), a) in x.iter().zip(w).zip(&mut aux) {
            let (xi, wi) = (load(xi), load(wi));
            let li = _mm256_cvtepi32_ps(level(iscale, xi, min, lo, hi));
            *a = li;
            let wl = _mm256_mul_ps(wi, li);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = add_mul(sum_l2, wl, li);
            sum_xl = add_mul(sum_xl, wl, xi);
        }
        let det = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        let fits = _mm256_cmp_ps::<_CMP_GT_OQ>(det, zero);
        let mut this_scale = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)),
            det,
        );
        let mut this_min = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)),
            det,
        );
        let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, zero);
        this_min = select(this_min, zero, positive);
        this_scale = select(this_scale, _mm256_div_ps(sum_xl, sum_l2), positive);
        let mut error = zero;
        for ((xi, wi), li) in x.iter().zip(w).zip(&aux) {
            let (xi, wi) = (load(xi), load(wi));
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale, *li), this_min), xi);
            error = add_mul(error, wi, error_of(diff, s.mad));
        }
        let better = _mm256_and_ps(fits, _mm256_cmp_ps::<_CMP_LT_OQ>(error, best_error));
        best_error = select(best_error, error, better);
        scale = select(scale, this_scale, better);
        best_iscale = select(best_iscale, iscale, better);
        best_offset = select(best_offset, min, better);
        min = select(min, this_min, better);
    }

    let flat_bits = _mm256_castps_si256(flat);
    for (xi, li) in x.iter().zip(l.iter_mut()) {
        let q = level(best_iscale, load(xi), best_offset, lo, hi);
        *li = bytes_of(_mm256_andnot_si256(flat_bits, q));
    }
    scale = select(scale, zero, flat);
    min = select(min, flat_min, flat);
    let neg_min = _mm256_xor_ps(min, _mm256_set1_ps(-0.0));
    (lanes_of(scale), lanes_of(neg_min))
}

/// Σ w·x·l and Σ w·l² (w = x², l the levels at `iscale`) in ggml's order: [`scale_search`]'s
/// sums.
#[target_feature(enable = "avx2")]
#[inline]
fn weighted_sums(x: &[Lanes; 16], iscale: __m256, lo: __m256i, hi: __m256i) -> (__m256, __m256) {
    let zero = _mm256_setzero_ps();
    let (mut sum_lx, mut sum_l2) = (zero, zero);
    for xi in x {
        let xi = load(xi);
        let q = _mm256_cvtepi32_ps(level(iscale, xi, zero, lo, hi));
        let w = _mm256_mul_ps(xi, xi);
        sum_lx = add_mul(sum_lx, _mm256_mul_ps(w, xi), q);
        sum_l2 = add_mul(sum_l2, _mm256_mul_ps(w, q), q);
    }
    (sum_lx, sum_l2)
}

/// Each lane's value of largest magnitude (the first, on ties) and that magnitude.
#[target_feature(enable = "avx2")]
#[inline]
fn signed_max(x: &[Lanes; 16]) -> (__m256, __m256) {
    let zero = _mm256_setzero_ps();
    let (mut max, mut amax) = (zero, zero);
    for xi in x {
        let xi = load(xi);
        let ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0), xi);
        let larger = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
        amax = select(amax, ax, larger);
        max = select(max, xi, larger);
    }
    (max, amax)
}

/// [`super::scale_search`] (ggml's `make_qx_quants`, `rmse_type` 1), the same results.
#[target_feature(enable = "avx2")]
pub(super) fn scale_search(x: &[Lanes; 16], nmax: i32, l: &mut [[u8; LANES]; 16]) -> Lanes {
    let zero = _mm256_setzero_ps();
    let (max, amax) = signed_max(x);
    // Note x − 0 is x, bit for bit, so `level` with a zero offset is ggml's `nearest_int(iscale·x)`.
    let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
    let iscale = _mm256_div_ps(_mm256_set1_ps(-(nmax as f32)), max);
    let (sum_lx, sum_l2) = weighted_sums(x, iscale, lo, hi);
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(sum_l2, zero);
    let mut scale = select(zero, _mm256_div_ps(sum_lx, sum_l2), nonzero);
    let mut best = _mm256_mul_ps(scale, sum_lx);
    let mut best_iscale = iscale;
    for is in (-9..=9).filter(|&is| is != 0) {
        let numerator = -(nmax as f32 + 0.1 * is as f32);
        let iscale = _mm256_div_ps(_mm256_set1_ps(numerator), max);
        let (sum_lx, sum_l2) = weighted_sums(x, iscale, lo, hi);
        let better = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(sum_l2, zero),
            _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sum_lx, sum_lx), _mm256_mul_ps(best, sum_l2)),
        );
        scale = select(scale, _mm256_div_ps(sum_lx, sum_l2), better);
        best = select(best, _mm256_mul_ps(scale, sum_lx), better);
        best_iscale = select(best_iscale, iscale, better);
    }
    // An all-zero group (ggml's test) has zero levels and scale.
    let zero_group = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));
    let offset = _mm256_set1_epi32(nmax);
    for (xi, li) in x.iter().zip(l.iter_mut()) {
        let q = _mm256_add_epi32(level(best_iscale, load(xi), zero, lo, hi), offset);
        *li = bytes_of(_mm256_andnot_si256(_mm256_castps_si256(zero_group), q));
    }
    lanes_of(select(scale, zero, zero_group))
}

/// [`super::q3_search`] (ggml's `make_q3_quants`, nmax 4, `do_rmse`), the same results. Each
/// pass's level moves are selects; passes run until no lane moves a level, or five.
#[target_feature(enable = "avx2")]
pub(super) fn q3_search(x: &[Lanes; 16], l: &mut [[u8; LANES]; 16]) -> Lanes {
    const NMAX: i32 = 4;
    let zero = _mm256_setzero_ps();
    let (max, amax) = signed_max(x);
    let (lo, hi) = (_mm256_set1_epi32(-NMAX), _mm256_set1_epi32(NMAX - 1));
    let iscale = _mm256_div_ps(_mm256_set1_ps(-(NMAX as f32)), max);
    let mut q = [_mm256_setzero_si256(); 16];
    let (mut sum_lx, mut sum_l2) = (zero, zero);
    for (xi, qi) in x.iter().zip(q.iter_mut()) {
        let xi = load(xi);
        *qi = level(iscale, xi, zero, lo, hi);
        let (lf, w) = (_mm256_cvtepi32_ps(*qi), _mm256_mul_ps(xi, xi));
        sum_lx = add_mul(sum_lx, _mm256_mul_ps(w, xi), lf);
        sum_l2 = add_mul(sum_l2, _mm256_mul_ps(w, lf), lf);
    }
    for _ in 0..5 {
        let mut changed = zero;
        for (xi, qi) in x.iter().zip(q.iter_mut()) {
            let v = load(xi);
            let w = _mm256_mul_ps(v, v);
            let wv = _mm256_mul_ps(w, v);
            let li = _mm256_cvtepi32_ps(*qi);
            let slx = _mm256_sub_ps(sum_lx, _mm256_mul_ps(wv, li));
            let sl2 = _mm256_sub_ps(sum_l2, _mm256_mul_ps(_mm256_mul_ps(w, li), li));
            let new_q = nearest_int(_mm256_div_ps(_mm256_mul_ps(v, sl2), slx));
            let new_q = _mm256_min_epi32(_mm256_max_epi32(new_q, lo), hi);
            let nl = _mm256_cvtepi32_ps(new_q);
            let new_slx = add_mul(slx, wv, nl);
            let new_sl2 = add_mul(sl2, _mm256_mul_ps(w, nl), nl);
            let moved = _mm256_castsi256_ps(_mm256_cmpeq_epi32(new_q, *qi));
            let gain = _mm256_cmp_ps::<_CMP_GT_OQ>(
                _mm256_mul_ps(_mm256_mul_ps(new_slx, new_slx), sum_l2),
                _mm256_mul_ps(_mm256_mul_ps(sum_lx, sum_lx), new_sl2),
            );
            let take = _mm256_andnot_ps(
                moved,
                _mm256_and_ps(
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero),
                        _mm256_cmp_ps::<_CMP_GT_OQ>(new_sl2, zero),
                    ),
                    gain,
                ),
            );
            *qi = _mm256_castps_si256(select(
                _mm256_castsi256_ps(*qi),
                _mm256_castsi256_ps(new_q),
                take,
            ));
            sum_lx = select(sum_lx, new_slx, take);
            sum_l2 = select(sum_l2, new_sl2, take);
            changed = _mm256_or_ps(changed, take);
        }
        if _mm256_movemask_ps(changed) == 0 {
            break;
        }
    }
    // An all-zero group's levels are 0 (that is −4), as ggml leaves them.
    let zero_group = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));
    let offset = _mm256_set1_epi32(NMAX);
    for (qi, li) in q.iter().zip(l.iter_mut()) {
        let stored = _mm256_add_epi32(*qi, offset);
        *li = bytes_of(_mm256_andnot_si256(_mm256_castps_si256(zero_group), stored));
    }
    let fits = _mm256_andnot_ps(zero_group, _mm256_cmp_ps::<_CMP_GT_OQ>(sum_l2, zero));
    lanes_of(select(zero, _mm256_div_ps(sum_lx, sum_l2), fits))
}
