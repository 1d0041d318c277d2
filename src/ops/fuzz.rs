//! Property fuzzing of the core entry points over arbitrary shapes, class axes and
//! strides (negative ones included), targets in and out of range, NaN and infinities:
//! never a panic, an out-of-range class index is the only error and leaves the gradient
//! untouched, and finite inputs match a textbook f64 computation. `PROPTEST_CASES` sets
//! the number of cases (proptest's default 256).
use super::*;
use crate::dtype::DType;
use crate::isa::Level;
use crate::strided::c_strides;
use proptest::prelude::*;

const IGNORE: i64 = -1;
const SENTINEL: f64 = 7.0;

/// A view of `data` (C order) with rows along `axis`; `flip` reverses that axis through a
/// negative stride, so logical index `i` reads storage index `len - 1 - i`.
fn view<'a>(
    data: &'a [f64],
    shape: &[usize],
    axis: Option<usize>,
    flip: Option<usize>,
) -> View<'a> {
    let mut strides = c_strides(shape, 8);
    let mut ptr = data.as_ptr() as *const u8;
    if let Some(d) = flip.filter(|&d| shape[d] > 1) {
        // SAFETY: the last element along `d` is inside `data`.
        ptr = unsafe { ptr.offset(strides[d] * (shape[d] as isize - 1)) };
        strides[d] = -strides[d];
    }
    // SAFETY: `data` holds the whole C-ordered array, outlives the view and is not written.
    unsafe { View::from_raw(ptr, DType::F64, shape, &strides, axis) }
}

/// An output view of `data` (C order) with rows along `axis`.
fn view_mut<'a>(data: &'a mut [f64], shape: &[usize], axis: Option<usize>) -> ViewMut<'a> {
    // SAFETY: `data` holds the whole C-ordered array and is borrowed for the view's life.
    unsafe {
        ViewMut::from_raw(
            data.as_mut_ptr() as *mut u8,
            DType::F64,
            shape,
            &c_strides(shape, 8),
            axis,
        )
    }
    .expect("C-ordered arrays have distinct elements")
}

