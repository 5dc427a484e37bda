//! One thread's quantization speed for each k-quant type, on weight-like rows (a sum of
//! uniforms, a few spikes): `cargo run --release -p bora-kernels --example quantize_speed --
//! [super-blocks] [rounds]`. Prints ns a super-block (median of the rounds) and a digest of
//! the bytes, so two builds can be checked to write the same ones.
use bora_kernels::quantize::{quantize_row, QUANTIZABLE};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let blocks: usize = args.get(1).map_or(4096, |s| s.parse().unwrap());
    let rounds: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let n = blocks * 256;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let v = (0..4).map(|_| uniform()).sum::<f32>() * 0.02;
            if i % 997 == 0 {
                v * 12.0
            } else {
                v
            }
        })
        .collect();
    // The k-quants (256-weight super-blocks) among the types `quantize_row` writes.
    for dtype in QUANTIZABLE.into_iter().filter(|d| d.block_elems() == 256) {
        let mut out = vec![0u8; blocks * dtype.block_bytes()];
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t0 = Instant::now();
            quantize_row(dtype, &x, &mut out).unwrap();
            times.push(t0.elapsed().as_secs_f64() * 1e9 / blocks as f64);
        }
        times.sort_by(f64::total_cmp);
        let digest = out.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        println!(
            "{dtype}: {:.0} ns a super-block (median of {rounds}; {:.0}–{:.0}), digest {digest:016x}",
            times[rounds / 2],
            times[0],
            times[rounds - 1]
        );
    }
}
