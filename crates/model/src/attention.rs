//! Causal, optionally windowed, grouped-query attention over the paged KV cache.
//!
//! Keys are visited one cache block at a time with an online softmax (running max m, running
//! sum l, running weighted sum of values), so no T×T score matrix exists even for long prompts:
//!   m' = max(m, max_j s_j);  acc ← acc·e^(m−m') + Σ_j e^(s_j−m')·v_j;  l ← l·e^(m−m') + Σ_j e^(s_j−m')

use std::cell::RefCell;

use rayon::prelude::*;

use bora_kernels::attention::{attend_keys, finish, prefetch_run, KeyRun, OnlineSoftmax};
use half::f16;

use crate::kv_cache::{CacheElem, KvPool, KvType, SeqKv, MAX_BLOCK_SIZE};

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
    match pool.layout().kv_type {
        KvType::F16 => attend_as::<f16>(pool, layer, shape, rows, q, out),
        KvType::F32 => attend_as::<f32>(pool, layer, shape, rows, q, out),
    }
}

/// [`attend`] over a cache that stores `E`.
fn attend_as<E: CacheElem>(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    rows: &[QueryRow<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let d = shape.n_heads * hd;
    if rows.len() < 4 * QUERY_CHUNK {
        // Decode and short steps: (row, KV head) pairs are the parallel work, each meeting the
        // query heads that share the KV head together, so a cache block is read once for all
        // of them. One task per query head read each key and value once per head (four times
        // in Mistral 7B): from L3, since a layer's cache outgrows L2, that made decode after a
        // 512-token prompt 15% slower than after 16 tokens.
        let group_width = hd * shape.n_heads / shape.n_kv_heads;
        out.par_chunks_mut(group_width)
            .zip(q.par_chunks(group_width))
            .enumerate()
            .for_each(|(i, (o, qg))| {
                let (t, kv_head) = (i / shape.n_kv_heads, i % shape.n_kv_heads);
                attend_group::<E>(pool, layer, shape, &rows[t], kv_head, qg, o);
            });
        return;
    }
    // Prefill: chunks of query rows, each walking its keys once per KV head for all the rows
    // and all the query heads sharing that KV head, while a cache block is in L1. One query
    // at a time re-read every key and value from L2 or memory per (row, head): at 512 tokens
    // that was most of the attention time.
    out.par_chunks_mut(QUERY_CHUNK * d)
        .zip(q.par_chunks(QUERY_CHUNK * d))
        .zip(rows.par_chunks(QUERY_CHUNK))
        .for_each(|((o, qc), rc)| attend_chunk::<E>(pool, layer, shape, rc, qc, o));
}

/// Query rows attended together in prefill.
const QUERY_CHUNK: usize = 8;

/// What an attention task works in, kept per thread so that a decode step allocates nothing
/// per layer and head: the running softmax of each (row, query head) it serves, and a cache
/// block widened to f32.
#[derive(Default)]
struct TaskScratch {
    states: Vec<OnlineSoftmax>,
    widened: Vec<f32>,
}

thread_local! {
    static TASK_SCRATCH: RefCell<TaskScratch> = Default::default();
}

/// Runs `f` on this thread's [`TaskScratch`], its `states` reset to `n` fresh ones (or on a
/// fresh scratch, should a task on this thread already hold it).
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut TaskScratch) -> R) -> R {
    TASK_SCRATCH.with(|cell| {
        let mut own = TaskScratch::default();
        let mut held = cell.try_borrow_mut();
        let s = match held.as_deref_mut() {
            Ok(s) => s,
            Err(_) => &mut own,
        };
        s.states.clear();
        s.states.resize(n, OnlineSoftmax::default());
        f(s)
    })
}

