//! The process allocator: mimalloc, measured against glibc's malloc in `bench/run`
//! (BENCHMARKS.md, "Allocator"): more bulk throughput and connections per second for the same
//! CPU per request. Its arenas are committed on demand (`.cargo/config.toml`), which keeps an
//! idle proxy's resident memory at glibc's level.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
