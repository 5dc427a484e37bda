//! Decode's attention step: the query heads that share one KV head, folded together over a
//! run of that head's cached keys and values, as the cache stores them (f16 or f32).
//!
//! Reading the cache is the cost at long context, so each key and value is loaded and
//! converted once for the whole group, and the group's scores, softmax weights and weighted
//! sums stay in registers: the scores of up to four heads per pass, their exponentials
//! vectorized, the weighted sums accumulated over the whole run before one store. Before this
//! kernel, a cache block was widened to f32 in a buffer and each head then read it back,
//! exponentials one libm call at a time, and the output loaded and stored once per key.

use crate::attention::{KvElem, OnlineSoftmax};
use crate::dispatch::Isa;
use crate::dot::dot_by;
use crate::ops;

/// Most query heads one pass folds; wider groups go this many at a time.
pub const HEADS_PER_PASS: usize = 4;

/// One KV head's keys and values at consecutive positions, `[n, head_dim]` each, contiguous.
#[derive(Clone, Copy)]
pub struct HeadRun<'a, E> {
    pub keys: &'a [E],
    pub values: &'a [E],
    pub n: usize,
}

/// Folds the first `run.n` keys into each query head of `q` (`[G, head_dim]`, with
/// G = `states.len()`): per head, with s_j = scale · q·k_j and m' = max(m, max_j s_j),
/// out ← out·e^(m−m') + Σ_j e^(s_j−m')·v_j and l ← l·e^(m−m') + Σ_j e^(s_j−m').
/// `out` is `[G, head_dim]`; `scores` is scratch of at least `min(G, 4)·n`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<E: KvElem>(
    isa: Isa,
    q: &[f32],
    run: HeadRun<'_, E>,
    scale: f32,
    states: &mut [OnlineSoftmax],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let g_all = states.len();
    assert!(g_all > 0, "attend_group: no query heads");
    let hd = q.len() / g_all;
    assert!(
        q.len() == g_all * hd && out.len() == q.len(),
        "attend_group: q and out must be [heads, head_dim]"
    );
    let n = run.n;
    assert!(
        run.keys.len() >= n * hd && run.values.len() >= n * hd,
        "attend_group: fewer than {n} keys and values"
    );
    assert!(
        scores.len() >= g_all.min(HEADS_PER_PASS) * n,
        "attend_group: scores too short"
    );
    if n == 0 {
        return;
    }
    let mut first = 0;
    while first < g_all {
        let g = (g_all - first).min(HEADS_PER_PASS);
        let heads = first * hd..(first + g) * hd;
        let (q, out) = (&q[heads.clone()], &mut out[heads]);
        let states = &mut states[first..first + g];
        if !E::fold_group_simd(isa, q, run, scale, states, scores, out) {
            fold_group_portable(q, run, scale, states, scores, out);
        }
        first += g;
    }
}

/// The reference: each head on its own, in plain Rust.
pub(crate) fn fold_group_portable<E: KvElem>(
    q: &[f32],
    run: HeadRun<'_, E>,
    scale: f32,
    states: &mut [OnlineSoftmax],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len() / states.len();
    let n = run.n;
    let scores = &mut scores[..n];
    for ((qh, o), state) in q.chunks(hd).zip(out.chunks_mut(hd)).zip(states.iter_mut()) {
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot_by(qh, &run.keys[j * hd..][..hd], E::to_f32) * scale;
        }
        let correction = rescale(state, scores);
        o.iter_mut().for_each(|x| *x *= correction);
        for (j, p) in scores.iter().enumerate() {
            for (x, v) in o.iter_mut().zip(&run.values[j * hd..][..hd]) {
                *x += p * v.to_f32();
            }
        }
    }
}

/// Turns a head's scores into weights e^(s−m') in place and moves its running softmax to the
/// new max m', with l ← l·e^(m−m') + Σ weights. Returns e^(m−m'), by which the head's output
/// must be scaled.
#[inline(always)]
fn rescale(state: &mut OnlineSoftmax, scores: &mut [f32]) -> f32 {
    let block_max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let m_new = state.m.max(block_max);
    // libm's exp here: e^−∞ must be 0 on the first block, and it is once per head and run.
    let correction = (state.m - m_new).exp();
    // Separate loops, so that the exponentials vectorize and the sum runs lane-parallel.
    scores.iter_mut().for_each(|s| *s = ops::exp(*s - m_new));
    state.l = state.l * correction + lane_sum(scores);
    state.m = m_new;
    correction
}

