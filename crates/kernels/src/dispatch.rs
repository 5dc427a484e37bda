//! Run-time choice of instruction set. The same plain-Rust kernel body is compiled once per
//! target (AVX-512, AVX2+FMA, portable) and the best one the CPU has is called; nothing depends
//! on `target-cpu=native` at build time.

use std::sync::OnceLock;

/// An instruction set the CPU was found to support. Only this module makes one (its field is
/// private), so holding an `Isa` proves the detection ran: what the `unsafe` calls rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(Level);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub const PORTABLE: Isa = Isa(Level::Portable);

    pub(crate) fn level(self) -> Level {
        self.0
    }

    /// Whether kernels beyond the portable ones run on this CPU.
    pub fn is_simd(self) -> bool {
        self.0 > Level::Portable
    }

    /// `level` if the CPU has it, else the best it has below it (tests compare levels).
    #[cfg(test)]
    pub(crate) fn at_most(level: Level) -> Isa {
        Isa(level.min(isa().0))
    }
}

/// Whether the CPU has AVX-512 VNNI with 256-bit (VL) forms, for the `vpdpbusd` kernels.
pub(crate) fn has_vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the register-tiled matrix × matrix kernels are used for batches (`BORA_TILED=0`
/// turns them off, so prefill runs on the row kernels: for comparisons).
pub(crate) fn tiles_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("BORA_TILED").as_deref() != Ok("0"))
}

/// The instruction set kernels use on this CPU (`BORA_ISA=portable|avx2` lowers it, for tests
/// and comparisons).
pub fn isa() -> Isa {
    Isa(level())
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = detect();
        match std::env::var("BORA_ISA").as_deref() {
            Ok("portable") => Level::Portable,
            Ok("avx2") => best.min(Level::Avx2),
            _ => best,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Level::Avx512
    } else if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Level::Avx2
    } else {
        Level::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}

/// Defines `pub fn $name(isa, args) -> ret` running `$body` compiled for that instruction set.
/// The body must be plain safe Rust; the `unsafe` is only the call into a `#[target_feature]`
/// copy, made after the CPU reported the feature.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name(isa: $crate::dispatch::Isa, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) { body($($arg),*) }
                match isa.level() {
                    // SAFETY: an `Isa` is only made by this module, at or below the level the CPU
                    // reported: Avx512 means avx512f/bw/vl, avx2, fma and f16c were all detected.
                    $crate::dispatch::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above; Avx2 means avx2, fma and f16c were detected.
                    $crate::dispatch::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::dispatch::Level::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;
