//! Storage dtypes the core can read and write, and the per-element conversions between them
//! and the two compute types.
//!
//! Arrays arrive as raw bytes plus a [`DType`]; [`dispatch`] turns the runtime tag into a
//! monomorphized call once per block, so conversion loops never branch on the dtype.

use half::{bf16, f16};

/// The element types of arrays the core accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    pub fn is_integer(self) -> bool {
        !self.is_float() && self != DType::Bool
    }

    /// NumPy's name for the dtype.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// The type kernels compute in for inputs of this dtype: float64 for float64 and for the
    /// integers and bool (NumPy's promotion for `np.exp`), float32 for everything narrower.
    pub fn compute(self) -> DType {
        match self {
            DType::F16 | DType::BF16 | DType::F32 => DType::F32,
            _ => DType::F64,
        }
    }

    /// The dtype of results for inputs of this dtype (integers and bool promote to float64).
    pub fn result(self) -> DType {
        if self.is_float() {
            self
        } else {
            DType::F64
        }
    }
}

/// A stored element that can be read into a compute type.
pub trait Elem: Copy + 'static {
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    /// The value as a class index; `u64` values past `i64::MAX` saturate (and so are out of range).
    fn to_index(self) -> i64;
}

/// A floating stored element that results can be written as.
pub trait FloatElem: Elem {
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            #[inline(always)]
            fn to_f32(self) -> f32 { self as f32 }
            #[inline(always)]
            fn to_f64(self) -> f64 { self as f64 }
            #[inline(always)]
            fn to_index(self) -> i64 { i64::try_from(self).unwrap_or(i64::MAX) }
        }
    )*};
}
int_elem!(i8, i16, i32, i64, u8, u16, u32, u64);

/// NumPy's bool, read as its byte so that any non-zero byte is `true` (no invalid `bool`).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct BoolByte(pub u8);

impl Elem for BoolByte {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        (self.0 != 0) as u8 as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        (self.0 != 0) as u8 as f64
    }
    #[inline(always)]
    fn to_index(self) -> i64 {
        (self.0 != 0) as i64
    }
}

macro_rules! float_elem {
    ($t:ty, $f32:expr, $f64:expr, $from32:expr, $from64:expr) => {
        impl Elem for $t {
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $f32(self)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                $f64(self)
            }
            #[inline(always)]
            fn to_index(self) -> i64 {
                // Float targets are never class indices; the binding rejects them earlier.
                $f64(self) as i64
            }
        }
        impl FloatElem for $t {
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $from32(v)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $from64(v)
            }
        }
    };
}
float_elem!(f32, |v| v, |v: f32| v as f64, |v| v, |v: f64| v as f32);
float_elem!(f64, |v: f64| v as f32, |v| v, |v: f32| v as f64, |v| v);
float_elem!(f16, f16::to_f32, f16::to_f64, f16::from_f32, f16::from_f64);
float_elem!(
    bf16,
    bf16::to_f32,
    bf16::to_f64,
    bf16::from_f32,
    bf16::from_f64
);

/// Runs `$body` with the type alias `$S` bound to the Rust type stored for `$dtype`.
macro_rules! dispatch {
    ($dtype:expr, $S:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::Bool => {
                type $S = $crate::dtype::BoolByte;
                $body
            }
            $crate::dtype::DType::I8 => {
                type $S = i8;
                $body
            }
            $crate::dtype::DType::I16 => {
                type $S = i16;
                $body
            }
            $crate::dtype::DType::I32 => {
                type $S = i32;
                $body
            }
            $crate::dtype::DType::I64 => {
                type $S = i64;
                $body
            }
            $crate::dtype::DType::U8 => {
                type $S = u8;
                $body
            }
            $crate::dtype::DType::U16 => {
                type $S = u16;
                $body
            }
            $crate::dtype::DType::U32 => {
                type $S = u32;
                $body
            }
            $crate::dtype::DType::U64 => {
                type $S = u64;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $S = half::f16;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $S = half::bf16;
                $body
            }
            $crate::dtype::DType::F32 => {
                type $S = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $S = f64;
                $body
            }
        }
    };
}

/// Like [`dispatch!`] for the floating dtypes only; `$other` runs for the rest.
macro_rules! dispatch_float {
    ($dtype:expr, $S:ident => $body:expr, _ => $other:expr) => {
        match $dtype {
            $crate::dtype::DType::F16 => {
                type $S = half::f16;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $S = half::bf16;
                $body
            }
            $crate::dtype::DType::F32 => {
                type $S = f32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $S = f64;
                $body
            }
            _ => $other,
        }
    };
}

pub(crate) use dispatch;
pub(crate) use dispatch_float;
