//! `out[t] = W · x[t]` for a batch of activation rows, W in any stored dtype.

use rayon::prelude::*;

use crate::act_quant::QuantizedRow;
use crate::dispatch::{isa, multiversion};
use crate::dot::{dequantize_row, dot_f32, dot_row};
use crate::DType;

/// How activations meet quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Quantized to 8 bits per block of 32, integer dot products: llama.cpp's numerics.
    #[default]
    Q8,
    /// As [`Activations::Q8`], but matmuls of 4 to 9 activation rows take the tiled kernels
    /// too (where the CPU has them): about twice the row kernels' speed there, with the f32
    /// additions in another order than the row kernels', which follow llama.cpp's (what keeps
    /// a short prompt's greedy run on llama.cpp's at near-ties). For steps that batch separate
    /// sequences, which are throughput-bound.
    Q8Batched,
    /// Kept in f32; weights dequantized block by block: the exact product of the stored weights.
    F32,
}

/// A borrowed weight matrix: `rows` stored rows of `cols` elements each, row-major.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    /// Bytes per stored row (`dtype.row_bytes(cols)`), precomputed by the constructor.
    row_bytes: usize,
}

impl<'a> MatRef<'a> {
    /// Returns `None` when `data` does not hold exactly `rows × cols` elements of `dtype`.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Option<Self> {
        let row_bytes = dtype.row_bytes(cols).ok()?;
        (row_bytes.checked_mul(rows)? == data.len()).then_some(Self {
            dtype,
            rows,
            cols,
            data,
            row_bytes,
        })
    }

    pub fn row(&self, i: usize) -> &'a [u8] {
        &self.data[i * self.row_bytes..(i + 1) * self.row_bytes]
    }

    /// Row `i` expanded to f32.
    pub fn dequantize_row_into(&self, i: usize, out: &mut [f32]) {
        dequantize_row(self.dtype, self.row(i), out);
    }
}

/// Activation rows in `x` ([T, cols]), checking `out` is [T, rows].
fn batch_rows(w: &MatRef<'_>, x: &[f32], out: &[f32]) -> usize {
    assert_eq!(
        x.len() % w.cols,
        0,
        "activation length is not a multiple of cols"
    );
    let t = x.len() / w.cols;
    assert_eq!(out.len(), t * w.rows, "output has the wrong length");
    t
}

/// Rows of W handled by one task: enough work to amortize scheduling, enough tasks to balance.
fn rows_per_task(rows: usize) -> usize {
    let tasks = rayon::current_num_threads() * 8;
    rows.div_ceil(tasks).clamp(1, 256)
}

/// `out[t][r] = Σ_c W[r][c] · x[t][c]`, with `x` = [T, cols] and `out` = [T, rows].
///
/// Work is split by weight rows, so each row is read from memory once for the whole batch.
/// For a batch, a row is expanded to f32 once and reused by every token.
pub fn matmul(w: &MatRef<'_>, x: &[f32], out: &mut [f32]) {
    matmul_with(w, x, out, Activations::F32)
}

/// [`matmul`], with quantized weights meeting activations as `act` says.
pub fn matmul_with(w: &MatRef<'_>, x: &[f32], out: &mut [f32], act: Activations) {
    if act != Activations::F32 && w.dtype.is_quantized() {
        return matmul_q8(w, x, out, act == Activations::Q8Batched);
    }
    let (rows, cols) = (w.rows, w.cols);
    let t = batch_rows(w, x, out);
    if t == 0 {
        return;
    }
    let chunk = rows_per_task(rows);
    let isa = isa();
    if t == 1 {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, o)| rows_dot(isa, w, ci * chunk, x, o));
        return;
    }
    // Row-major over W: fill out_t = [rows, T], then transpose into [T, rows].
    let mut out_t = vec![0f32; rows * t];
    out_t
        .par_chunks_mut(chunk * t)
        .enumerate()
        .for_each(|(ci, o)| {
            let mut wrow = vec![0f32; cols];
            rows_batch(isa, w, ci * chunk, x, &mut wrow, o)
        });
    transpose_into(&out_t, t, rows, out);
}

