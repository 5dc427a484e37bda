//! Decode-shaped matrix-vector speed of one weight type, on an in-memory matrix:
//! `cargo run --release -p bora-kernels --example matvec_speed -- Q4_0 [rows] [cols] [iters] [tokens]`.
use bora_kernels::{matmul_with, Activations, DType, MatRef};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dtype = DType::ALL
        .into_iter()
        .find(|d| d.to_string() == args.get(1).map_or("Q4_0", |s| s.as_str()))
        .expect("dtype name");
    let rows: usize = args.get(2).map_or(14336 * 4, |s| s.parse().unwrap());
    let cols: usize = args.get(3).map_or(4096, |s| s.parse().unwrap());
    let iters: usize = args.get(4).map_or(10, |s| s.parse().unwrap());
    let tokens: usize = args.get(5).map_or(1, |s| s.parse().unwrap());
    let rb = dtype.row_bytes(cols).unwrap();
    let mut map = memmap2::MmapMut::map_anon(rows * rb).unwrap();
    if std::env::var("HUGE").is_ok() {
        map.advise(memmap2::Advice::HugePage).unwrap();
    }
    for (i, b) in map.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761) as u8 >> 1;
    }
    let data: &mut [u8] = &mut map;
    // Small f16 scales in every scale field (random bytes there could be NaN or infinite);
    // `SCALE=0x0300` (or any half's bits) sets another, e.g. a subnormal one, which must not
    // be slower.
    let scale = std::env::var("SCALE").map_or(0x1c00, |s| {
        u16::from_str_radix(s.trim_start_matches("0x"), 16).expect("SCALE: a half's bits in hex")
    });
    for blk in data.chunks_exact_mut(dtype.block_bytes()) {
        for &f in dtype.scale_fields() {
            blk[f..f + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    if std::env::var("SUM").is_ok() {
        let words: &[u64] = bytemuck::cast_slice(&data[..data.len() / 8 * 8]);
        let t0 = Instant::now();
        let mut acc = [0u64; 8];
        for _ in 0..iters {
            for c in words.chunks_exact(8) {
                for l in 0..8 {
                    acc[l] = acc[l].wrapping_add(c[l]);
                }
            }
        }
        let s = t0.elapsed().as_secs_f64() / iters as f64;
        println!(
            "plain sum: {:.1} GB/s ({})",
            data.len() as f64 / s / 1e9,
            acc.iter().sum::<u64>() & 1
        );
    }
    let w = MatRef::new(dtype, rows, cols, data).unwrap();
    let x: Vec<f32> = (0..cols * tokens).map(|i| (i % 7) as f32 - 3.0).collect();
    let mut out = vec![0f32; rows * tokens];
    matmul_with(&w, &x, &mut out, Activations::Q8);
    let t0 = Instant::now();
    for _ in 0..iters {
        matmul_with(&w, &x, &mut out, Activations::Q8);
    }
    let s = t0.elapsed().as_secs_f64() / iters as f64;
    let blocks = (rows * cols / dtype.block_elems()) as f64;
    println!(
        "{dtype} {rows}x{cols} T={tokens}: {:.2} ms, {:.1} GB/s, {:.2} ns/block-row, {:.1} GMAC/s, threads {}",
        s * 1e3,
        data.len() as f64 / s / 1e9,
        s * 1e9 / blocks / tokens as f64 * rayon::current_num_threads() as f64,
        (rows * cols * tokens) as f64 / s / 1e9,
        rayon::current_num_threads()
    );
}