/// Attention for a few query rows (`q`, `out`: [rows, n_heads·head_dim]): per KV head and
/// per run of rows reading the same sequence, every cache block of the run's key range meets
/// each (row, query head) that sees part of it.
fn attend_chunk<E: CacheElem>(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    rows: &[QueryRow<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let d = shape.n_heads * hd;
    let kv_dim = shape.n_kv_heads * hd;
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let bs = pool.layout().block_size;
    let isa = bora_kernels::dispatch::isa();
    let first_key = |r: &QueryRow<'_>| shape.window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
    out.fill(0.0);
    with_scratch(rows.len() * group, |scratch| {
        let TaskScratch { states, widened } = scratch;
        let mut scores = [0f32; MAX_BLOCK_SIZE];
        let mut run_start = 0;
        while run_start < rows.len() {
            let kv = rows[run_start].kv;
            let run_end = run_start
                + rows[run_start..]
                    .iter()
                    .take_while(|r| std::ptr::eq(r.kv, kv))
                    .count();
            let run = run_start..run_end;
            let lo = rows[run.clone()].iter().map(first_key).min().unwrap_or(0);
            let hi = rows[run.clone()].iter().map(|r| r.pos).max().unwrap_or(0);
            for kv_head in 0..shape.n_kv_heads {
                let at = kv_head * hd;
                states
                    .iter_mut()
                    .for_each(|s| *s = OnlineSoftmax::default());
                let mut start = lo;
                while start <= hi {
                    let (block, slot) = kv.locate(start, bs);
                    let n = (bs - slot).min(hi + 1 - start);
                    let (ks, vs) = pool.block_slots::<E>(block, layer, slot, n);
                    let stored = KeyRun {
                        keys: &ks[at..],
                        values: &vs[at..],
                        stride: kv_dim,
                        scale,
                    };
                    let block_run = E::widened(isa, &stored, n, hd, widened);
                    for t in run.clone() {
                        // The part of this block row t sees: keys first_key ..= pos.
                        let a = first_key(&rows[t]).max(start);
                        let b = (rows[t].pos + 1).min(start + n);
                        if a >= b {
                            continue;
                        }
                        let off = (a - start) * block_run.stride;
                        let keys = KeyRun {
                            keys: &block_run.keys[off..],
                            values: &block_run.values[off..],
                            ..block_run
                        };
                        for g in 0..group {
                            let row = t * d + (kv_head * group + g) * hd;
                            attend_keys(
                                isa,
                                &q[row..row + hd],
                                &keys,
                                &mut states[(t - run_start) * group + g],
                                &mut scores[..b - a],
                                &mut out[row..row + hd],
                            );
                        }
                    }
                    start += n;
                }
                for t in run.clone() {
                    for g in 0..group {
                        let row = t * d + (kv_head * group + g) * hd;
                        finish(
                            &states[(t - run_start) * group + g],
                            &mut out[row..row + hd],
                        );
                    }
                }
            }
            run_start = run_end;
        }
    });
}

/// One row's query heads that share `kv_head` (`q`, `out`: those heads, consecutive) against
/// the row's keys.
fn attend_group<E: CacheElem>(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    row: &QueryRow<'_>,
    kv_head: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_dim = shape.n_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let bs = pool.layout().block_size;
    let first = shape.window.map_or(0, |w| (row.pos + 1).saturating_sub(w));
    out.fill(0.0);
    let mut scores = [0f32; MAX_BLOCK_SIZE];
    let isa = bora_kernels::dispatch::isa();
    // This head's keys and values from `start` on, at most one block's worth.
    let run_at = |start: usize| {
        let (block, slot) = row.kv.locate(start, bs);
        let n = (bs - slot).min(row.pos + 1 - start);
        let (ks, vs) = pool.block_slots::<E>(block, layer, slot, n);
        let at = kv_head * hd;
        let run = KeyRun {
            keys: &ks[at..],
            values: &vs[at..],
            stride: kv_dim,
            scale,
        };
        (run, n)
    };
    let mut start = first;
    if start > row.pos {
        // Nothing visible: only a zero-width window, which the config refuses.
        return;
    }
    with_scratch(shape.n_heads / shape.n_kv_heads, |scratch| {
        let TaskScratch { states, widened } = scratch;
        let mut next = run_at(start);
        prefetch_run(&next.0, next.1, hd);
        loop {
            let (run, n) = next;
            if start + n <= row.pos {
                next = run_at(start + n);
                prefetch_run(&next.0, next.1, hd);
            }
            let run = E::widened(isa, &run, n, hd, widened);
            for ((qh, o), state) in q.chunks(hd).zip(out.chunks_mut(hd)).zip(states.iter_mut()) {
                attend_keys(isa, qh, &run, state, &mut scores[..n], o);
            }
            start += n;
            if start > row.pos {
                break;
            }
        }
        for (o, state) in out.chunks_mut(hd).zip(states.iter()) {
            finish(state, o);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvLayout;

    /// Prefill's path (rows attended in chunks) and decode's (one row, a task per KV head)
    /// both give plain softmax attention, computed in f64 on K and V as the cache stores them,
    /// for both cache types, with grouped heads, with and without a window, across blocks.
    #[test]
    fn both_paths_give_softmax_attention_for_both_cache_types() {
        let (n_heads, n_kv_heads, hd, bs, len) = (6, 2, 20, 4, 37);
        for kv_type in [KvType::F32, KvType::F16] {
            for window in [None, Some(7)] {
                let layout = KvLayout {
                    n_layers: 2,
                    n_kv_heads,
                    head_dim: hd,
                    block_size: bs,
                    kv_type,
                };
                let mut pool = KvPool::new(layout, 64);
                let mut seq = SeqKv::new();
                seq.prepare(&mut pool, len, None).unwrap();
                let kv_dim = n_kv_heads * hd;
                let value = |i: usize, salt: usize| ((i * 7919 + salt) % 1009) as f32 / 300.0 - 1.6;
                let k: Vec<f32> = (0..len * kv_dim).map(|i| value(i, 1)).collect();
                let v: Vec<f32> = (0..len * kv_dim).map(|i| value(i, 2)).collect();
                for p in 0..len {
                    let at = seq.locate(p, bs);
                    let (kp, vp) = (&k[p * kv_dim..][..kv_dim], &v[p * kv_dim..][..kv_dim]);
                    pool.write(at, 1, kp, vp);
                }
                let stored = |x: f32| match kv_type {
                    KvType::F32 => x as f64,
                    KvType::F16 => f16::from_f32(x).to_f64(),
                };
                let d = n_heads * hd;
                let q: Vec<f32> = (0..len * d).map(|i| value(i, 3)).collect();
                let shape = AttentionShape {
                    n_heads,
                    n_kv_heads,
                    head_dim: hd,
                    window,
                };
                let rows: Vec<QueryRow<'_>> =
                    (0..len).map(|pos| QueryRow { kv: &seq, pos }).collect();
                let mut chunked = vec![0f32; len * d];
                attend(&pool, 1, &shape, &rows, &q, &mut chunked);
                assert!(rows.len() >= 4 * QUERY_CHUNK, "the chunked path runs");
                for (t, row) in rows.iter().enumerate() {
                    let mut one = vec![0f32; d];
                    let q_row = &q[t * d..(t + 1) * d];
                    attend(&pool, 1, &shape, std::slice::from_ref(row), q_row, &mut one);
                    let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
                    for h in 0..n_heads {
                        let kvh = h / (n_heads / n_kv_heads);
                        let qh = &q_row[h * hd..(h + 1) * hd];
                        let s: Vec<f64> = (first..=t)
                            .map(|j| {
                                let kj = &k[j * kv_dim + kvh * hd..][..hd];
                                let dot: f64 =
                                    qh.iter().zip(kj).map(|(a, b)| *a as f64 * stored(*b)).sum();
                                dot / (hd as f64).sqrt()
                            })
                            .collect();
                        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                        for e in 0..hd {
                            let want: f64 = (first..=t)
                                .zip(&s)
                                .map(|(j, sj)| {
                                    (sj - m).exp() * stored(v[j * kv_dim + kvh * hd + e])
                                })
                                .sum::<f64>()
                                / l;
                            for (path, got) in [
                                ("chunked", chunked[t * d + h * hd + e]),
                                ("decode", one[h * hd + e]),
                            ] {
                                assert!(
                                    (got as f64 - want).abs() < 1e-5,
                                    "{kv_type} {window:?} {path} row {t} head {h}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