/// `out_t` = [rows, T] → `out` = [T, rows].
fn transpose_into(out_t: &[f32], t: usize, rows: usize, out: &mut [f32]) {
    if t == 1 {
        out.copy_from_slice(out_t);
        return;
    }
    for (r, col) in out_t.chunks_exact(t).enumerate() {
        for (ti, v) in col.iter().enumerate() {
            out[ti * rows + r] = *v;
        }
    }
}

multiversion! {
    /// `out[j] = W[first + j] · x` for one activation row.
    fn rows_dot(w: &MatRef<'_>, first: usize, x: &[f32], out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = dot_row(w.dtype, w.row(first + j), x);
        }
    }
}

multiversion! {
    /// For rows `first..`, expand the row to f32 once, then dot it with every activation row:
    /// `out` = [rows of this chunk, T].
    fn rows_batch(w: &MatRef<'_>, first: usize, x: &[f32], wrow: &mut [f32], out: &mut [f32]) {
        let cols = wrow.len();
        let t = x.len() / cols;
        for (j, orow) in out.chunks_exact_mut(t).enumerate() {
            dequantize_row(w.dtype, w.row(first + j), wrow);
            for (ti, v) in orow.iter_mut().enumerate() {
                *v = dot_f32(wrow, &x[ti * cols..(ti + 1) * cols]);
            }
        }
    }
}

multiversion! {
    /// Integer dot products of rows `first..` with every quantized activation row:
    /// `out` = [rows of this chunk, T].
    fn rows_q8(w: &MatRef<'_>, first: usize, xq: &[QuantizedRow], out: &mut [f32]) {
        let t = xq.len();
        for (j, orow) in out.chunks_exact_mut(t).enumerate() {
            let row = w.row(first + j);
            for (v, xr) in orow.iter_mut().zip(xq) {
                *v = xr.dot(w.dtype, row);
            }
        }
    }
}

/// Buffers `matmul_q8` keeps between calls on a thread: the quantized activation rows and
/// the [rows, T] result, so a decode step allocates nothing once they have grown.
#[derive(Default)]
struct Q8Scratch {
    xq: Vec<QuantizedRow>,
    out_t: Vec<f32>,
    /// Token groups packed for the tiled kernels.
    #[cfg(target_arch = "x86_64")]
    panels: Vec<crate::x86_tile::Panel>,
    /// The one activation row of a decode matmul, laid out for the decode kernels.
    #[cfg(target_arch = "x86_64")]
    decode: crate::x86_decode::DecodeRow,
}

thread_local! {
    static Q8_SCRATCH: std::cell::RefCell<Q8Scratch> = Default::default();
}

/// Each activation row quantized once, then integer dot products with every weight row;
/// `small_tiles`: 4 to 9 rows take the tiled kernels too ([`Activations::Q8Batched`]).
fn matmul_q8(w: &MatRef<'_>, x: &[f32], out: &mut [f32], small_tiles: bool) {
    let t = batch_rows(w, x, out);
    if t == 0 {
        return;
    }
    Q8_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => matmul_q8_with(w, x, out, small_tiles, &mut s),
        // A matmul already running on this thread (rayon ran another job while it waited):
        // this one gets buffers of its own.
        Err(_) => matmul_q8_with(w, x, out, small_tiles, &mut Q8Scratch::default()),
    })
}

