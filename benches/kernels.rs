//! Rust-native timings of the kernels on the shapes of `python -m sce_rs.bench`, through the
//! crate-root slice API (no Python, no array conversion): BENCHMARKS.md puts them beside the
//! Python-call figures, so the difference is the binding's cost.
//!
//! `cargo bench --bench kernels` (all cases), or a filter: `cargo bench --bench kernels -- 65536`.
//! Threads: `SCE_RS_BENCH_THREADS` (default 1, as in the Python tables' one-thread section).
//! Inputs: logits uniform in [-3, 3] (the Python benchmark draws normals of spread 3; the
//! kernels' time does not depend on the values), targets uniform over the classes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sce_rs::linear::{
    linear_cross_entropy, LinUpstream, LinearCe, LinearGrads, Operand, RowsOut, DEFAULT_MAX_MEMORY,
};
use sce_rs::{CeOptions, Float, Reduction};
use std::hint::black_box;
use std::time::Duration;

/// A fixed xorshift stream: the same inputs on every run, with no RNG dependency.
struct Stream(u64);

impl Stream {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn logits<T: Float>(&mut self, len: usize, spread: f64) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f64(spread * (2.0 * self.unit() - 1.0)))
            .collect()
    }
    fn targets(&mut self, n: usize, k: usize) -> Vec<i64> {
        (0..n).map(|_| (self.unit() * k as f64) as i64).collect()
    }
}

/// Softmax, cross-entropy and cross-entropy with its gradient, each writing into one reused
/// buffer, as `softmax(x, out=buf)`, `cross_entropy(x, t)` and
/// `cross_entropy_and_grad(x, t, out=buf)` do from Python (the slice API cannot alias `x`).
fn rows<T: Float>(c: &mut Criterion, dtype: &str, n: usize, k: usize) {
    let mut s = Stream(0x9E37_79B9_7F4A_7C15);
    let x: Vec<T> = s.logits(n * k, 3.0);
    let t = s.targets(n, k);
    let opts = CeOptions::<T>::plain(k);
    let mut buf = x.clone();
    let mut g = c.benchmark_group(format!("{dtype} {n}x{k}"));
    g.throughput(Throughput::Elements((n * k) as u64));
    if n * k >= 1 << 20 {
        g.sample_size(10).measurement_time(Duration::from_secs(3));
    }
    g.bench_function("softmax_out", |b| {
        b.iter(|| sce_rs::softmax(black_box(&x), k, &mut buf).unwrap())
    });
    g.bench_function("log_softmax_out", |b| {
        b.iter(|| sce_rs::log_softmax(black_box(&x), k, &mut buf).unwrap())
    });
    let mut lse = vec![T::ZERO; n];
    g.bench_function("logsumexp", |b| {
        b.iter(|| sce_rs::logsumexp(black_box(&x), k, &mut lse).unwrap())
    });
    g.bench_function("cross_entropy", |b| {
        b.iter(|| sce_rs::cross_entropy(black_box(&x), k, &t, &opts, Reduction::Mean).unwrap())
    });
    g.bench_function("cross_entropy_and_grad", |b| {
        b.iter(|| {
            sce_rs::cross_entropy_and_grad(&x, k, &t, &opts, Reduction::Mean, &mut buf, None)
                .unwrap()
        })
    });
    g.finish();
}

/// The fused linear cross-entropy, loss only and with both gradients.
fn linear(c: &mut Criterion, n: usize, d: usize, v: usize) {
    let mut s = Stream(0x2545_F491_4F6C_DD1D);
    let hidden: Vec<f32> = s.logits(n * d, 1.0);
    let weight: Vec<f32> = s.logits(v * d, 1.0 / (d as f64).sqrt());
    let targets = s.targets(n, v);
    let opts = CeOptions::<f32>::plain(v);
    let a = LinearCe {
        hidden: Operand::Slice(&hidden),
        weight: Operand::Slice(&weight),
        bias: None,
        targets: &targets,
        ignore_index: -100,
        n,
        d,
        v,
        opts: &opts,
        max_memory: DEFAULT_MAX_MEMORY,
    };
    let (mut dh, mut dw) = (vec![0f32; n * d], vec![0f32; v * d]);
    let mut g = c.benchmark_group(format!("float32 linear N={n} D={d} V={v}"));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let up = LinUpstream::Scalar(1.0);
    g.bench_function("linear_cross_entropy", |b| {
        b.iter(|| linear_cross_entropy(&a, Reduction::Mean, up, None, None).unwrap())
    });
    g.bench_function("linear_cross_entropy_and_grad", |b| {
        b.iter(|| {
            let grads = LinearGrads {
                d_hidden: &mut dh,
                d_weight: RowsOut::Slice(&mut dw),
                d_bias: None,
            };
            linear_cross_entropy(&a, Reduction::Mean, up, None, Some(grads)).unwrap()
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let threads = std::env::var("SCE_RS_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    sce_rs::set_num_threads(threads).expect("SCE_RS_BENCH_THREADS must be at least 1");
    rows::<f32>(c, "float32", 512, 128_256);
    rows::<f32>(c, "float32", 8192, 1000);
    rows::<f32>(c, "float32", 65536, 10);
    rows::<f64>(c, "float64", 8192, 1000);
    rows::<f32>(c, "float32", 1, 1_000_000);
    rows::<f32>(c, "float32", 8, 10);
    linear(c, 512, 256, 16000);
}

criterion_group!(benches, all);
criterion_main!(benches);
