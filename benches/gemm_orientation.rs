//! Why the fused linear cross-entropy holds its tiles of logits class by class
//! (`src/linear.rs`, `logits_t_into`): the float32 GFLOPS of one gemm call on the forward
//! product's shape (a block of rows x a block of classes, inner dimension the hidden size), for
//! each of the eight layouts of the output and the two operands, on one thread.
//!
//! `cargo bench --bench gemm_orientation [M N K]` (default 512 4096 1024). Not a criterion
//! bench: it prints one line per layout, the best of a few calls.

use std::time::Instant;

fn gflops(m: usize, n: usize, k: usize, dst_col: bool, lhs_col: bool, rhs_col: bool) -> f64 {
    let fill = |len: usize, mul: usize| -> Vec<f32> {
        (0..len).map(|i| ((i * mul) % 1000) as f32 * 1e-3).collect()
    };
    let (lhs, rhs, mut dst) = (fill(m * k, 7919), fill(k * n, 104729), vec![0f32; m * n]);
    // (column stride, row stride) of a column-major or row-major matrix of `rows` x `cols`
    let strides = |col: bool, rows: usize, cols: usize| {
        if col {
            (rows as isize, 1)
        } else {
            (1, cols as isize)
        }
    };
    let (dcs, drs) = strides(dst_col, m, n);
    let (lcs, lrs) = strides(lhs_col, m, k);
    let (rcs, rrs) = strides(rhs_col, k, n);
    let mut best = f64::MAX;
    for _ in 0..4 {
        let start = Instant::now();
        // SAFETY: each matrix's strides describe a `rows x cols` layout of exactly its
        // vector's length, and `dst` is borrowed mutably for the call alone.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dcs,
                drs,
                false,
                lhs.as_ptr(),
                lcs,
                lrs,
                rhs.as_ptr(),
                rcs,
                rrs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (m, n, k) = match args[..] {
        [m, n, k] => (m, n, k),
        _ => (512, 4096, 1024),
    };
    let name = |col: bool| if col { "col-major" } else { "row-major" };
    println!("float32 gemm, one thread, M x N x K = {m} x {n} x {k}");
    for dst in [false, true] {
        for lhs in [false, true] {
            for rhs in [false, true] {
                println!(
                    "out {:9}  lhs {:9}  rhs {:9}  {:6.1} GFLOPS",
                    name(dst),
                    name(lhs),
                    name(rhs),
                    gflops(m, n, k, dst, lhs, rhs)
                );
            }
        }
    }
}