fn matmul_q8_with(
    w: &MatRef<'_>,
    x: &[f32],
    out: &mut [f32],
    small_tiles: bool,
    s: &mut Q8Scratch,
) {
    let (rows, cols) = (w.rows, w.cols);
    let t = x.len() / cols;
    s.xq.truncate(t);
    while s.xq.len() < t {
        s.xq.push(QuantizedRow::for_weight(w.dtype, &[]).expect("a quantized weight type"));
    }
    if t == 1 {
        s.xq[0].refill(w.dtype, x);
    } else {
        s.xq.par_iter_mut()
            .zip(x.par_chunks_exact(cols))
            .for_each(|(q, r)| q.refill(w.dtype, r));
    }
    let xq = &s.xq;
    let chunk = rows_per_task(rows);
    let isa = isa();
    // One token: the result is already in output order.
    let out_t: &mut [f32] = if t == 1 {
        out
    } else {
        s.out_t.resize(rows * t, 0.0);
        &mut s.out_t
    };
    #[cfg(target_arch = "x86_64")]
    {
        use crate::x86_tile::TOKENS;
        if t == 1 {
            if let Some(kernel) = crate::x86_decode::kernel(isa, w.dtype) {
                s.decode.fill(isa, w.dtype, &xq[0]);
                let (x, rb) = (&s.decode, w.row_bytes);
                out_t.par_chunks_mut(chunk).enumerate().for_each(|(ci, o)| {
                    let rows = &w.data[ci * chunk * rb..(ci * chunk + o.len()) * rb];
                    // SAFETY: `kernel` checked the CPU's features; `rows` holds `o.len()` rows
                    // of `w.dtype`, and `x` was laid out for `w.dtype` from a row as long.
                    unsafe { kernel(rows, rb, x, o) };
                });
                return;
            }
        }
        // Fewer tokens stay on the row kernels. A one-token tile was slower in decode from
        // memory (Q4_0 7B: 2.3 vs 2.8 tok/s); four-token tiles are 2.4–3.5× the row kernels
        // at 4–7 tokens, but the row kernels add in llama.cpp's order, which keeps short
        // prompts' greedy runs on llama.cpp's (tests/smollm2.rs), so they wait for batched
        // decode.
        // Eight-token tiles where ten-token ones would pad more than a tenth: the batched
        // decode steps of 16 and 32 sequences (Q4_0 7B, 2 threads: 16 tokens 17.0 vs 14.2
        // tok/s, 32: 20.2 vs 17.6; equal at 40 and 64, and longer prompts keep the wider tile,
        // which unpacks each weight block for more tokens). Each token's sums are its own, so
        // the tile width never changes a result.
        let padded = t.div_ceil(TOKENS) * TOKENS;
        let tiled = match t {
            4 if small_tiles => tiled::<4>(w, xq, &mut s.panels, out_t, isa, chunk),
            5..TOKENS if small_tiles => tiled::<8>(w, xq, &mut s.panels, out_t, isa, chunk),
            _ if t < TOKENS => None,
            _ if crate::x86_amx::amx().is_some() && crate::x86_amx::supports(w.dtype) => {
                amx_tiled(w, xq, &mut s.panels, out_t, isa, chunk)
            }
            _ if (padded - t) * 10 > t && t.div_ceil(8) * 8 < padded => {
                tiled::<8>(w, xq, &mut s.panels, out_t, isa, chunk)
            }
            _ => tiled::<TOKENS>(w, xq, &mut s.panels, out_t, isa, chunk),
        };
        // Where the CPU has no VNNI tiles, the AVX2 ones, at the same token counts.
        let tiled = match tiled {
            None if t >= TOKENS || (small_tiles && t >= 4) => {
                avx2_tiled(w, xq, &mut s.panels, out_t, isa, chunk)
            }
            done => done,
        };
        if let Some(chunk) = tiled {
            if t > 1 {
                // Each task filled its block of `out_t` as [T, its rows]: copied into `out`
                // ([T, rows]) in contiguous runs, in parallel over tokens (a transpose of
                // [rows, T] cost a third of the time at 512 tokens).
                let blocks = &s.out_t;
                out.par_chunks_mut(rows).enumerate().for_each(|(ti, orow)| {
                    for (ci, seg) in orow.chunks_mut(chunk).enumerate() {
                        let n = seg.len();
                        seg.copy_from_slice(&blocks[ci * chunk * t + ti * n..][..n]);
                    }
                });
            }
            return;
        }
        if let Some((one, four)) = crate::x86::row_dots(isa, w.dtype) {
            out_t
                .par_chunks_mut(chunk * t)
                .enumerate()
                .for_each(|(ci, o)| {
                    // Tokens in groups of GROUP, outermost: a group's activation rows stay in L1
                    // while every weight row of this task meets them (rows come from L2).
                    // Weight row outermost instead streamed all T activation rows from L2 per
                    // weight row, which bounded prefill by L2 bandwidth.
                    const G: usize = crate::x86::GROUP;
                    let whole = t / G * G;
                    for g in (0..whole).step_by(G) {
                        let xs = &xq[g..g + G];
                        for (j, orow) in o.chunks_exact_mut(t).enumerate() {
                            let row = w.row(ci * chunk + j);
                            // SAFETY: `row_dots` gave kernels for features `isa()` detected on this CPU;
                            // `row` holds whole `w.dtype` blocks, `xs` GROUP rows quantized for `w.dtype`.
                            unsafe { four(row, xs, &mut orow[g..g + G]) };
                        }
                    }
                    for (j, orow) in o.chunks_exact_mut(t).enumerate() {
                        let row = w.row(ci * chunk + j);
                        for (v, xr) in orow[whole..].iter_mut().zip(&xq[whole..]) {
                            // SAFETY: as above, for one activation row and its single-row kernel.
                            *v = unsafe { one(row, xr) };
                        }
                    }
                });
            if t > 1 {
                transpose_into(&s.out_t, t, rows, out);
            }
            return;
        }
    }
    out_t
        .par_chunks_mut(chunk * t)
        .enumerate()
        .for_each(|(ci, o)| rows_q8(isa, w, ci * chunk, xq, o));
    if t > 1 {
        transpose_into(&s.out_t, t, rows, out);
    }
}

