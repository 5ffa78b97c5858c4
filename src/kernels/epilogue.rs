//! What a product does to its result as it stores it: scale, accumulate, bias, activation,
//! residual.

use super::math::{erf, sigmoid, tanh};

/// An elementwise function applied to a product's result before the residual is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// GELU's tanh approximation (HF `gelu_new`, PyTorch `approximate="tanh"`).
    GeluTanh,
    /// `x * sigmoid(1.702 x)` (CLIP's quick GELU).
    QuickGelu,
    Relu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// The function at one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
            }
            Activation::QuickGelu => x * sigmoid(1.702 * x),
            Activation::Relu => x.max(0.0),
            Activation::Silu => x * sigmoid(x),
        }
    }

    /// The function over `values` in place, then `residual` added (a loop per function, so
    /// each vectorizes).
    #[inline(always)]
    pub fn apply_row(self, values: &mut [f32], residual: Option<&[f32]>) {
        macro_rules! each {
            ($x:ident => $body:expr) => {
                match residual {
                    Some(residual) => values.iter_mut().zip(residual).for_each(|(v, r)| {
                        let $x = *v;
                        *v = $body + r;
                    }),
                    None => values.iter_mut().for_each(|v| {
                        let $x = *v;
                        *v = $body;
                    }),
                }
            };
        }
        match self {
            Activation::None => {
                if let Some(residual) = residual {
                    values.iter_mut().zip(residual).for_each(|(v, r)| *v += r);
                }
            }
            Activation::Gelu => each!(x => Activation::Gelu.apply(x)),
            Activation::GeluTanh => each!(x => Activation::GeluTanh.apply(x)),
            Activation::QuickGelu => each!(x => Activation::QuickGelu.apply(x)),
            Activation::Relu => each!(x => x.max(0.0)),
            Activation::Silu => each!(x => Activation::Silu.apply(x)),
        }
    }
}

/// `C = act(scale * A B + [C] + bias) + residual`, each part optional.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// Multiplies the product (attention's `1 / sqrt(d)`).
    pub scale: f32,
    /// Adds what the output already holds.
    pub accumulate: bool,
    /// One value per output column.
    pub bias: Option<&'a [f32]>,
    pub activation: Activation,
    /// Added after the activation: `rows x cols` values, row-major and contiguous.
    pub residual: Option<&'a [f32]>,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Self {
            scale: 1.0,
            accumulate: false,
            bias: None,
            activation: Activation::None,
            residual: None,
        }
    }
}

impl<'a> Epilogue<'a> {
    /// The plain product.
    pub fn none() -> Self {
        Self::default()
    }

    /// A dense layer's: bias, then activation.
    pub fn dense(bias: Option<&'a [f32]>, activation: Activation) -> Self {
        Self {
            bias,
            activation,
            ..Self::default()
        }
    }
}
