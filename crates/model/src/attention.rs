//! Causal, optionally windowed, grouped-query attention over the paged KV cache.
//!
//! Keys are visited one cache block at a time with an online softmax (running max m, running
//! sum l, running weighted sum of values), so no T×T score matrix exists even for long prompts:
//!   m' = max(m, max_j s_j);  acc ← acc·e^(m−m') + Σ_j e^(s_j−m')·v_j;  l ← l·e^(m−m') + Σ_j e^(s_j−m')
//!
//! The unit of work is a KV head's run of keys met by all the query heads that share it
//! ([`attend_group`]): the cache stores each head's keys contiguously, and each key and value
//! is read once for the group. Decode splits the work by (row, KV head, range of keys) and
//! merges the ranges' softmaxes; prefill by chunks of rows, each cache block widened to f32
//! once for all the chunk's rows.

use std::cell::RefCell;

use rayon::prelude::*;

use bora_kernels::attention::{finish, OnlineSoftmax};
use bora_kernels::attention_group::{attend_group, HeadRun, HEADS_PER_PASS};
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
        attend_rows::<E>(pool, layer, shape, rows, q, out);
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
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let bs = pool.layout().block_size;
    let isa = bora_kernels::dispatch::isa();
    let first_key = |r: &QueryRow<'_>| shape.window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
    out.fill(0.0);
    with_scratch(rows.len() * group, |scratch| {
        let TaskScratch { states, widened } = scratch;
        let mut scores = [0f32; HEADS_PER_PASS * MAX_BLOCK_SIZE];
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
                states
                    .iter_mut()
                    .for_each(|s| *s = OnlineSoftmax::default());
                let mut start = lo;
                while start <= hi {
                    let (block, slot) = kv.locate(start, bs);
                    let n = (bs - slot).min(hi + 1 - start);
                    let (keys, values) = pool.head_slots::<E>(block, layer, kv_head, slot, n);
                    let block_run = E::widened(isa, HeadRun::new(keys, values, n), hd, widened);
                    for t in run.clone() {
                        // The part of this block row t sees: keys first_key ..= pos.
                        let a = first_key(&rows[t]).max(start);
                        let b = (rows[t].pos + 1).min(start + n);
                        if a >= b {
                            continue;
                        }
                        let off = (a - start) * hd;
                        let keys =
                            HeadRun::new(&block_run.keys[off..], &block_run.values[off..], b - a);
                        // Row t's query heads that share this KV head, consecutive in q.
                        let heads =
                            t * d + kv_head * group * hd..t * d + (kv_head + 1) * group * hd;
                        let states = &mut states[(t - run_start) * group..][..group];
                        attend_group(
                            isa,
                            &q[heads.clone()],
                            keys,
                            scale,
                            states,
                            &mut scores,
                            &mut out[heads],
                        );
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

/// Keys per split of a row's key range in decode: long ranges are split so that the (row,
/// KV head) pairs, too few to share out evenly (SmolLM2 has 3 KV heads for 2 threads), come
/// in more pieces. The splits depend on the row alone, not on the step's other rows or the
/// thread count, so a row's attention is the same bits however it is batched.
const SPLIT_KEYS: usize = 256;

thread_local! {
    /// Each task's unnormalized output and running softmax, kept on the calling thread so a
    /// decode step allocates nothing.
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Decode and short steps. The parallel tasks are (row, KV head, split of the row's keys):
/// each folds the query heads sharing its KV head over its keys together, one contiguous run
/// of the cache per block, so each key and value is read once for the group. The splits'
/// partial softmaxes are merged at the end.
fn attend_rows<E: CacheElem>(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    rows: &[QueryRow<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    if rows.is_empty() {
        return;
    }
    let hd = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let bs = pool.layout().block_size;
    let first_key = |r: &QueryRow<'_>| shape.window.map_or(0, |w| (r.pos + 1).saturating_sub(w));
    let blocks_seen = |r: &QueryRow<'_>| r.pos / bs + 1 - first_key(r).min(r.pos) / bs;
    let blocks_per_split = (SPLIT_KEYS / bs).max(1);
    let splits_of = |r: &QueryRow<'_>| blocks_seen(r).div_ceil(blocks_per_split);
    // Every (row, KV head) gets as many task slots as the row with the most splits; a row's
    // slots past its own splits stay empty and weigh nothing in the merge.
    let splits = rows.iter().map(splits_of).max().unwrap_or(1);
    let pairs = rows.len() * shape.n_kv_heads;
    // Per task: the group's outputs [group, hd], then each head's m, then each head's l.
    let part = group * (hd + 2);
    let mut run = |partials: &mut Vec<f32>| {
        partials.clear();
        partials.resize(pairs * splits * part, 0.0);
        partials
            .par_chunks_mut(part)
            .enumerate()
            .for_each(|(i, p)| {
                let (split, pair) = (i % splits, i / splits);
                let (t, kv_head) = (pair / shape.n_kv_heads, pair % shape.n_kv_heads);
                let row = &rows[t];
                let heads = (t * shape.n_heads + kv_head * group) * hd;
                let q = &q[heads..heads + group * hd];
                // This split's share of the row's blocks, as positions.
                let (first, n_blocks, own) = (first_key(row), blocks_seen(row), splits_of(row));
                let (lo, hi) = if split < own {
                    let lo_block = first / bs + n_blocks * split / own;
                    let hi_block = first / bs + n_blocks * (split + 1) / own;
                    ((lo_block * bs).max(first), (hi_block * bs).min(row.pos + 1))
                } else {
                    (first, first)
                };
                fold_keys_of_head::<E>(pool, layer, shape, row, kv_head, q, lo..hi, p);
            });
        merge_splits(partials, splits, group, hd, out);
    };
    PARTIALS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut held) => run(&mut held),
        Err(_) => run(&mut Vec::new()),
    });
}

/// One task of [`attend_rows`]: the query heads `q` (`[group, hd]`) sharing `kv_head` over
/// the row's keys at `positions`, written to `part` as the unnormalized outputs, then each
/// head's max score m, then its sum l.
#[allow(clippy::too_many_arguments)]
fn fold_keys_of_head<E: CacheElem>(
    pool: &KvPool,
    layer: usize,
    shape: &AttentionShape,
    row: &QueryRow<'_>,
    kv_head: usize,
    q: &[f32],
    positions: std::ops::Range<usize>,
    part: &mut [f32],
) {
    let hd = shape.head_dim;
    let group = q.len() / hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let bs = pool.layout().block_size;
    let isa = bora_kernels::dispatch::isa();
    let (out, stats) = part.split_at_mut(group * hd);
    out.fill(0.0);
    // This head's keys and values from `start`, up to the block's end or the range's.
    let run_at = |start: usize| {
        let (block, slot) = row.kv.locate(start, bs);
        let n = (bs - slot).min(positions.end - start);
        let (keys, values) = pool.head_slots::<E>(block, layer, kv_head, slot, n);
        HeadRun::new(keys, values, n)
    };
    with_scratch(group, |scratch| {
        let states = &mut scratch.states;
        let mut scores = [0f32; HEADS_PER_PASS * MAX_BLOCK_SIZE];
        let mut start = positions.start;
        while start < positions.end {
            let mut run = run_at(start);
            // The next block is asked for while this one is worked on, spread over the work: at
            // long context it comes from memory. (Two or three blocks ahead measured no
            // faster in `attention_speed`; nor, asked for at once, did two or four blocks
            // ahead for SmolLM2 at 2048 positions.)
            let next = start - start % bs + bs;
            if next < positions.end {
                let r = run_at(next);
                run = run.then(r.keys, r.values);
            }
            attend_group(isa, q, run, scale, states, &mut scores, out);
            start += run.n;
        }
        let (ms, ls) = stats.split_at_mut(group);
        for ((m, l), s) in ms.iter_mut().zip(ls).zip(states.iter()) {
            (*m, *l) = (s.m, s.l);
        }
    });
}

/// `out` ← the softmax attention of each (row, query head), from its splits' partial results
/// in `partials` (laid out as [`attend_rows`] writes them): with M = max_s m_s,
/// out = Σ_s e^(m_s − M)·o_s / Σ_s e^(m_s − M)·l_s. A split that saw no keys has m = −∞ and
/// weighs 0.
fn merge_splits(partials: &[f32], splits: usize, group: usize, hd: usize, out: &mut [f32]) {
    let part = group * (hd + 2);
    for (pair, out) in partials
        .chunks(splits * part)
        .zip(out.chunks_mut(group * hd))
    {
        for (g, o) in out.chunks_mut(hd).enumerate() {
            let m_of = |s: usize| pair[s * part + group * hd + g];
            let l_of = |s: usize| pair[s * part + group * hd + group + g];
            let m = (0..splits).map(m_of).fold(f32::NEG_INFINITY, f32::max);
            let weights = |s: usize| (m_of(s) - m).exp();
            let l: f32 = (0..splits).map(|s| weights(s) * l_of(s)).sum();
            o.fill(0.0);
            for s in 0..splits {
                let w = weights(s) / l;
                let os = &pair[s * part + g * hd..][..hd];
                o.iter_mut().zip(os).for_each(|(x, v)| *x += w * v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvLayout;

    /// Prefill's path (rows attended in chunks) and decode's (one row, or a batch of rows at
    /// different positions) all give plain softmax attention, computed in f64 on K and V as
    /// the cache stores them, for both cache types, with grouped heads (3, and 5: a pass of
    /// four and one), with and without a window (one starting mid-block and split), across
    /// blocks and across decode's splits of a key range. Decode gives the same bits alone and
    /// batched, and the same as prefill while a row's keys are not split.
    #[test]
    fn both_paths_give_softmax_attention_for_both_cache_types() {
        let (n_kv_heads, bs, len) = (2usize, 4usize, 300usize);
        // Head sizes 16 and 24: the SIMD group kernel's path (pairs of 8-lane chunks, and an
        // odd one); 20: the portable one.
        for ((n_heads, hd), kv_type) in [(6, 16), (6, 20), (10, 24)]
            .into_iter()
            .flat_map(|s| [(s, KvType::F32), (s, KvType::F16)])
        {
            for window in [None, Some(7), Some(270)] {
                let layout = KvLayout {
                    n_layers: 2,
                    n_kv_heads,
                    head_dim: hd,
                    block_size: bs,
                    kv_type,
                };
                let mut pool = KvPool::new(layout, len.div_ceil(bs));
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
                // Decode's path with a batch of rows at different positions: each row's key
                // range is split by the longest row's, so short rows get empty splits.
                let picked: Vec<usize> = (0..len).step_by(11).collect();
                assert!(
                    picked.len() < 4 * QUERY_CHUNK,
                    "the batch takes decode's path"
                );
                let batch: Vec<QueryRow<'_>> = picked
                    .iter()
                    .map(|&pos| QueryRow { kv: &seq, pos })
                    .collect();
                let q_batch: Vec<f32> = picked
                    .iter()
                    .flat_map(|&t| q[t * d..(t + 1) * d].to_vec())
                    .collect();
                let mut batched = vec![0f32; picked.len() * d];
                attend(&pool, 1, &shape, &batch, &q_batch, &mut batched);
                for (t, row) in rows.iter().enumerate() {
                    let mut one = vec![0f32; d];
                    let q_row = &q[t * d..(t + 1) * d];
                    attend(&pool, 1, &shape, std::slice::from_ref(row), q_row, &mut one);
                    let in_batch = picked.iter().position(|&p| p == t);
                    let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
                    if let Some(i) = in_batch {
                        let same = one.iter().zip(&batched[i * d..(i + 1) * d]);
                        assert!(
                            same.clone().all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{kv_type} {window:?} row {t}: decode alone and batched differ"
                        );
                    }
                    if t + 1 - first <= SPLIT_KEYS - bs {
                        let same = one.iter().zip(&chunked[t * d..(t + 1) * d]);
                        assert!(
                            same.clone().all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{kv_type} {window:?} row {t}: decode and prefill differ"
                        );
                    }
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
                            let batched = in_batch.map(|i| batched[i * d + h * hd + e]);
                            for (path, got) in [
                                ("chunked", Some(chunked[t * d + h * hd + e])),
                                ("decode", Some(one[h * hd + e])),
                                ("decode batch", batched),
                            ] {
                                let Some(got) = got else { continue };
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

    /// Decode's attention alone on Mistral 7B's shape (32 layers, 32 query and 8 KV heads of
    /// 128, f16 cache, blocks of `BS` = 16), one row at position `POS` (default 543: the
    /// middle of the side-by-side's tg64 after 512), every layer in turn as a decode step
    /// reads them: the cache's bytes read a second, next to a plain parallel read of a buffer
    /// as large. `LAYERS`, `HEADS`, `KV_HEADS` and `HD` set another shape (SmolLM2-135M:
    /// 30, 9, 3, 64).
    #[test]
    #[ignore = "a speed probe: [POS=543 BS=16] cargo test --release -p bora-model attention_speed -- --ignored --nocapture"]
    fn attention_speed() {
        let env =
            |k: &str, default: usize| std::env::var(k).map_or(default, |v| v.parse().unwrap());
        let (pos, bs) = (env("POS", 543), env("BS", 16));
        let (n_layers, n_heads, n_kv_heads, hd) = (
            env("LAYERS", 32),
            env("HEADS", 32),
            env("KV_HEADS", 8),
            env("HD", 128),
        );
        let layout = KvLayout {
            n_layers,
            n_kv_heads,
            head_dim: hd,
            block_size: bs,
            kv_type: KvType::F16,
        };
        let len = pos + 1;
        let mut pool = KvPool::new(layout, len.div_ceil(bs));
        let mut seq = SeqKv::new();
        seq.prepare(&mut pool, len, None).unwrap();
        let kv_dim = n_kv_heads * hd;
        let k: Vec<f32> = (0..kv_dim).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
        for p in 0..len {
            for layer in 0..n_layers {
                pool.write(seq.locate(p, bs), layer, &k, &k);
            }
        }
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: hd,
            window: None,
        };
        let q: Vec<f32> = (0..n_heads * hd).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut out = vec![0f32; n_heads * hd];
        let row = [QueryRow { kv: &seq, pos }];
        let bytes = (n_layers * 2 * kv_dim * 2 * len) as f64;
        let plain: Vec<u64> = vec![1; bytes as usize / 8];
        let mut rates = Vec::new();
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for _ in 0..10 {
                for layer in 0..n_layers {
                    attend(&pool, layer, &shape, &row, &q, &mut out);
                }
            }
            let att = bytes * 10.0 / t.elapsed().as_secs_f64() / 1e9;
            let t = std::time::Instant::now();
            let sum: u64 = plain
                .par_chunks(1 << 16)
                .map(|c| c.iter().sum::<u64>())
                .sum();
            std::hint::black_box(sum);
            let read = bytes / t.elapsed().as_secs_f64() / 1e9;
            rates.push(format!("{att:.1} vs {read:.1}"));
        }
        println!(
            "attention at position {pos}: {:.0} MB of K and V; GB/s, attention vs a plain \
             parallel read: {}",
            bytes / 1e6,
            rates.join(", ")
        );
    }
}
