//! sce_rs's Rust API against the Rust libraries a user would reach for, on the shapes of
//! benches/kernels.rs (and so of `python -m sce_rs.bench`): candle-nn on the CPU
//! (`ops::softmax_last_dim`, `ops::log_softmax`, `loss::cross_entropy`, and the latter's
//! gradient through candle's autograd).
//!
//! Like is compared with like: candle allocates every result, so sce_rs's rows here allocate
//! theirs too (a fresh `Vec` per call, as the Python API without `out=` does); the one
//! `softmax_out` row (into a reused buffer) has no candle counterpart and is a yardstick only.
//! Every call reads the same inputs: neither library writes over them.
//!
//! With the `burn` feature, burn 0.22 on its pure-Rust CPU backend (`Device::flex()`; burn 0.22
//! deprecated its ndarray backend for this one): `activation::softmax`, `activation::log_softmax`,
//! and for the loss over class indices what burn-nn's `CrossEntropyLoss` computes,
//! `log_softmax` then `gather` then `mean` (burn-tensor's own `loss` takes probabilities).
//!
//! `make bench-peers` (this crate's `cargo bench`, then benchmarks/rust_peers_table.py for the
//! table), or a filter: `cargo bench -- 8192x1000`. Threads: `SCE_RS_BENCH_THREADS` (default 1)
//! for sce_rs's pool and candle's (Rayon's global pool, through `RAYON_NUM_THREADS`).

use candle_core::{DType, Device, Tensor, Var, WithDType, D};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sce_rs::{CeOptions, Float, Reduction};
use std::hint::black_box;
use std::time::Duration;

/// The xorshift stream of benches/kernels.rs: the same inputs on every run.
struct Stream(u64);

impl Stream {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn logits<T: Float>(&mut self, len: usize) -> Vec<T> {
        (0..len)
            .map(|_| <T as Float>::from_f64(3.0 * (2.0 * self.unit() - 1.0)))
            .collect()
    }
    fn targets(&mut self, n: usize, k: usize) -> Vec<i64> {
        (0..n).map(|_| (self.unit() * k as f64) as i64).collect()
    }
}

/// The element types every library here takes (f32, f64).
#[cfg(not(feature = "burn"))]
trait Elem: Float + WithDType {}
#[cfg(not(feature = "burn"))]
impl<T: Float + WithDType> Elem for T {}
#[cfg(feature = "burn")]
trait Elem: Float + WithDType + burn_tensor::Element {}
#[cfg(feature = "burn")]
impl<T: Float + WithDType + burn_tensor::Element> Elem for T {}

