//! Decode's attention step: the query heads that share one KV head, folded together over a
//! run of that head's cached keys and values, as the cache stores them (f16 or f32).
//!
//! Reading the cache is the cost at long context, so each key and value is loaded and
//! converted once for the whole group, and the group's scores, softmax weights and weighted
//! sums stay in registers: the scores of up to four heads per pass, their exponentials
//! vectorized, the weighted sums accumulated over the whole run before one store. The
//! scores lie key by key (the group's four in one 128-bit store), so the heads' sums are
//! three horizontal adds and their softmax is vertical maxes, adds and exponentials over all
//! four at once. Before this
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
    /// The keys and values to be read after these (decode's next cache block), asked for
    /// while this run is folded: the keys a share per key of the scores' loop, the values a
    /// line per key of the weighted sums' loop; empty for none. At long context they come
    /// from memory: asked for all at once before the run, the kernel still spent 60% of its
    /// time on its first loads of keys and values (`attention_speed`, Mistral 7B's shape).
    /// Asked for a share per key of the scores' loop, keys and values alike, that probe read
    /// the cache at a median 6.7 GB/s where it had read 4.8; with the values' lines asked
    /// for in the weighted sums' loop, so that the requests come half as fast, about 1.2×
    /// faster again (BENCHMARKS.md): a core has only so many misses in flight, and requests
    /// issued faster than they complete hold the loop up instead of overlapping it.
    pub next_keys: &'a [E],
    pub next_values: &'a [E],
}

impl<'a, E> HeadRun<'a, E> {
    /// A run of `n` keys and values with nothing read after it.
    pub fn new(keys: &'a [E], values: &'a [E], n: usize) -> Self {
        Self {
            keys,
            values,
            n,
            next_keys: &[],
            next_values: &[],
        }
    }

    /// This run, with `keys` and `values` to be asked for while it is folded.
    pub fn then(self, keys: &'a [E], values: &'a [E]) -> Self {
        Self {
            next_keys: keys,
            next_values: values,
            ..self
        }
    }
}

/// Folds the first `run.n` keys into each query head of `q` (`[G, head_dim]`, with
/// G = `states.len()`): per head, with s_j = scale · q·k_j and m' = max(m, max_j s_j),
/// out ← out·e^(m−m') + Σ_j e^(s_j−m')·v_j and l ← l·e^(m−m') + Σ_j e^(s_j−m').
/// `out` is `[G, head_dim]`; `scores` is scratch of at least `4·n`.
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
        scores.len() >= HEADS_PER_PASS * n,
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

/// Cache lines to ask for in equal shares, one share per iteration of a loop: a core has
/// only so many misses in flight, and requests issued faster than they complete wait for
/// one another (and hold up the loop) instead of overlapping it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Lookahead {
    start: *const i8,
    lines: usize,
    per_share: usize,
}

#[cfg(target_arch = "x86_64")]
impl Lookahead {
    /// The cache lines of `bytes` from `start`, in `shares` equal shares.
    fn new(start: *const i8, bytes: usize, shares: usize) -> Self {
        let lines = bytes.div_ceil(64);
        Self {
            start,
            lines,
            // (max(1): a loop of no iterations asks for no share.)
            per_share: lines.div_ceil(shares.max(1)),
        }
    }

    /// Share i: its first line's address and its number of lines.
    fn share(self, i: usize) -> (*const i8, usize) {
        let first = (i * self.per_share).min(self.lines);
        (
            self.start.wrapping_add(64 * first),
            self.per_share.min(self.lines - first),
        )
    }

    /// Asks for share i.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ask(self, i: usize) {
        let (at, lines) = self.share(i);
        for line in 0..lines {
            prefetch(at, line);
        }
    }
}