/// The logical rows along `axis` (outer indices in C order), read as `view` would.
fn rows(data: &[f64], shape: &[usize], axis: usize, flip: Option<usize>) -> Vec<Vec<f64>> {
    let strides = c_strides(shape, 1);
    let outer: Vec<usize> = (0..shape.len()).filter(|&d| d != axis).collect();
    let n: usize = outer.iter().map(|&d| shape[d]).product();
    (0..n)
        .map(|r| {
            let mut idx = vec![0; shape.len()];
            let mut rest = r;
            for &d in outer.iter().rev() {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            (0..shape[axis])
                .map(|j| {
                    idx[axis] = j;
                    let off: isize = (0..shape.len())
                        .map(|d| {
                            let i = if flip == Some(d) {
                                shape[d] - 1 - idx[d]
                            } else {
                                idx[d]
                            };
                            i as isize * strides[d]
                        })
                        .sum();
                    data[off as usize]
                })
                .collect()
        })
        .collect()
}

/// Textbook label-smoothed cross-entropy of one row and its gradient (unscaled).
fn textbook(row: &[f64], c: usize, ls: f64) -> (f64, Vec<f64>) {
    let k = row.len() as f64;
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    let smooth: f64 = row.iter().map(|v| lse - v).sum::<f64>() / k;
    let loss = (1.0 - ls) * (lse - row[c]) + ls * smooth;
    let grad = (row.iter().enumerate())
        .map(|(j, v)| (v - lse).exp() - ls / k - if j == c { 1.0 - ls } else { 0.0 })
        .collect();
    (loss, grad)
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * (1.0 + want.abs())
}

proptest! {
    #[test]
    fn cross_entropy_and_softmax_on_any_layout(
        shape in prop::collection::vec(0usize..5, 1..4),
        axis_seed in any::<usize>(),
        flip_seed in any::<usize>(),
        values in prop::collection::vec(-60.0f64..60.0, 64),
        specials in prop::collection::vec(
            (any::<usize>(), prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]),
            0..3,
        ),
        target_values in prop::collection::vec(-1i64..5, 32),
        bad_target in prop_oneof![Just(None), (any::<usize>(), prop_oneof![Just(-2i64), Just(5), Just(i64::MAX), Just(i64::MIN)]).prop_map(Some)],
        ls in prop_oneof![Just(0.0), 0.0f64..=1.0],
        reduction in prop_oneof![Just(Reduction::Mean), Just(Reduction::Sum), Just(Reduction::None)],
        single in any::<bool>(),
    ) {
        let ndim = shape.len();
        let axis = axis_seed % ndim;
        let flip = Some(flip_seed % (ndim + 1)).filter(|&d| d < ndim);
        let n_elem: usize = shape.iter().product();
        let k = shape[axis];
        let outer: Vec<usize> = (0..ndim).filter(|&d| d != axis).map(|d| shape[d]).collect();
        let n: usize = outer.iter().product();

        let mut data: Vec<f64> = (0..n_elem).map(|i| values[i % values.len()]).collect();
        for &(at, v) in &specials {
            if n_elem > 0 {
                data[at % n_elem] = v;
            }
        }
        let mut targets: Vec<i64> = (0..n).map(|i| target_values[i % target_values.len()] % (k as i64 + 1).max(1)).collect();
        targets.iter_mut().for_each(|t| if *t >= k as i64 { *t = IGNORE });
        if let (Some((at, v)), true) = (bad_target, n > 0) {
            targets[at % n] = v;
        }
        let mut grad = vec![SENTINEL; n_elem];
        let mut losses = vec![SENTINEL; n];
        let mut soft = vec![SENTINEL; n_elem];

        let x = view(&data, &shape, Some(axis), flip);
        let tv = View::of_indices(&targets);
        let (mut gv, mut lv, mut sv) = (
            view_mut(&mut grad, &shape, Some(axis)),
            view_mut(&mut losses, &outer, None),
            view_mut(&mut soft, &shape, Some(axis)),
        );
        let opts64 = CeOptions { label_smoothing: ls, ..CeOptions::<f64>::plain(k) };
        let opts32 = CeOptions { label_smoothing: ls, ..CeOptions::<f32>::plain(k) };
        let t = Targets::Index { view: &tv, ignore_index: IGNORE, shape: &outer };
        let lv_opt = (reduction == Reduction::None).then_some(&mut lv);
        let isa = Level::active();
        let res = if single {
            row_map::<f32>(isa, RowMap::Softmax, Src::View(&x), &mut sv).unwrap();
            multiclass_loss::<f32>(isa, Loss::CrossEntropy(&opts32), Src::View(&x), t, reduction, Upstream::Scalar(1.0), lv_opt, Some(&mut gv))
        } else {
            row_map::<f64>(isa, RowMap::Softmax, Src::View(&x), &mut sv).unwrap();
            multiclass_loss::<f64>(isa, Loss::CrossEntropy(&opts64), Src::View(&x), t, reduction, Upstream::Scalar(1.0), lv_opt, Some(&mut gv))
        };
        drop((gv, lv, sv));

        let out_of_range = targets.iter().any(|&t| t != IGNORE && !(0..k as i64).contains(&t));
        if out_of_range {
            prop_assert!(matches!(res, Err(Error::ClassIndex { .. })), "{res:?}");
            prop_assert!(grad.iter().chain(&losses).all(|&g| g == SENTINEL), "written on error");
            return Ok(());
        }
        let total = res.expect("in-range targets never fail");
        if data.iter().any(|v| !v.is_finite()) {
            return Ok(()); // NaN/inf semantics are pinned by the conformance vectors
        }
        let tol = if single { 1e-5 } else { 1e-12 };
        let logical = rows(&data, &shape, axis, flip);
        let counted = targets.iter().filter(|&&t| t != IGNORE).count() as f64;
        let scale = if reduction == Reduction::Mean { 1.0 / counted } else { 1.0 };
        let got_grad = rows(&grad, &shape, axis, None);
        let got_soft = rows(&soft, &shape, axis, None);
        let mut sum = 0.0;
        for (r, row) in logical.iter().enumerate() {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for (j, v) in row.iter().enumerate() {
                prop_assert!(close(got_soft[r][j], (v - m).exp() / z, tol), "softmax row {r}");
            }
            // An ignored row's gradient is 0 even when every row is ignored (PyTorch's).
            let (loss, g) = match targets[r] {
                IGNORE => (0.0, vec![0.0; k]),
                c => {
                    let (l, g) = textbook(row, c as usize, ls);
                    (l, g.iter().map(|v| v * scale).collect())
                }
            };
            sum += loss;
            if reduction == Reduction::None {
                prop_assert!(close(losses[r], loss, tol), "loss row {r}: {} vs {loss}", losses[r]);
            }
            for j in 0..k {
                prop_assert!(close(got_grad[r][j], g[j], tol), "grad row {r} col {j}: {} vs {} (target {}, ls {ls}, {reduction:?}, single {single})", got_grad[r][j], g[j], targets[r]);
            }
        }
        match reduction {
            Reduction::Mean if counted == 0.0 => prop_assert!(total.is_nan()),
            Reduction::Mean => prop_assert!(close(total, sum / counted, tol)),
            Reduction::Sum => prop_assert!(close(total, sum, tol)),
            Reduction::None => {}
        }
    }
}