fn rows<T: Elem>(c: &mut Criterion, dtype: &str, n: usize, k: usize) {
    let mut s = Stream(0x9E37_79B9_7F4A_7C15);
    let x: Vec<T> = s.logits(n * k);
    let t = s.targets(n, k);
    let opts = CeOptions::<T>::plain(k);
    let zero = <T as Float>::from_f64(0.0);

    let cpu = Device::Cpu;
    let xt = Tensor::from_slice(&x, (n, k), &cpu).unwrap();
    let t32: Vec<u32> = t.iter().map(|&i| i as u32).collect();
    let tt = Tensor::from_slice(&t32, n, &cpu).unwrap();
    let leaf = Var::from_tensor(&xt).unwrap();
    assert_eq!(
        xt.dtype(),
        if dtype == "float64" {
            DType::F64
        } else {
            DType::F32
        }
    );

    let mut g = c.benchmark_group(format!("{dtype} {n}x{k}"));
    g.throughput(Throughput::Elements((n * k) as u64));
    // Thirteen rows a group: shorter than criterion's defaults, so the whole run takes minutes.
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    if n * k >= 1 << 20 {
        g.sample_size(10).measurement_time(Duration::from_secs(3));
    }
    let id = |op: &str, peer: &str| BenchmarkId::new(op, peer);

    g.bench_function(id("softmax", "sce_rs"), |b| {
        b.iter(|| {
            let mut out = vec![zero; n * k];
            sce_rs::softmax(black_box(&x), k, &mut out).unwrap();
            out
        })
    });
    g.bench_function(id("softmax", "candle"), |b| {
        b.iter(|| candle_nn::ops::softmax_last_dim(black_box(&xt)).unwrap())
    });
    let mut buf = vec![zero; n * k];
    g.bench_function(id("softmax_out", "sce_rs"), |b| {
        b.iter(|| sce_rs::softmax(black_box(&x), k, &mut buf).unwrap())
    });
    g.bench_function(id("log_softmax", "sce_rs"), |b| {
        b.iter(|| {
            let mut out = vec![zero; n * k];
            sce_rs::log_softmax(black_box(&x), k, &mut out).unwrap();
            out
        })
    });
    g.bench_function(id("log_softmax", "candle"), |b| {
        b.iter(|| candle_nn::ops::log_softmax(black_box(&xt), D::Minus1).unwrap())
    });
    g.bench_function(id("cross_entropy", "sce_rs"), |b| {
        b.iter(|| sce_rs::cross_entropy(black_box(&x), k, &t, &opts, Reduction::Mean).unwrap())
    });
    g.bench_function(id("cross_entropy", "candle"), |b| {
        b.iter(|| {
            candle_nn::loss::cross_entropy(black_box(&xt), &tt)
                .unwrap()
                .to_scalar::<T>()
                .unwrap()
        })
    });
    g.bench_function(id("cross_entropy_and_grad", "sce_rs"), |b| {
        b.iter(|| {
            let mut grad = vec![zero; n * k];
            let loss = sce_rs::cross_entropy_and_grad(
                black_box(&x),
                k,
                &t,
                &opts,
                Reduction::Mean,
                &mut grad,
                None,
            )
            .unwrap();
            (loss, grad)
        })
    });
    g.bench_function(id("cross_entropy_and_grad", "candle"), |b| {
        b.iter(|| {
            let loss = candle_nn::loss::cross_entropy(leaf.as_tensor(), &tt).unwrap();
            let grads = loss.backward().unwrap();
            let grad = grads.get(leaf.as_tensor()).unwrap().clone();
            (loss.to_scalar::<T>().unwrap(), grad)
        })
    });
    #[cfg(feature = "burn")]
    burn::rows(&mut g, &x, &t, n, k);
    g.finish();
}

#[cfg(feature = "burn")]
mod burn {
    use burn_tensor::{activation, Device, Int, Tensor, TensorData};
    use criterion::measurement::WallTime;
    use criterion::{BenchmarkGroup, BenchmarkId};
    use std::hint::black_box;

    /// burn's rows of one group; every op ends with a device sync, so that nothing is left
    /// pending when the clock stops.
    pub fn rows<T: sce_rs::Float + burn_tensor::Element>(
        g: &mut BenchmarkGroup<'_, WallTime>,
        x: &[T],
        t: &[i64],
        n: usize,
        k: usize,
    ) {
        let device = Device::flex();
        let xt = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, k]), &device);
        let tt = Tensor::<2, Int>::from_data(TensorData::new(t.to_vec(), [n, 1]), &device);
        let sync = || device.sync().unwrap();
        g.bench_function(BenchmarkId::new("softmax", "burn"), |b| {
            b.iter(|| {
                let y = activation::softmax(black_box(xt.clone()), 1);
                sync();
                y
            })
        });
        g.bench_function(BenchmarkId::new("log_softmax", "burn"), |b| {
            b.iter(|| {
                let y = activation::log_softmax(black_box(xt.clone()), 1);
                sync();
                y
            })
        });
        g.bench_function(BenchmarkId::new("cross_entropy", "burn"), |b| {
            b.iter(|| {
                let lp = activation::log_softmax(black_box(xt.clone()), 1);
                let loss = lp.gather(1, tt.clone()).mean().neg();
                loss.into_scalar::<f64>()
            })
        });
    }
}

fn all(c: &mut Criterion) {
    let threads: usize = std::env::var("SCE_RS_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Before anything touches Rayon's global pool, which candle's CPU kernels use.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    sce_rs::set_num_threads(threads).expect("SCE_RS_BENCH_THREADS must be at least 1");
    rows::<f32>(c, "float32", 512, 128_256);
    rows::<f32>(c, "float32", 8192, 1000);
    rows::<f32>(c, "float32", 65536, 10);
    rows::<f64>(c, "float64", 8192, 1000);
    rows::<f32>(c, "float32", 1, 1_000_000);
    rows::<f32>(c, "float32", 8, 10);
}

criterion_group!(benches, all);
criterion_main!(benches);