/// Asks for line `line` from `at` into L1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch(at: *const i8, line: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // A prefetch is a hint: it never faults, whatever the address.
    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64 * line));
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
                    && scores.len() >= 4 * n,
                "group kernel: lengths"
            );
            let (kp, vp, qp) = (run.keys.as_ptr(), run.values.as_ptr(), q.as_ptr());
            // The next run's keys, a share per key of the scores' loop; its values, a share
            // per pass of the weighted sums' loop, a line per key.
            let next_keys = Lookahead::new(
                run.next_keys.as_ptr().cast(),
                std::mem::size_of_val(run.next_keys),
                n,
            );
            let passes = chunks.div_ceil(2);
            let next_values = Lookahead::new(
                run.next_values.as_ptr().cast(),
                std::mem::size_of_val(run.next_values),
                passes,
            );
            // Scores: each key loaded once for all G heads; two accumulators a head, so the
            // FMA chains are half as long.
            for j in 0..n {
                next_keys.ask(j);
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
                // SAFETY: 4j + 4 ≤ 4n ≤ scores.len() (checked above).
                unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(4 * j), head_sums(&acc, scale)) };
            }
            let correction = rescale_heads(states, &mut scores[..4 * n]);
            let (op, sp) = (out.as_mut_ptr(), scores.as_ptr());
            for c in (0..chunks - 1).step_by(2) {
                // SAFETY: chunks c, c + 1 < hd / 8 of every value row j < n and of every
                // head's output lie inside `values` and `out`; `scores` holds G·n weights.
                unsafe {
                    weigh_chunks::<G, 2>(
                        vp,
                        sp,
                        op,
                        hd,
                        n,
                        c,
                        &correction,
                        next_values.share(c / 2),
                    )
                };
            }
            if chunks % 2 == 1 {
                // SAFETY: as above, for the last chunk.
                unsafe {
                    weigh_chunks::<G, 1>(
                        vp,
                        sp,
                        op,
                        hd,
                        n,
                        chunks - 1,
                        &correction,
                        next_values.share(chunks / 2),
                    )
                };
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
            /// registers across all n values, each value chunk loaded once for the group;
            /// asks for the `ahead.1` lines from `ahead.0`, one per value.
            #[target_feature(enable = "avx2,fma,f16c")]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn weigh_chunks<const G: usize, const W: usize>(
                vp: *const $elem,
                sp: *const f32,
                op: *mut f32,
                hd: usize,
                n: usize,
                c: usize,
                correction: &[f32; G],
                ahead: (*const i8, usize),
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
                        if j < ahead.1 {
                            prefetch(ahead.0, j);
                        }
                        let mut v = [_mm256_setzero_ps(); W];
                        for (i, x) in v.iter_mut().enumerate() {
                            *x = $load8(vp.add(j * hd + (c + i) * 8));
                        }
                        for (g, a) in acc.iter_mut().enumerate() {
                            let p = _mm256_broadcast_ss(&*sp.add(4 * j + g));
                            for (x, vv) in a.iter_mut().zip(&v) {
                                *x = _mm256_fmadd_ps(p, *vv, *x);
                            }
                        }
                    }
                    // (More lines than values, on a short run: the rest at once.)
                    for line in n..ahead.1 {
                        prefetch(ahead.0, line);
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

    /// Head g's score (the sum of its two accumulators' sixteen lanes, times `scale`) in lane
    /// g, 0 in lanes G..4: three horizontal adds for the group, where a sum a head took
    /// three shuffles and three adds of its own.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn head_sums<const G: usize>(acc: &[[__m256; 2]; G], scale: f32) -> __m128 {
        let v: [__m256; 4] = std::array::from_fn(|g| {
            if g < G {
                _mm256_add_ps(acc[g][0], acc[g][1])
            } else {
                _mm256_setzero_ps()
            }
        });
        // Lanes 0..4 of `h`: heads 0..4's sums of lanes 0..4; lanes 4..8: of lanes 4..8.
        let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        _mm_mul_ps(s, _mm_set1_ps(scale))
    }

    /// [`ops::exp`] of eight lanes, the same operations in the same order (so the same bits):
    /// LLVM left that function's float-to-integer conversion in scalar code, one lane at a
    /// time, when it vectorized the rest.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn exp8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let x = _mm256_min_ps(_mm256_max_ps(x, c(-87.3)), c(88.7));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, c(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_359_4))),
            _mm256_mul_ps(n, c(-2.121_944_4e-4)),
        );
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), c(k));
        }
        let y = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
            c(1.0),
        );
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(two_n))
    }

    /// [`rescale`] for up to four heads at once, on scores laid out key by key (head g of key
    /// j at 4j + g): each head's block max and weight sum are lane g of vertical maxes and
    /// adds, and the exponentials run eight lanes (two keys) at a time. Returns each head's
    /// correction e^(m−m').
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn rescale_heads<const G: usize>(states: &mut [OnlineSoftmax], scores: &mut [f32]) -> [f32; G] {
        let mut block_max = [f32::NEG_INFINITY; 4];
        for key in scores.chunks_exact(4) {
            for (m, &s) in block_max.iter_mut().zip(key) {
                *m = m.max(s);
            }
        }
        let mut m_new = [0f32; 4];
        let mut correction = [0f32; G];
        for (g, state) in states.iter().enumerate().take(G) {
            m_new[g] = state.m.max(block_max[g]);
            // libm's exp here: e^−∞ must be 0 on the first block.
            correction[g] = (state.m - m_new[g]).exp();
        }
        let m8: [f32; 8] = std::array::from_fn(|k| m_new[k % 4]);
        // SAFETY: `m8` is 8 readable f32; the load is unaligned.
        let m = unsafe { _mm256_loadu_ps(m8.as_ptr()) };
        let mut sum = _mm256_setzero_ps();
        let mut pairs = scores.chunks_exact_mut(8);
        for two in &mut pairs {
            // SAFETY: `two` is 8 readable and writable f32; the accesses are unaligned.
            unsafe {
                let p = exp8(_mm256_sub_ps(_mm256_loadu_ps(two.as_ptr()), m));
                _mm256_storeu_ps(two.as_mut_ptr(), p);
                sum = _mm256_add_ps(sum, p);
            }
        }
        let mut sum8 = [0f32; 8];
        // SAFETY: `sum8` is 8 writable f32; the store is unaligned.
        unsafe { _mm256_storeu_ps(sum8.as_mut_ptr(), sum) };
        for (k, s) in pairs.into_remainder().iter_mut().enumerate() {
            *s = ops::exp(*s - m8[k]);
            sum8[k] += *s;
        }
        for (g, state) in states.iter_mut().enumerate().take(G) {
            state.l = state.l * correction[g] + (sum8[g] + sum8[g + 4]);
            state.m = m_new[g];
        }
        correction
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

    /// The eight-lane exponential is the scalar one, bit for bit, across the range a softmax
    /// weight's exponent takes and beyond its clamps.
    #[test]
    fn exp8_is_ops_exp() {
        if !isa().is_simd() {
            return;
        }
        let xs: Vec<f32> = (0..=800_000)
            .map(|i| -100.0 + 200.0 * i as f32 / 800_000.0)
            .chain([0.0, -0.0, f32::NEG_INFINITY, -87.3, 88.7, 1e-30])
            .collect();
        for c in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..c.len()].copy_from_slice(c);
            let mut got = [0f32; 8];
            // SAFETY: a SIMD `Isa` means AVX2, FMA and F16C were detected.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(got.as_mut_ptr(), x86::exp8(_mm256_loadu_ps(lanes.as_ptr())));
            }
            for (x, g) in lanes.iter().zip(got) {
                assert_eq!(g.to_bits(), ops::exp(*x).to_bits(), "e^{x}");
            }
        }
    }

    /// The group kernel alone on one cache block in L1 (Mistral 7B's head: 128 wide, four
    /// query heads a KV head, 16 keys): nanoseconds a key, one thread.
    #[test]
    #[ignore = "a speed probe: cargo test --release -p bora-kernels group_kernel_speed -- --ignored --nocapture"]
    fn group_kernel_speed() {
        let (hd, g, n) = (128usize, 4usize, 16usize);
        let x: Vec<f32> = (0..n * hd).map(|i| (i % 29) as f32 / 29.0 - 0.5).collect();
        let mut kv = vec![f16::ZERO; x.len()];
        f16::store(&x, &mut kv);
        let q: Vec<f32> = (0..g * hd).map(|i| (i % 13) as f32 / 13.0).collect();
        let run = HeadRun::new(&kv, &kv, n);
        let mut states = vec![OnlineSoftmax::default(); g];
        let mut scores = vec![0f32; HEADS_PER_PASS * n];
        let mut out = vec![0f32; g * hd];
        let iters = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            attend_group(isa(), &q, run, 0.088, &mut states, &mut scores, &mut out);
            std::hint::black_box(&mut out);
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / (iters * n) as f64;
        println!(
            "group of {g} heads, head size {hd}: {ns:.1} ns a key ({:.1} GB/s of K and V)",
            (2 * hd * 2) as f64 / ns
        );
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
                    let run = HeadRun::new(&keys[start * hd..], &values[start * hd..], k);
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
