/* The int8 multiply ceiling of one x86 core with AVX2, for reading bora's tile rates
 * (BENCHMARKS.md): vpmaddubsw alone, and in the mix the AVX2 tiles run (a broadcast load of
 * four activation bytes, vpmaddubsw, vpaddw), on eight independent chains.
 *
 *     gcc -O2 bench/avx2_int8_peak.c -o /tmp/avx2_int8_peak && /tmp/avx2_int8_peak
 *
 * Prints billions of vpmaddubsw per second (each is 32 multiply-adds), three runs. */
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int buf[64] __attribute__((aligned(64)));

#define BCAST(o, k) "vpbroadcastd " #o "(%1), %%ymm9\n vpmaddubsw %%ymm9, %%ymm15, %%ymm9\n vpaddw %%ymm9, %%ymm" #k ", %%ymm" #k "\n"
#define REG(o, k) "vpmaddubsw %%ymm14, %%ymm15, %%ymm9\n vpaddw %%ymm9, %%ymm" #k ", %%ymm" #k "\n"
#define MUL(o, k) "vpmaddubsw %%ymm14, %%ymm15, %%ymm" #k "\n"
#define LOOP(S)                                                                          \
    __asm__ volatile("1:\n" S(0, 0) S(4, 1) S(8, 2) S(12, 3) S(16, 4) S(20, 5) S(24, 6)   \
                         S(28, 7) "dec %0\n jnz 1b\n"                                     \
                     : "+r"(n)                                                            \
                     : "r"(buf)                                                           \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",    \
                       "xmm9", "memory")

int main(void) {
    const long N = 100000000;
    for (int rep = 0; rep < 3; rep++) {
        long n;
        double t;
        n = N; t = now(); LOOP(BCAST);
        printf("broadcast+vpmaddubsw+vpaddw %.2f  ", 8.0 * N / (now() - t) / 1e9);
        n = N; t = now(); LOOP(REG);
        printf("vpmaddubsw+vpaddw %.2f  ", 8.0 * N / (now() - t) / 1e9);
        n = N; t = now(); LOOP(MUL);
        printf("vpmaddubsw alone %.2f G/s\n", 8.0 * N / (now() - t) / 1e9);
    }
    return 0;
}