/// The tiled kernels with N tokens per tile (the last tile repeats the last token): tasks of
/// whole 16-row tiles write `out_t` in blocks of [T, the task's rows]. Returns the rows per
/// task, or `None` when this CPU or type has no tiled kernel.
#[cfg(target_arch = "x86_64")]
fn tiled<const N: usize>(
    w: &MatRef<'_>,
    xq: &[QuantizedRow],
    panels: &mut Vec<crate::x86_tile::Panel>,
    out_t: &mut [f32],
    isa: crate::dispatch::Isa,
    chunk: usize,
) -> Option<usize> {
    use crate::x86_tile::ROWS;
    let tile = crate::x86_tile::tile_kernel::<N>(isa, w.dtype)?;
    let t = xq.len();
    fill_panels::<N>(w.dtype, xq, panels);
    let panels = &panels[..];
    let row_dot = crate::x86::row_dots(isa, w.dtype).map(|k| k.0);
    // At most 128 rows a task, so its weights stay in L2 while the panels pass (5–12% faster
    // than 256 in one back-to-back run of matvec_speed, within noise in another).
    let mut chunk = chunk.min(128).next_multiple_of(ROWS);
    // Several panels: each tile unpacked once for all of them, with tasks no larger than
    // their unpacked tiles fit in half of L2.
    let unpacked = match panels.len() {
        1 => None,
        _ => crate::x86_tile::unpacked_kernels::<N>(isa, w.dtype),
    };
    if unpacked.is_some() {
        const BUDGET: usize = 1 << 20;
        let tile_bytes = crate::x86_tile::unpacked_tile_bytes(w.dtype, w.cols);
        chunk = chunk.min((BUDGET / tile_bytes).max(1) * ROWS);
    }
    out_t
        .par_chunks_mut(chunk * t)
        .enumerate()
        .for_each(|(ci, o)| {
            let first = ci * chunk;
            match unpacked {
                Some(k) => unpacked_rows::<N>(w, first, xq, panels, o, k, row_dot),
                None => tiled_rows::<N>(w, first, xq, panels, o, tile, row_dot),
            }
        });
    Some(chunk)
}

thread_local! {
    /// A task's tiles unpacked by [`unpacked_rows`], kept for the thread's next task.
    #[cfg(target_arch = "x86_64")]
    static UNPACKED: std::cell::RefCell<Vec<Vec<std::arch::x86_64::__m512i>>> = Default::default();
}

/// [`tiled_rows`] with each of the task's tiles unpacked once, then met by every panel.
#[cfg(target_arch = "x86_64")]
fn unpacked_rows<const N: usize>(
    w: &MatRef<'_>,
    first: usize,
    xq: &[QuantizedRow],
    panels: &[crate::x86_tile::Panel],
    out: &mut [f32],
    (unpack, kernel): (
        crate::x86_tile::UnpackFn,
        crate::x86_tile::UnpackedTileFn<N>,
    ),
    row_dot: Option<crate::x86::RowDot>,
) {
    use crate::x86_tile::ROWS;
    let tile = |u: &[_], p: &_, ahead: &[u8], res: &mut _| {
        // SAFETY: `unpacked_kernels` gave the kernel for features `isa()` detected on this
        // CPU; the tile was unpacked from rows of `w.cols` values and the panel filled for
        // `w.dtype` from rows as long.
        unsafe { kernel(u, p, ahead, res) }
    };
    // SAFETY: as above, for `unpack`, given ROWS whole rows of `w.dtype` blocks.
    let unpack = |rows: &[u8], tile: &mut Vec<_>| unsafe { unpack(rows, w.row_bytes, tile) };
    unpacked_panels::<_, ROWS, N>(w, first, xq, panels, out, &UNPACKED, unpack, tile, row_dot);
}

