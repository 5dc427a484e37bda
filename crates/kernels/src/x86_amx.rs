//! Matrix × matrix products on AMX tiles (Intel Advanced Matrix Extensions, INT8), for prefill
//! and batched decode.
//!
//! One `tdpbssd` multiplies a 16 × 32 tile of sixteen tokens' 8-bit activation quants (one
//! block each, read straight from a [`Panel`] of sixteen tokens) by a 32 × 16 tile of sixteen
//! weight rows' values, in i32: 8192 multiply-adds in one instruction, where the VNNI tiles
//! ([`crate::x86_tile`]) need 128 `vpdpbusd`. What remains on the vector units is getting the
//! weights into tile form and scaling each block's i32 sums into f32.
//!
//! The weight side is unpacked once per sixteen rows into a [`Prepared`] buffer (signed values,
//! the same transposition the VNNI tiles do in registers) and then met by every panel, so its
//! cost is shared by all the tokens of a prompt. The f32 side follows the VNNI tiles' order of
//! operations exactly (per block `acc += f32(sum) · (d_w · d_x)`, the same products, the same
//! additions), so the two give bit-identical results: the tests check that, and the VNNI tiles
//! against the scalar reference.
//!
//! The tile registers are set up per task (`ldtilecfg`) and released after (`tilerelease`); the
//! process asks Linux for the tile state once (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), as the
//! kernel requires before a thread may use it.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use crate::blocks::QK_K;
use crate::x86_tile::{
    k4_groups, k4_scales, legacy_block, q6k_chunks, q6k_scales, row_offsets, K4Block, Legacy,
    Panel, Q4_0Layout, Q5_0Layout, Q8_0Layout, ROWS,
};
use crate::DType;

/// Tokens per tile: the sixteen rows of an activation tile.
pub(crate) const TOKENS: usize = 16;

/// Proof that this CPU and OS run the AMX kernels (made only by [`amx`]).
#[derive(Clone, Copy)]
pub(crate) struct Amx(());

/// `Some` when the CPU has AMX-INT8 with AVX-512 VNNI, Linux granted the tile state, and
/// neither `BORA_AMX=0` nor `BORA_TILED=0` turned the kernels off.
pub(crate) fn amx() -> Option<Amx> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ready = *READY.get_or_init(|| {
        std::env::var("BORA_AMX").as_deref() != Ok("0")
            && crate::dispatch::tiles_enabled()
            && crate::dispatch::isa().level() >= crate::dispatch::Level::Avx512
            && crate::dispatch::has_vnni()
            && cpu_has_amx_int8()
            && request_tile_state()
    });
    ready.then_some(Amx(()))
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (bit 25).
fn cpu_has_amx_int8() -> bool {
    // `amx()` asks only after the AVX-512 checks, so the CPU has leaf 7.
    let leaf = __cpuid_count(7, 0);
    leaf.edx & (1 << 24) != 0 && leaf.edx & (1 << 25) != 0
}

/// Asks Linux to enable the AMX tile data state for this process (every thread).
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) takes two integers, touches
    // no memory of this process and returns 0 or an error number; `syscall` clobbers rcx, r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Whether `dtype` has an AMX kernel (the min types Q4_1/Q5_1 stay on the VNNI tiles).
pub(crate) fn supports(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K
    )
}

/// The tile palette: two A tiles (activations, 16 × 32 bytes: tmm0, tmm1), two B tiles
/// (weights, 8 × 64 bytes: tmm2, tmm3) and four C tiles (i32 sums, 16 × 64 bytes: tmm4–tmm7),
/// so three products run on the tile unit while the oldest one's sums are scaled.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        let (a, b, sums) = ((16, 32), (8, 64), (16, 64));
        let tiles: [(u8, u16); 8] = [a, a, b, b, sums, sums, sums, sums];
        for (i, (rows, colsb)) in tiles.into_iter().enumerate() {
            c[16 + 2 * i..18 + 2 * i].copy_from_slice(&colsb.to_le_bytes());
            c[48 + i] = rows;
        }
        Self(c)
    }
}