/// Σ x, eight lanes at a time (a plain sequential sum would not vectorize).
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Generates the AVX2 group kernel for one cache element type, given how to load eight of
/// them as f32 lanes.
#[cfg(target_arch = "x86_64")]
macro_rules! group_kernel {
    ($name:ident, $elem:ty, $load8:ident) => {
        /// [`fold_group_portable`] for `G` heads with AVX2, FMA and F16C; `head_dim` a multiple
        /// of 8. The caller checked the features and every length.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(crate) fn $name<const G: usize>(
            q: &[f32],
            run: HeadRun<'_, $elem>,
            scale: f32,
            states: &mut [OnlineSoftmax],
            scores: &mut [f32],
            out: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            let hd = q.len() / G;
            let n = run.n;
            let chunks = hd / 8;
            assert!(
                hd % 8 == 0
                    && hd > 0
                    && states.len() == G
                    && out.len() == G * hd
                    && run.keys.len() >= n * hd
                    && run.values.len() >= n * hd
                    && scores.len() >= G * n,
                "group kernel: lengths"
            );
            let (kp, vp, qp) = (run.keys.as_ptr(), run.values.as_ptr(), q.as_ptr());
            // Scores: each key loaded once for all G heads; two accumulators a head, so the
            // FMA chains are half as long.
            for j in 0..n {
                let mut acc = [[_mm256_setzero_ps(); 2]; G];
                // SAFETY: key j's chunks lie inside `keys` (n·hd elements, checked above), and
                // each head's chunks inside `q`.
                let k = unsafe { kp.add(j * hd) };
                for c in (0..chunks - 1).step_by(2) {
                    // SAFETY: chunks c and c + 1 < hd / 8, as above.
                    unsafe { score_chunks::<G, 2>(k, qp, hd, c, &mut acc) };
                }
                if chunks % 2 == 1 {
                    // SAFETY: the last chunk, as above.
                    unsafe { score_chunks::<G, 1>(k, qp, hd, chunks - 1, &mut acc) };
                }
                for (g, a) in acc.iter().enumerate() {
                    scores[g * n + j] = hsum(_mm256_add_ps(a[0], a[1])) * scale;
                }
            }
            let mut correction = [0f32; G];
            for (g, c) in correction.iter_mut().enumerate() {
                *c = rescale(&mut states[g], &mut scores[g * n..(g + 1) * n]);
            }
            let (op, sp) = (out.as_mut_ptr(), scores.as_ptr());
            for c in (0..chunks - 1).step_by(2) {
                // SAFETY: chunks c, c + 1 < hd / 8 of every value row j < n and of every
                // head's output lie inside `values` and `out`; `scores` holds G·n weights.
                unsafe { weigh_chunks::<G, 2>(vp, sp, op, hd, n, c, &correction) };
            }
            if chunks % 2 == 1 {
                // SAFETY: as above, for the last chunk.
                unsafe { weigh_chunks::<G, 1>(vp, sp, op, hd, n, chunks - 1, &correction) };
            }

            /// Adds q_g · key chunks `c .. c + W` into each head's accumulators.
            #[target_feature(enable = "avx2,fma,f16c")]
            #[inline]
            unsafe fn score_chunks<const G: usize, const W: usize>(
                k: *const $elem,
                qp: *const f32,
                hd: usize,
                c: usize,
                acc: &mut [[__m256; 2]; G],
            ) {
                // SAFETY: the caller's promise that the chunks lie inside key and `q`.
                unsafe {
                    let mut kv = [_mm256_setzero_ps(); W];
                    for (i, x) in kv.iter_mut().enumerate() {
                        *x = $load8(k.add((c + i) * 8));
                    }
                    for (g, a) in acc.iter_mut().enumerate() {
                        for (i, x) in kv.iter().enumerate() {
                            let qg = _mm256_loadu_ps(qp.add(g * hd + (c + i) * 8));
                            a[i] = _mm256_fmadd_ps(qg, *x, a[i]);
                        }
                    }
                }
            }

            /// Output chunks `c .. c + W` of every head: out·correction + Σ_j p_j·v_j, held in
            /// registers across all n values, each value chunk loaded once for the group.
            #[target_feature(enable = "avx2,fma,f16c")]
            #[inline]
            unsafe fn weigh_chunks<const G: usize, const W: usize>(
                vp: *const $elem,
                sp: *const f32,
                op: *mut f32,
                hd: usize,
                n: usize,
                c: usize,
                correction: &[f32; G],
            ) {
                // SAFETY: the caller's promise that the chunks lie inside values, weights and
                // output.
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); W]; G];
                    for (g, a) in acc.iter_mut().enumerate() {
                        let cg = _mm256_set1_ps(correction[g]);
                        for (i, x) in a.iter_mut().enumerate() {
                            *x = _mm256_mul_ps(_mm256_loadu_ps(op.add(g * hd + (c + i) * 8)), cg);
                        }
                    }
                    for j in 0..n {
                        let mut v = [_mm256_setzero_ps(); W];
                        for (i, x) in v.iter_mut().enumerate() {
                            *x = $load8(vp.add(j * hd + (c + i) * 8));
                        }
                        for (g, a) in acc.iter_mut().enumerate() {
                            let p = _mm256_broadcast_ss(&*sp.add(g * n + j));
                            for (x, vv) in a.iter_mut().zip(&v) {
                                *x = _mm256_fmadd_ps(p, *vv, *x);
                            }
                        }
                    }
                    for (g, a) in acc.iter().enumerate() {
                        for (i, x) in a.iter().enumerate() {
                            _mm256_storeu_ps(op.add(g * hd + (c + i) * 8), *x);
                        }
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Eight f16 at `p` as f32 lanes; the caller ensures 16 readable bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8_f16(p: *const half::f16) -> __m256 {
        // SAFETY: the caller's promise; the load is unaligned.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast::<__m128i>()) })
    }

    /// Eight f32 at `p`; the caller ensures 32 readable bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8_f32(p: *const f32) -> __m256 {
        // SAFETY: the caller's promise; the load is unaligned.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// The sum of the eight lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    group_kernel!(group_f16, half::f16, load8_f16);
    group_kernel!(group_f32, f32, load8_f32);

    /// Runs `$kernel::<G>` for the group's size, where the CPU has AVX2, FMA and F16C and the
    /// head dimension is a multiple of 8; false where it did not run.
    macro_rules! dispatch_group {
        ($name:ident, $kernel:ident, $elem:ty) => {
            pub(crate) fn $name(
                isa: Isa,
                q: &[f32],
                run: HeadRun<'_, $elem>,
                scale: f32,
                states: &mut [OnlineSoftmax],
                scores: &mut [f32],
                out: &mut [f32],
            ) -> bool {
                let hd = q.len() / states.len();
                if !isa.is_simd() || hd == 0 || hd % 8 != 0 {
                    return false;
                }
                // SAFETY (each arm): a SIMD `Isa` is only made after AVX2, FMA and F16C were
                // detected.
                unsafe {
                    match states.len() {
                        1 => $kernel::<1>(q, run, scale, states, scores, out),
                        2 => $kernel::<2>(q, run, scale, states, scores, out),
                        3 => $kernel::<3>(q, run, scale, states, scores, out),
                        4 => $kernel::<4>(q, run, scale, states, scores, out),
                        _ => return false,
                    }
                }
                true
            }
        };
    }

    dispatch_group!(fold_group_f16, group_f16, half::f16);
    dispatch_group!(fold_group_f32, group_f32, f32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::isa;
    use half::f16;

    /// Runs of keys folded by the group kernel, on every instruction set and for groups of
    /// 1 to 9 heads (passes of four and a remainder), give plain softmax attention computed in
    /// f64 on the values as stored, for both cache types and head dimensions with an odd
    /// number of 8-lane chunks.
    #[test]
    fn group_runs_give_softmax_attention() {
        for hd in [8, 16, 24, 64, 128] {
            for g in [1, 2, 3, 4, 5, 9] {
                check::<f32>(hd, g);
                check::<f16>(hd, g);
            }
        }
    }

    fn check<E: KvElem>(hd: usize, groups: usize) {
        let n = 37;
        let value =
            |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 1009) as f32 / 250.0 - 2.0;
        let stored = |salt: usize| {
            let x: Vec<f32> = (0..n * hd).map(|i| value(i, salt)).collect();
            let mut e = vec![E::default(); x.len()];
            E::store(&x, &mut e);
            e
        };
        let (keys, values) = (stored(1), stored(2));
        let q: Vec<f32> = (0..groups * hd).map(|i| value(i, 3)).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut want = vec![0f64; groups * hd];
        for h in 0..groups {
            let qh = &q[h * hd..][..hd];
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    let k = &keys[j * hd..][..hd];
                    qh.iter()
                        .zip(k)
                        .map(|(a, b)| *a as f64 * b.to_f32() as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for d in 0..hd {
                want[h * hd + d] = (0..n)
                    .map(|j| (s[j] - m).exp() * values[j * hd + d].to_f32() as f64)
                    .sum::<f64>()
                    / l;
            }
        }
        for isa in [Isa::PORTABLE, isa()] {
            for piece in [1, 5, 16, n] {
                let mut states = vec![OnlineSoftmax::default(); groups];
                let mut out = vec![0f32; groups * hd];
                let mut scores = vec![0f32; HEADS_PER_PASS * piece];
                let mut start = 0;
                while start < n {
                    let k = piece.min(n - start);
                    let run = HeadRun {
                        keys: &keys[start * hd..],
                        values: &values[start * hd..],
                        n: k,
                    };
                    attend_group(isa, &q, run, scale, &mut states, &mut scores, &mut out);
                    start += k;
                }
                for (h, state) in states.iter().enumerate() {
                    crate::attention::finish(state, &mut out[h * hd..][..hd]);
                }
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() < 2e-5,
                        "{isa:?} hd {hd} heads {groups} pieces of {piece}, [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