/// The task's whole tiles of `R` rows unpacked once into the thread's buffer (`buffers`, kept
/// for its next task), then every panel of N tokens met by each, and the rows short of a
/// tile on the row kernel: `out` = [T, rows of this task]. Each kernel call also asks a share
/// of the rows this thread most likely takes next (rayon hands a thread the neighbouring
/// chunks of its range) into L2, so the next unpack does not wait on memory.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn unpacked_panels<V: 'static, const R: usize, const N: usize>(
    w: &MatRef<'_>,
    first: usize,
    xq: &[QuantizedRow],
    panels: &[crate::x86_tile::Panel],
    out: &mut [f32],
    buffers: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Vec<V>>>>,
    unpack: impl Fn(&[u8], &mut Vec<V>),
    kernel: impl Fn(&[V], &crate::x86_tile::Panel, &[u8], &mut [[f32; R]; N]),
    row_dot: Option<crate::x86::RowDot>,
) {
    let t = xq.len();
    let whole = out.len() / t / R * R;
    buffers.with(|cell| match cell.try_borrow_mut() {
        Ok(mut tiles) => tile_panels(w, first, t, panels, out, &mut tiles, &unpack, &kernel),
        // A matmul already running on this thread: this one gets a buffer of its own.
        Err(_) => tile_panels(w, first, t, panels, out, &mut Vec::new(), &unpack, &kernel),
    });
    rest_on_row_kernel(w, first, whole, xq, out, row_dot);
}

/// [`unpacked_panels`]' tiles, with the buffer in hand.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn tile_panels<V, const R: usize, const N: usize>(
    w: &MatRef<'_>,
    first: usize,
    t: usize,
    panels: &[crate::x86_tile::Panel],
    out: &mut [f32],
    tiles: &mut Vec<Vec<V>>,
    unpack: &impl Fn(&[u8], &mut Vec<V>),
    kernel: &impl Fn(&[V], &crate::x86_tile::Panel, &[u8], &mut [[f32; R]; N]),
) {
    let n = out.len() / t;
    let whole = n / R * R;
    let rb = w.row_bytes;
    tiles.resize_with(tiles.len().max(whole / R), Vec::new);
    for (k, tile) in tiles.iter_mut().take(whole / R).enumerate() {
        let start = (first + k * R) * rb;
        unpack(&w.data[start..start + R * rb], tile);
    }
    let next = w.data.get((first + n) * rb..).unwrap_or_default();
    let next = &next[..next.len().min(n * rb)];
    let calls = (panels.len() * (whole / R)).max(1);
    let share = next.len().div_ceil(calls).next_multiple_of(64).max(64);
    let mut ahead = next.chunks(share);
    for (pi, panel) in panels.iter().enumerate() {
        let g = pi * N;
        let real = N.min(t - g);
        for (k, tile) in tiles.iter().take(whole / R).enumerate() {
            let mut res = [[0f32; R]; N];
            kernel(tile, panel, ahead.next().unwrap_or_default(), &mut res);
            for (i, res_i) in res.iter().enumerate().take(real) {
                out[(g + i) * n + k * R..][..R].copy_from_slice(res_i);
            }
        }
    }
}

/// [`tiled`] on the AVX2 tiles ([`crate::x86_tile_avx2`]): each task unpacks its tiles once
/// and meets every panel with them. Returns the rows per task, or `None` when this CPU or type
/// has no such kernel (or has the VNNI tiles).
#[cfg(target_arch = "x86_64")]
fn avx2_tiled(
    w: &MatRef<'_>,
    xq: &[QuantizedRow],
    panels: &mut Vec<crate::x86_tile::Panel>,
    out_t: &mut [f32],
    isa: crate::dispatch::Isa,
    chunk: usize,
) -> Option<usize> {
    use crate::x86_tile_avx2::{self as avx2, ROWS, TOKENS};
    let kernels = avx2::kernels(isa, w.dtype)?;
    let t = xq.len();
    fill_panels::<TOKENS>(w.dtype, xq, panels);
    let panels = &panels[..];
    let row_dot = crate::x86::row_dots(isa, w.dtype).map(|k| k.0);
    // A task's unpacked tiles in half of a 512 KiB L2 (the smallest of the AVX2 cores that
    // lack VNNI: Zen 2 and 3), so every panel finds them there.
    const BUDGET: usize = 256 << 10;
    let per_tile = avx2::tile_bytes(w.dtype, w.cols);
    let chunk = chunk
        .min(128)
        .next_multiple_of(ROWS)
        .min((BUDGET / per_tile).max(1) * ROWS);
    out_t
        .par_chunks_mut(chunk * t)
        .enumerate()
        .for_each(|(ci, o)| avx2_rows(w, ci * chunk, xq, panels, o, kernels, row_dot));
    Some(chunk)
}