/// One product's i32 sums: row t = token t, lane r = weight row r.
#[repr(C, align(64))]
struct Sums([[i32; ROWS]; TOKENS]);

/// Products in flight: the ring of sum tiles.
const DEPTH: usize = 4;

/// `start(slot, a, b)`: `C(slot) = A · B`, A from tmm(slot % 2), B from tmm(2 + slot % 2).
macro_rules! start_in {
    ($a:expr, $b:expr, $ta:literal, $tb:literal, $tc:literal) => {
        asm!(
            concat!("tileloadd tmm", $ta, ", [{a} + {sa} * 1]"),
            concat!("tileloadd tmm", $tb, ", [{b} + {sb} * 1]"),
            concat!("tilezero tmm", $tc),
            concat!("tdpbssd tmm", $tc, ", tmm", $ta, ", tmm", $tb),
            a = in(reg) $a, b = in(reg) $b, sa = in(reg) 32usize, sb = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// Starts product `slot`'s `C = A · B` with A = 16 × 32 bytes at `a` (stride 32) and B = 8 × 64
/// bytes at `b` (stride 64).
///
/// The tile registers carry values from one `asm!` block to the next (this one to
/// [`finish`], `ldtilecfg` to both) without being declared: Rust and LLVM never allocate them
/// (nothing here enables the `amx-tile` target feature), so no generated code touches them in
/// between.
///
/// # Safety
/// The [`TileConfig`] is loaded on this thread; `a` and `b` are readable for 512 bytes each.
#[inline(always)]
unsafe fn start(slot: usize, a: *const i8, b: *const __m512i) {
    // SAFETY: the caller's contract: the loads read 16 rows of 32 bytes and 8 rows of 64.
    unsafe {
        match slot % DEPTH {
            0 => start_in!(a, b, "0", "2", "4"),
            1 => start_in!(a, b, "1", "3", "5"),
            2 => start_in!(a, b, "0", "2", "6"),
            _ => start_in!(a, b, "1", "3", "7"),
        }
    }
}

/// Stores product `slot`'s sums into `out`.
///
/// # Safety
/// As [`start`], after a `start(slot, ..)`.
#[inline(always)]
unsafe fn finish(slot: usize, out: &mut Sums) {
    let p = out.0.as_mut_ptr();
    // SAFETY: `out` is 16 rows of 64 writable bytes.
    unsafe {
        match slot % DEPTH {
            0 => {
                asm!("tilestored [{p} + {s} * 1], tmm4", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
            1 => {
                asm!("tilestored [{p} + {s} * 1], tmm5", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
            2 => {
                asm!("tilestored [{p} + {s} * 1], tmm6", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
            _ => {
                asm!("tilestored [{p} + {s} * 1], tmm7", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
        }
    }
}

/// Runs `body` for t = 0 to 15, unrolled with t a constant, so that arrays indexed by t
/// (the accumulators) are plain registers to the compiler rather than memory.
macro_rules! each_token {
    (|$t:ident| $body:block) => {
        each_token!(@ $t $body 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $t:ident $body:block $($n:literal)*) => {
        $({
            #[allow(non_upper_case_globals)]
            const $t: usize = $n;
            $body
        })*
    };
}

/// Runs `count` tile products, `|k| operands` giving product k's A and B, and runs
/// `|k, sums| consume` on each one's sums in order; products k + 1 to k + 3 are queued on
/// the tile unit before product k's sums are used. Meanwhile `warm` (the next rows to unpack)
/// is prefetched into L2, a share per product, so their unpacking reads from cache while this
/// work hides the memory latency.
///
/// A macro, not a function taking closures: the closures were compiled out of line, which
/// kept the accumulators they update in memory (a load and a store per update).
///
/// # Safety
/// As [`start`], for every pointer pair the operands give; used inside `unsafe`.
macro_rules! products {
    ($count:expr, |$ko:ident| $operands:expr, |$kc:ident, $sums:ident| $consume:block, $warm:expr $(,)?) => {{
        let count: usize = $count;
        let warm: &[u8] = $warm;
        let lines = warm.len().div_ceil(64);
        // Two buffers, so storing product k + 1's sums never waits on reads of product k's.
        let mut ring = [Sums([[0; ROWS]; TOKENS]), Sums([[0; ROWS]; TOKENS])];
        for $ko in 0..count.min(DEPTH - 1) {
            let (a, b) = $operands;
            start($ko, a, b);
        }
        for $kc in 0..count {
            let $sums: &mut Sums = &mut ring[$kc % 2];
            // The tile unit runs its instructions in order: this store goes before the next
            // product's loads, or it would wait for that product too.
            finish($kc, $sums);
            if $kc + DEPTH - 1 < count {
                let $ko = $kc + DEPTH - 1;
                let (a, b) = $operands;
                start($ko, a, b);
            }
            for line in $kc * lines / count..($kc + 1) * lines / count {
                // A prefetch is a hint: it never faults.
                _mm_prefetch::<_MM_HINT_T1>(warm.as_ptr().wrapping_add(64 * line) as *const i8);
            }
            let $sums: &Sums = $sums;
            $consume
        }
    }};
}

/// Sixteen weight rows in tile form: per product, B (8 vectors: dword j of the 32 signed
/// values, row r in lane r) and the per-row f32 factor its sums are scaled by.
#[derive(Default)]
struct Prepared {
    b: Vec<__m512i>,
    scale: Vec<__m512>,
    /// Q4_K/Q5_K, per block: dmin per row.
    dmin: Vec<__m512>,
    /// Q4_K/Q5_K, per block: the mins as i16 pairs (four vectors).
    pairs: Vec<__m512i>,
}

impl Prepared {
    fn clear(&mut self) {
        self.b.clear();
        self.scale.clear();
        self.dmin.clear();
        self.pairs.clear();
    }
}

thread_local! {
    static PREPARED: RefCell<Prepared> = RefCell::default();
}

/// Q6_K's chunks in the order [`q6k_chunks`] gives them (and the kernels add them).
const Q6_ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];

/// `out[k · stride + r] = row r · token k` for the `n = w.len() / row_bytes` rows in `w` (a
/// whole number of 16-row groups) and the `t` tokens packed sixteen to a panel in `panels`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    _amx: Amx,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    panels: &[Panel],
    t: usize,
    out: &mut [f32],
    stride: usize,
) {
    let n = w.len() / row_bytes;
    if t == 0 || n == 0 {
        return;
    }
    assert!(supports(dtype), "no AMX kernel for {dtype}");
    assert_eq!(n % ROWS, 0, "whole 16-row groups");
    assert!(
        n <= stride && out.len() >= (t - 1) * stride + n,
        "out holds [T, stride]"
    );
    assert!(panels.len() * TOKENS >= t, "a panel slot per token");
    assert!(
        row_bytes * ROWS < i32::MAX as usize,
        "row offsets fit the gathers' i32 indices"
    );
    let block = dtype.block_bytes();
    assert_eq!(row_bytes % block, 0, "rows hold whole blocks");
    let blocks = row_bytes / block;
    for p in panels {
        assert_eq!(
            p.blocks(),
            blocks,
            "activations and weights have the same length"
        );
        assert_eq!(p.tokens(), TOKENS, "panels of sixteen tokens");
    }
    let config = TileConfig::new();
    PREPARED.with(|cell| {
        // Nothing here yields to rayon, so the buffer is free; a fresh one if it ever is not.
        let mut own = Prepared::default();
        let mut held = cell.try_borrow_mut();
        let prep: &mut Prepared = match held.as_deref_mut() {
            Ok(p) => p,
            Err(_) => &mut own,
        };
        // SAFETY: `Amx` proves the CPU has AMX-INT8 and AVX-512 VNNI and Linux granted the tile
        // state; the configuration is a valid palette-1 layout; the bounds were checked above.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
            for g in (0..n).step_by(ROWS) {
                let tile = &w[g * row_bytes..(g + ROWS) * row_bytes];
                prep.clear();
                // While the first panel is met, the next group comes into L2.
                let warm = w
                    .get((g + ROWS) * row_bytes..(g + 2 * ROWS) * row_bytes)
                    .unwrap_or(&[]);
                let fused = unpacking(dtype);
                if !fused {
                    prepare(dtype, tile, row_bytes, blocks, prep);
                }
                for (pi, panel) in panels.iter().enumerate() {
                    let mut res = [[0f32; ROWS]; TOKENS];
                    if fused && pi == 0 {
                        // The first panel unpacks the group block by block, keeping it for
                        // the others.
                        let keep = (panels.len() > 1).then_some(&mut *prep);
                        first_panel(dtype, tile, row_bytes, blocks, panel, &mut res, warm, keep);
                    } else {
                        let warm = if pi == 0 { warm } else { &[] };
                        compute(dtype, prep, panel, blocks, &mut res, warm);
                    }
                    for (k, res_k) in res.iter().enumerate().take(t.saturating_sub(pi * TOKENS)) {
                        out[(pi * TOKENS + k) * stride + g..][..ROWS].copy_from_slice(res_k);
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    });
}

/// [`compute_unpacking`] for `dtype` (Q4_0, Q5_0 or Q8_0).
///
/// # Safety
/// As [`compute_unpacking`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn first_panel(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    blocks: usize,
    p: &Panel,
    res: &mut [[f32; ROWS]; TOKENS],
    warm: &[u8],
    keep: Option<&mut Prepared>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match dtype {
            DType::Q4_0 => {
                compute_unpacking::<Q4_0Layout>(w, row_bytes, blocks, 8, p, res, warm, keep)
            }
            DType::Q5_0 => {
                compute_unpacking::<Q5_0Layout>(w, row_bytes, blocks, 16, p, res, warm, keep)
            }
            DType::Q8_0 => {
                compute_unpacking::<Q8_0Layout>(w, row_bytes, blocks, 128, p, res, warm, keep)
            }
            _ => unreachable!("checked by `unpacking`"),
        }
    }
}

/// Whether `dtype`'s groups are unpacked by the first panel's products
/// ([`compute_unpacking`]) rather than beforehand ([`prepare`]).
fn unpacking(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q5_0 | DType::Q8_0)
}

/// Unpacks a 16-row group of a k-quant into `prep` (the 32-weight types are unpacked by the
/// first panel, [`first_panel`]).
///
/// # Safety
/// The CPU has AVX-512 VNNI; `w` is 16 rows of `blocks` blocks of `dtype`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prepare(dtype: DType, w: &[u8], row_bytes: usize, blocks: usize, prep: &mut Prepared) {
    let offsets = row_offsets(row_bytes);
    // SAFETY (every call below): block i of every row is inside `w`.
    unsafe {
        match dtype {
            DType::Q4_K => prepare_k4::<144, 16, 0>(w, row_bytes, offsets, blocks, prep),
            DType::Q5_K => prepare_k4::<176, 48, 16>(w, row_bytes, offsets, blocks, prep),
            DType::Q6_K => {
                let sub32 = _mm512_set1_epi8(32);
                for i in 0..blocks {
                    let at = i * 210;
                    let ds = q6k_scales(w, offsets, at);
                    let mut m = 0;
                    q6k_chunks(w, row_bytes, at, |c, wt| {
                        debug_assert_eq!(c, Q6_ORDER[m]);
                        m += 1;
                        // One product per 16-group: B holds the chunk's half, zeros elsewhere.
                        for half in 0..2 {
                            prep.b.extend((0..8).map(|k| {
                                if k / 4 == half {
                                    _mm512_sub_epi8(wt[k], sub32)
                                } else {
                                    _mm512_setzero_si512()
                                }
                            }));
                            prep.scale.push(ds[2 * c + half]);
                        }
                    });
                }
            }
            _ => unreachable!("a k-quant with an AMX kernel"),
        }
    }
}

/// Q4_K/Q5_K: values u as they are (0..32 fits i8), `d·sc_j` per group, mins kept per block.
///
/// # Safety
/// As [`prepare`], for this layout.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn prepare_k4<const SIZE: usize, const QS: usize, const FIFTH: usize>(
    w: &[u8],
    row_bytes: usize,
    offsets: __m512i,
    blocks: usize,
    prep: &mut Prepared,
) {
    for i in 0..blocks {
        let at = i * SIZE;
        // SAFETY: the caller's contract.
        let K4Block { ds, pairs, dmin } = unsafe { k4_scales(w, offsets, at) };
        prep.scale.extend(ds);
        prep.pairs.extend(pairs);
        prep.dmin.push(dmin);
        // SAFETY: as above.
        unsafe { k4_groups::<QS, FIFTH>(w, row_bytes, at, |_, wt| prep.b.extend(wt)) };
    }
}

/// `res[t][r] = row r · token t` for one 16-row group `w` of a 32-weight type and one panel,
/// each block unpacked just before its product, and kept in `keep` (as [`prepare`] leaves
/// it) when other panels follow. Unpacking the whole group first left the memory idle while
/// the tiles ran, and for a step of at most sixteen tokens wrote a buffer larger than L1 only
/// to read it back once; here the weights' loads, their unpacking, the tile products and the
/// scaling of the sums all overlap. The same operations as [`compute`], so the same bits.
///
/// # Safety
/// As [`compute`]; `w` is 16 rows of `row_bytes` bytes, `blocks` blocks of layout `L` each.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn compute_unpacking<L: Legacy>(
    w: &[u8],
    row_bytes: usize,
    blocks: usize,
    offset: i32,
    p: &Panel,
    res: &mut [[f32; ROWS]; TOKENS],
    warm: &[u8],
    mut keep: Option<&mut Prepared>,
) {
    const N: usize = TOKENS;
    /// Blocks unpacked ahead of the product being queued.
    const AHEAD: usize = 3;
    /// Unpacked blocks kept: enough that a slot is rewritten well after its tile load.
    const SLOTS: usize = 8;
    assert!(
        w.len() >= ROWS * row_bytes && row_bytes >= blocks * L::SIZE,
        "16 rows of whole blocks"
    );
    assert!(
        p.qs.len() >= blocks * 32 * N && p.d.len() >= blocks * N,
        "a panel of as many blocks"
    );
    let offsets = row_offsets(row_bytes);
    let off = _mm512_set1_epi8(offset as u8 as i8);
    let mut ring = [[_mm512_setzero_si512(); 8]; SLOTS];
    let mut scales = [_mm512_setzero_ps(); SLOTS];
    macro_rules! unpack {
        ($i:expr) => {{
            let i: usize = $i;
            // Used inside `unsafe`: block i < `blocks` lies inside every row (the asserts
            // above), as `legacy_block` requires.
            let (wt, sc) = legacy_block::<L>(w, row_bytes, offsets, i * L::SIZE);
            ring[i % SLOTS] = wt.map(|v| _mm512_sub_epi8(v, off));
            scales[i % SLOTS] = crate::x86_tile::f16_half::<false>(sc);
            if let Some(k) = keep.as_deref_mut() {
                k.b.extend_from_slice(&ring[i % SLOTS]);
                k.scale.push(scales[i % SLOTS]);
            }
        }};
    }
    for i in 0..blocks.min(AHEAD) {
        // SAFETY: see `unpack!`.
        unsafe { unpack!(i) };
    }
    let mut acc = [_mm512_setzero_ps(); N];
    // SAFETY: every A is 512 bytes of the panel (the assert above), every B a slot of `ring`
    // unpacked before it is queued; the caller's contract covers the tile state.
    unsafe {
        products!(
            blocks,
            |i| {
                if i + AHEAD < blocks {
                    unpack!(i + AHEAD);
                }
                (p.qs.as_ptr().add(i * 32 * N), ring[i % SLOTS].as_ptr())
            },
            |i, sums| {
                let dw = scales[i % SLOTS];
                let d = p.d.as_ptr().add(i * N);
                each_token!(|t| {
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*d.add(t)));
                    let sum = _mm512_cvtepi32_ps(_mm512_load_si512(sums.0[t].as_ptr().cast()));
                    acc[t] = _mm512_fmadd_ps(sum, scale, acc[t]);
                });
            },
            warm,
        );
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: `res[t]` is 16 writable f32.
        unsafe { _mm512_storeu_ps(res[t].as_mut_ptr(), *a) };
    }
}

/// `res[t][r] = row r · token t` for a prepared 16-row group and one panel.
///
/// # Safety
/// The CPU has AVX-512 VNNI and AMX-INT8 and the [`TileConfig`] is loaded on this thread;
/// `prep` was prepared for `dtype` from rows of `blocks` blocks, the panel filled for `dtype`
/// with sixteen tokens of as many.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // t indexes the accumulators, sums and scales alike
unsafe fn compute(
    dtype: DType,
    prep: &Prepared,
    p: &Panel,
    blocks: usize,
    res: &mut [[f32; ROWS]; TOKENS],
    warm: &[u8],
) {
    const N: usize = TOKENS;
    let a_at = |at: usize| p.qs[at..][..32 * N].as_ptr();
    let b_at = |k: usize| prep.b[8 * k..][..8].as_ptr();
    let cvt = |sums: &Sums, t: usize| {
        // SAFETY: row t of `sums` is 16 aligned i32.
        _mm512_cvtepi32_ps(unsafe { _mm512_load_si512(sums.0[t].as_ptr().cast()) })
    };
    let mut acc = [_mm512_setzero_ps(); N];
    // SAFETY (the `products` calls): every A is 512 bytes of the panel, every B 8 vectors of
    // `prep`, by the slicing above; the caller's contract covers the tile state.
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => unsafe {
            products!(
                blocks,
                |i| (a_at(i * 32 * N), b_at(i)),
                |i, sums| {
                    let dw = prep.scale[i];
                    let d: &[f32; N] = p.d[i * N..][..N].try_into().expect("a scale per token");
                    each_token!(|t| {
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(d[t]));
                        acc[t] = _mm512_fmadd_ps(cvt(sums, t), scale, acc[t]);
                    });
                },
                warm,
            )
        },
        DType::Q4_K | DType::Q5_K => unsafe {
            let mut block_acc = [_mm512_setzero_ps(); N];
            products!(
                8 * blocks,
                |k| (a_at((k / 8) * QK_K * N + 32 * N * (k % 8)), b_at(k)),
                |k, sums| {
                    let ds = prep.scale[k];
                    each_token!(|t| {
                        block_acc[t] = _mm512_fmadd_ps(cvt(sums, t), ds, block_acc[t]);
                    });
                    if k % 8 == 7 {
                        let i = k / 8;
                        let dmin = prep.dmin[i];
                        let pairs = &prep.pairs[4 * i..][..4];
                        let dy: &[f32; N] =
                            p.d[i * N..][..N].try_into().expect("a scale per token");
                        let s: &[i32] = &p.ints[i * 4 * N..][..4 * N];
                        each_token!(|t| {
                            let y = _mm512_set1_ps(dy[t]);
                            let mut mins = _mm512_setzero_si512();
                            for (pr, &mp) in pairs.iter().enumerate() {
                                mins =
                                    _mm512_dpwssd_epi32(mins, mp, _mm512_set1_epi32(s[4 * t + pr]));
                            }
                            acc[t] = _mm512_fmadd_ps(block_acc[t], y, acc[t]);
                            acc[t] = _mm512_fnmadd_ps(
                                _mm512_cvtepi32_ps(mins),
                                _mm512_mul_ps(dmin, y),
                                acc[t],
                            );
                            block_acc[t] = _mm512_setzero_ps();
                        });
                    }
                },
                warm,
            )
        },
        DType::Q6_K => unsafe {
            let mut block_acc = [_mm512_setzero_ps(); N];
            products!(
                16 * blocks,
                |k| {
                    let c = Q6_ORDER[(k % 16) / 2];
                    (a_at((k / 16) * QK_K * N + 32 * N * c), b_at(k))
                },
                |k, sums| {
                    let ds = prep.scale[k];
                    each_token!(|t| {
                        block_acc[t] = _mm512_fmadd_ps(cvt(sums, t), ds, block_acc[t]);
                    });
                    if k % 16 == 15 {
                        let i = k / 16;
                        let dy: &[f32; N] =
                            p.d[i * N..][..N].try_into().expect("a scale per token");
                        each_token!(|t| {
                            acc[t] = _mm512_fmadd_ps(block_acc[t], _mm512_set1_ps(dy[t]), acc[t]);
                            block_acc[t] = _mm512_setzero_ps();
                        });
                    }
                },
                warm,
            )
        },
        _ => unreachable!("checked by `supports`"),
    }
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: `res[t]` is 16 writable f32.
        unsafe { _mm512_storeu_ps(res[t].as_mut_ptr(), *a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act_quant::QuantizedRow;
    use crate::x86_tile::tests::random_rows;

    /// Every AMX kernel against the VNNI tiles (bit for bit: the same integer sums, the same
    /// f32 operations in the same order) and the scalar reference dots (within rounding), for
    /// two 16-row groups and 16 or 21 tokens (a padded second panel), blocks with outliers
    /// and an all-zero activation block.
    #[test]
    fn amx_tiles_match_the_vnni_tiles_and_the_reference() {
        let Some(amx) = amx() else {
            eprintln!("no AMX on this CPU: skipped");
            return;
        };
        let isa = crate::dispatch::isa();
        for dtype in DType::ALL.into_iter().filter(|&d| supports(d)) {
            let vnni = crate::x86_tile::tile_kernel::<TOKENS>(isa, dtype).expect("VNNI tiles");
            for blocks in [1usize, 2, 3, 9] {
                let w: Vec<u8> =
                    [random_rows(dtype, blocks, 1), random_rows(dtype, blocks, 2)].concat();
                let row_bytes = w.len() / (2 * ROWS);
                let cols = blocks * dtype.block_elems();
                for t in [16usize, 21] {
                    let xs: Vec<QuantizedRow> = (0..t)
                        .map(|k| {
                            let mut x: Vec<f32> = (0..cols)
                                .map(|i| {
                                    (((i as u32 * 7919 + k as u32 * 31) % 2001) as f32 / 1000.0
                                        - 1.0)
                                        * (1.0 + (i % 13) as f32)
                                })
                                .collect();
                            if k == 1 {
                                x[..dtype.block_elems()].iter_mut().for_each(|v| *v = 0.0);
                            }
                            QuantizedRow::for_weight(dtype, &x).unwrap()
                        })
                        .collect();
                    let panels: Vec<Panel> = xs
                        .chunks(TOKENS)
                        .map(|c| {
                            let refs: Vec<&QuantizedRow> =
                                (0..TOKENS).map(|k| &c[k.min(c.len() - 1)]).collect();
                            let mut p = Panel::default();
                            p.fill(dtype, &refs);
                            p
                        })
                        .collect();
                    let n = 2 * ROWS;
                    let mut out = vec![f32::NAN; t * n];
                    rows(amx, dtype, &w, row_bytes, &panels, t, &mut out, n);
                    for (g, tile) in w.chunks_exact(ROWS * row_bytes).enumerate() {
                        for (pi, panel) in panels.iter().enumerate() {
                            let mut want = [[0f32; ROWS]; TOKENS];
                            // SAFETY: `tile_kernel` checked the CPU; rows and panel match `dtype`.
                            unsafe { vnni(tile, row_bytes, panel, &mut want) };
                            for (k, want_k) in want.iter().enumerate().take(t - pi * TOKENS) {
                                let got = &out[(pi * TOKENS + k) * n + g * ROWS..][..ROWS];
                                assert_eq!(
                                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    want_k.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    "{dtype} blocks={blocks} token {} group {g}",
                                    pi * TOKENS + k
                                );
                            }
                        }
                    }
                    for (k, x) in xs.iter().enumerate() {
                        for (r, row) in w.chunks_exact(row_bytes).enumerate() {
                            let want = x.dot(dtype, row);
                            let got = out[k * n + r];
                            let mut wf = vec![0f32; cols];
                            crate::dot::dequantize_row(dtype, row, &mut wf);
                            let magnitude: f32 = wf.iter().map(|v| v.abs() * 13.0).sum();
                            let tol = 1e-5 * want.abs().max(1.0) + 1e-6 * magnitude;
                            assert!(
                                (got - want).abs() <= tol,
                                "{dtype} blocks={blocks} token {k} row {r}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::x86_tile::tests::{random_rows, speed_panel};

    /// Q4_0 groups streamed from memory (72 MB), one panel each as in a 16-token step, on one
    /// thread, each block unpacked just before its product ([`compute_unpacking`]), the next
    /// group prefetched or not:
    /// `cargo test --release -p bora-kernels amx_stream -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn amx_stream() {
        let Some(_) = amx() else { return };
        let dtype = DType::Q4_0;
        let cols = 4096;
        let blocks = cols / dtype.block_elems();
        let one = random_rows(dtype, blocks, 3);
        let row_bytes = one.len() / ROWS;
        let groups = 4000;
        let w: Vec<u8> = (0..groups).flat_map(|_| one.iter().copied()).collect();
        let panel = speed_panel(dtype, cols, TOKENS);
        let config = TileConfig::new();
        let mut res = [[0f32; ROWS]; TOKENS];
        let gb = one.len();
        for round in 0..2 {
            for warm in [false, true] {
                // SAFETY: `amx()` checked the CPU and OS; the buffers match `dtype`.
                let t = unsafe {
                    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
                    let t0 = std::time::Instant::now();
                    for g in 0..groups {
                        let next = match w.get((g + 1) * gb..(g + 2) * gb) {
                            Some(next) if warm => next,
                            _ => &[],
                        };
                        let tile = &w[g * gb..][..gb];
                        first_panel(dtype, tile, row_bytes, blocks, &panel, &mut res, next, None);
                        std::hint::black_box(&res);
                    }
                    let t = t0.elapsed().as_secs_f64() / groups as f64;
                    asm!("tilerelease", options(nostack, nomem));
                    t
                };
                println!(
                    "round {round}, next group prefetched {warm}: {:.2} µs per group, {:.1} GB/s",
                    t * 1e6,
                    gb as f64 / t / 1e9
                );
            }
        }
    }

    /// One 16-row group against one panel, in cache, on one thread (4096 columns, or
    /// `AMX_SPEED_COLS`): `cargo test --release -p bora-kernels amx_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn amx_speed() {
        let Some(_) = amx() else { return };
        for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
            let cols: usize = std::env::var("AMX_SPEED_COLS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4096);
            let blocks = cols / dtype.block_elems();
            let w = random_rows(dtype, blocks, 3);
            let row_bytes = w.len() / ROWS;
            let panel = speed_panel(dtype, cols, TOKENS);
            let mut prep = Prepared::default();
            let config = TileConfig::new();
            let mut res = [[0f32; ROWS]; TOKENS];
            let iters = 20_000;
            // SAFETY: `amx()` checked the CPU and OS; the buffers match `dtype`.
            let (tp, tc) = unsafe {
                asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
                // The group as `rows` leaves it for the panels after the first: unpacked by
                // the first panel's products (timed: its compute share is then taken off), or
                // beforehand for the k-quants.
                let t0 = std::time::Instant::now();
                for _ in 0..iters / 10 {
                    prep.clear();
                    if unpacking(dtype) {
                        first_panel(
                            dtype,
                            &w,
                            row_bytes,
                            blocks,
                            &panel,
                            &mut res,
                            &[],
                            Some(&mut prep),
                        );
                    } else {
                        prepare(dtype, &w, row_bytes, blocks, &mut prep);
                    }
                }
                let tp = t0.elapsed().as_secs_f64() / (iters / 10) as f64;
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    compute(dtype, &prep, &panel, blocks, &mut res, &[]);
                    std::hint::black_box(&res);
                }
                let tc = t0.elapsed().as_secs_f64() / iters as f64;
                asm!("tilerelease", options(nostack, nomem));
                (if unpacking(dtype) { tp - tc } else { tp }, tc)
            };
            let macs = (ROWS * TOKENS * cols) as f64;
            println!(
                "{dtype}: compute {:.1} GMAC/s ({:.1} ns per 32-column product), prepare {:.2} µs per group ({:.1} compute-equivalents)",
                macs / tc / 1e9,
                tc / (cols / 32) as f64 * 1e9,
                tp * 1e6,
                tp / tc
            );
        }
    }
}
