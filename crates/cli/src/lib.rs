//! The `bora` command line: one module per subcommand, over the engine crates.
//! Re-exports the library crates so `bora` is also the one crate to depend on.

pub mod args;
pub mod commands;
pub mod hub;

pub use bora_engine as engine;
pub use bora_eval as eval;
pub use bora_kernels as kernels;
pub use bora_model as model;
pub use bora_server as server;