thread_local! {
    /// A task's tiles unpacked by [`avx2_rows`], kept for the thread's next task.
    #[cfg(target_arch = "x86_64")]
    static UNPACKED_AVX2: std::cell::RefCell<Vec<Vec<std::arch::x86_64::__m256i>>> =
        Default::default();
}

/// Rows `first..` against every token on the AVX2 tiles, each tile unpacked once: `out` =
/// [T, rows of this task].
#[cfg(target_arch = "x86_64")]
fn avx2_rows(
    w: &MatRef<'_>,
    first: usize,
    xq: &[QuantizedRow],
    panels: &[crate::x86_tile::Panel],
    out: &mut [f32],
    (unpack, kernel): (crate::x86_tile_avx2::UnpackFn, crate::x86_tile_avx2::TileFn),
    row_dot: Option<crate::x86::RowDot>,
) {
    use crate::x86_tile_avx2::{ROWS, TOKENS};
    let tile = |u: &[_], p: &_, ahead: &[u8], res: &mut _| {
        // SAFETY: `kernels` gave the kernel for features `isa()` detected on this CPU; the
        // tile was unpacked from rows of `w.cols` values and the panel filled for `w.dtype`
        // from rows as long.
        unsafe { kernel(u, p, ahead, res) }
    };
    // SAFETY: as above, for `unpack`, given ROWS whole rows of `w.dtype` blocks.
    let unpack = |rows: &[u8], tile: &mut Vec<_>| unsafe { unpack(rows, w.row_bytes, tile) };
    let buffers = &UNPACKED_AVX2;
    unpacked_panels::<_, ROWS, TOKENS>(w, first, xq, panels, out, buffers, unpack, tile, row_dot);
}

/// `xq` packed N tokens to a panel for `dtype`'s tiled kernels, the last panel padded with
/// repeats of the last token.
#[cfg(target_arch = "x86_64")]
fn fill_panels<const N: usize>(
    dtype: DType,
    xq: &[QuantizedRow],
    panels: &mut Vec<crate::x86_tile::Panel>,
) {
    let t = xq.len();
    panels.resize_with(t.div_ceil(N), Default::default);
    let fill = |(pi, panel): (usize, &mut crate::x86_tile::Panel)| {
        let xs: [&QuantizedRow; N] = std::array::from_fn(|k| &xq[(pi * N + k).min(t - 1)]);
        panel.fill(dtype, &xs);
    };
    if panels.len() == 1 {
        fill((0, &mut panels[0]));
    } else {
        panels.par_iter_mut().enumerate().for_each(fill);
    }
}

/// [`tiled`] on AMX tiles: tasks of whole 16-row groups (the rest of a task's rows on the row
/// kernel) write `out_t` in blocks of [T, the task's rows]. Returns the rows per task.
#[cfg(target_arch = "x86_64")]
fn amx_tiled(
    w: &MatRef<'_>,
    xq: &[QuantizedRow],
    panels: &mut Vec<crate::x86_tile::Panel>,
    out_t: &mut [f32],
    isa: crate::dispatch::Isa,
    chunk: usize,
) -> Option<usize> {
    use crate::x86_amx::{self, TOKENS};
    use crate::x86_tile::ROWS;
    let amx = x86_amx::amx()?;
    let t = xq.len();
    fill_panels::<TOKENS>(w.dtype, xq, panels);
    let panels = &panels[..];
    let row_dot = crate::x86::row_dots(isa, w.dtype).map(|k| k.0);
    let chunk = chunk.next_multiple_of(ROWS);
    let rb = w.row_bytes;
    out_t
        .par_chunks_mut(chunk * t)
        .enumerate()
        .for_each(|(ci, out)| {
            let first = ci * chunk;
            let n = out.len() / t;
            let whole = n / ROWS * ROWS;
            if whole > 0 {
                let rows = &w.data[first * rb..(first + whole) * rb];
                x86_amx::rows(amx, w.dtype, rows, rb, panels, t, out, n);
            }
            rest_on_row_kernel(w, first, whole, xq, out, row_dot);
        });
    Some(chunk)
}

/// Rows `first + whole..` of a task (those short of a whole tile) against every token on the
/// single-row kernel: `out` = [T, rows of this task].
#[cfg(target_arch = "x86_64")]
fn rest_on_row_kernel(
    w: &MatRef<'_>,
    first: usize,
    whole: usize,
    xq: &[QuantizedRow],
    out: &mut [f32],
    row_dot: Option<crate::x86::RowDot>,
) {
    let n = out.len() / xq.len();
    for j in whole..n {
        let row = w.row(first + j);
        for (ti, xr) in xq.iter().enumerate() {
            out[ti * n + j] = match row_dot {
                // SAFETY: `row_dots` gave the kernel for features `isa()` detected on this CPU.
                Some(one) => unsafe { one(row, xr) },
                None => xr.dot(w.dtype, row),
            };
        }
    }
}

/// Rows `first..` against every token with the tiled kernel, token panels outermost (a
/// panel stays in cache while the task's weight rows pass): `out` = [T, rows of this task].
#[cfg(target_arch = "x86_64")]
fn tiled_rows<const N: usize>(
    w: &MatRef<'_>,
    first: usize,
    xq: &[QuantizedRow],
    panels: &[crate::x86_tile::Panel],
    out: &mut [f32],
    tile: crate::x86_tile::TileFn<N>,
    row_dot: Option<crate::x86::RowDot>,
) {
    use crate::x86_tile::ROWS;
    let t = xq.len();
    let n = out.len() / t;
    let whole = n / ROWS * ROWS;
    let rb = w.row_bytes;
    for (pi, panel) in panels.iter().enumerate() {
        let g = pi * N;
        let real = N.min(t - g);
        for r0 in (0..whole).step_by(ROWS) {
            let start = (first + r0) * rb;
            let mut res = [[0f32; ROWS]; N];
            // SAFETY: `tile_kernel` gave `tile` for features `isa()` detected on this CPU; the
            // slice is ROWS whole rows of `w.dtype` blocks and the panel was filled for
            // `w.dtype` from rows of `w.cols` values.
            unsafe { tile(&w.data[start..start + ROWS * rb], rb, panel, &mut res) };
            for (k, res_k) in res.iter().enumerate().take(real) {
                out[(g + k) * n + r0..][..ROWS].copy_from_slice(res_k);
            }
        }
    }
    rest_on_row_kernel(w, first, whole, xq, out, row_dot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_matmul_matches_per_row_dots() {
        let (rows, cols) = (37, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
            .collect();
        let bytes: &[u8] = bytemuck::cast_slice(&w);
        let m = MatRef::new(DType::F32, rows, cols, bytes).unwrap();
        for t in [1usize, 2, 5] {
            let x: Vec<f32> = (0..t * cols)
                .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
                .collect();
            let mut out = vec![0f32; t * rows];
            matmul(&m, &x, &mut out);
            for ti in 0..t {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[ti * cols + c]).sum();
                    assert!((out[ti * rows + r] - want).abs() < 1e-4);
                }
            }
        }
    }

    /// Each instruction set's build of the kernels gives the portable reference's result, bit
    /// for bit (same operations in the same order; only the vector width differs).
    #[test]
    fn every_isa_matches_the_portable_kernels() {
        use crate::dispatch::{Isa, Level};
        let (rows, cols) = (19, 256);
        for dtype in DType::ALL {
            let rb = dtype.row_bytes(cols).unwrap();
            let mut data: Vec<u8> = (0..rows * rb)
                .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(11) as u8)
                .collect();
            // Sane scales and floats: rewrite every 2-byte f16/bf16 (or scale) field.
            let (step, fields): (usize, &[usize]) = match dtype {
                DType::F16 | DType::BF16 => (2, &[0]),
                DType::F32 => (4, &[]),
                _ => (dtype.block_bytes(), dtype.scale_fields()),
            };
            for (i, blk) in data.chunks_exact_mut(step).enumerate() {
                let mut v = ((i * 37) % 101) as f32 / 101.0 - 0.5;
                if dtype.is_quantized() {
                    v /= 16.0;
                }
                for &f in fields {
                    let b = if dtype == DType::BF16 {
                        half::bf16::from_f32(v).to_le_bytes()
                    } else {
                        half::f16::from_f32(v).to_le_bytes()
                    };
                    blk[f..f + 2].copy_from_slice(&b);
                }
                if dtype == DType::F32 {
                    blk.copy_from_slice(&v.to_le_bytes());
                }
            }
            let m = MatRef::new(dtype, rows, cols, &data).unwrap();
            for t in [1usize, 3] {
                let x: Vec<f32> = (0..t * cols)
                    .map(|i| ((i * 13) % 29) as f32 / 29.0 - 0.5)
                    .collect();
                let xq: Vec<QuantizedRow> = x
                    .chunks_exact(cols)
                    .filter_map(|r| QuantizedRow::for_weight(dtype, r))
                    .collect();
                let run = |isa: Isa| {
                    let mut a = vec![0f32; rows];
                    rows_dot(isa, &m, 0, &x[..cols], &mut a);
                    let mut b = vec![0f32; rows * t];
                    rows_batch(isa, &m, 0, &x, &mut vec![0f32; cols], &mut b);
                    let mut c = vec![0f32; rows * t];
                    if !xq.is_empty() {
                        rows_q8(isa, &m, 0, &xq, &mut c);
                    }
                    (a, b, c)
                };
                let reference = run(Isa::PORTABLE);
                for isa in [crate::dispatch::isa(), Isa::at_most(Level::Avx2)] {
                    let got = run(isa);
                    assert!(
                        got == reference,
                        "{dtype} T={t} {isa:?} differs from the portable kernels"
                    );
                }
            }
        }
    }

    /// The 8-bit path, one token or many, reusing its buffers across calls of different
    /// types and sizes, gives each row's reference integer dot.
    #[test]
    fn q8_matmul_matches_the_reference_dots_across_calls() {
        for (dtype, rows, cols, t) in [
            (DType::Q4_0, 13, 256, 1),
            (DType::Q4_K, 7, 512, 11),
            (DType::Q4_0, 5, 64, 9),
            (DType::Q8_0, 9, 256, 3),
            (DType::Q4_1, 3, 256, 1),
            // Whole 8-row tiles, tokens past the last whole group of 8, leftover rows.
            (DType::Q4_0, 21, 256, 19),
            (DType::Q8_0, 24, 64, 13),
            (DType::Q6_K, 16, 512, 8),
            (DType::Q5_K, 9, 256, 10),
            (DType::Q5_1, 40, 96, 17),
            // Several panels on tiles unpacked once per task, over several tasks (the
            // thread's buffers reused between them, for tasks of different tile counts).
            (DType::Q4_K, 48, 512, 25),
            (DType::Q6_K, 35, 256, 21),
            (DType::Q8_0, 300, 64, 23),
            (DType::Q4_0, 517, 128, 31),
        ] {
            let rb = dtype.row_bytes(cols).unwrap();
            let mut data: Vec<u8> = (0..rows * rb)
                .map(|i| (i as u32).wrapping_mul(2246822519).rotate_left(9) as u8)
                .collect();
            for blk in data.chunks_exact_mut(dtype.block_bytes()) {
                for &f in dtype.scale_fields() {
                    blk[f..f + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                }
            }
            let m = MatRef::new(dtype, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..t * cols)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let mut out = vec![0f32; t * rows];
            matmul_with(&m, &x, &mut out, Activations::Q8);
            for (ti, xr) in x.chunks_exact(cols).enumerate() {
                let q = QuantizedRow::for_weight(dtype, xr).unwrap();
                for r in 0..rows {
                    let want = q.dot(dtype, m.row(r));
                    let got = out[ti * rows + r];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{dtype} T={t} token {ti} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn matref_rejects_wrong_size() {
        assert!(MatRef::new(DType::F32, 2, 3, &[0u8; 23]).is_none());
        assert!(MatRef::new(DType::Q8_0, 2, 32, &[0u8; 68]).is_some());
        assert!(MatRef::new(DType::Q8_0, 2, 33, &[0u8; 68]).is_none());
    }
}
