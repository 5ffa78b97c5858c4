//! Gradient tests: the training path's ops against finite differences, and gradients reaching
//! every parameter of a whole model.

use candle_core::{DType, Device, Result, Tensor, Var, D};

use super::model::{init_weights, Weights};
use super::optim::cross_entropy;
use crate::model::encoder::softmax_last_dim;
use crate::model::layers::layer_norm_differentiable;
use crate::model::ViTConfig;

/// Checks the backward pass of `f` at `x` against central differences of
/// `L(x) = sum(f(x) * r)` for a fixed random `r`, element by element; an error names the
/// first element off by more than `tolerance` (relative to `1 + |difference|`).
fn check<F: Fn(&Tensor) -> Result<Tensor>>(f: F, x: &Tensor, h: f64, tolerance: f64) -> Result<()> {
    let var = Var::from_tensor(x)?;
    let r = Tensor::randn(0f64, 1., f(x)?.shape(), x.device())?.to_dtype(x.dtype())?;
    let loss = |t: &Tensor| -> Result<Tensor> { (f(t)? * &r)?.sum_all() };
    let grads = loss(var.as_tensor())?.backward()?;
    let analytic = grads
        .get(var.as_tensor())
        .expect("the input gets a gradient")
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let values = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let at = |values: &[f64]| -> Result<f64> {
        let t = Tensor::from_vec(values.to_vec(), x.shape(), x.device())?.to_dtype(x.dtype())?;
        loss(&t)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    };
    for i in 0..values.len() {
        let mut plus = values.clone();
        plus[i] += h;
        let mut minus = values.clone();
        minus[i] -= h;
        let numeric = (at(&plus)? - at(&minus)?) / (2.0 * h);
        let error = (numeric - analytic[i]).abs();
        if error > tolerance * (1.0 + numeric.abs()) {
            candle_core::bail!(
                "element {i}: backward {} vs finite difference {numeric}",
                analytic[i]
            );
        }
    }
    Ok(())
}

#[test]
fn softmax_gradients_match_finite_differences_in_f64() -> Result<()> {
    let x = Tensor::randn(0f64, 2., (2, 3, 5), &Device::Cpu)?;
    check(softmax_last_dim, &x, 1e-5, 1e-7)
}

#[test]
fn gelu_gradients_match_finite_differences_in_f64() -> Result<()> {
    // Includes the tails and zero, where the erf term changes fastest.
    let x = Tensor::new(
        &[-4f64, -2.5, -1., -0.3, 0., 0.2, 0.7, 1.5, 3., 5.],
        &Device::Cpu,
    )?;
    check(|t| t.gelu_erf(), &x, 1e-5, 1e-6)?;
    let x = Tensor::randn(0f64, 1.5, (4, 6), &Device::Cpu)?;
    check(|t| t.gelu_erf(), &x, 1e-5, 1e-6)
}

#[test]
fn layer_norm_gradients_match_finite_differences() -> Result<()> {
    // The composed layer norm computes in f32 whatever its input, so the differences are
    // taken at a larger step, with an f32-sized tolerance.
    let dev = Device::Cpu;
    let x = Tensor::randn(0.5f64, 2., (3, 8), &dev)?;
    let weight = Tensor::randn(1f64, 0.5, 8, &dev)?;
    let bias = Tensor::randn(0f64, 0.5, 8, &dev)?;
    check(
        |t| layer_norm_differentiable(t, &weight, &bias, 1e-5),
        &x,
        1e-2,
        2e-3,
    )?;
    check(
        |w| layer_norm_differentiable(&x, w, &bias, 1e-5),
        &weight,
        1e-2,
        2e-3,
    )?;
    check(
        |b| layer_norm_differentiable(&x, &weight, b, 1e-5),
        &bias,
        1e-2,
        2e-3,
    )
}

#[test]
fn the_check_catches_a_wrong_gradient() {
    // A function whose backward pass is wrong: x * stop_gradient(x) has derivative 2x,
    // backward gives x.
    let x = Tensor::new(&[1.5f64, -2.0], &Device::Cpu).unwrap();
    let err = check(|t| t * t.detach(), &x, 1e-5, 1e-6).unwrap_err();
    assert!(err.to_string().contains("finite difference"), "{err}");
}

/// The max absolute value of each parameter's gradient after one step of the whole model.
fn gradient_magnitudes(config: &ViTConfig) -> Result<Vec<(String, f32)>> {
    let dev = Device::Cpu;
    let state = init_weights(config, 3).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let weights = Weights::new(config.clone(), state, false, DType::F32, &dev)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let network = weights
        .network(true)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let pixels = Tensor::randn(0f32, 1., (4, 3, 32, 32), &dev)?;
    let logits = network.forward(&pixels)?;
    let loss = cross_entropy(&logits, &[0, 1, 2, 1], 0.1, 4)?;
    let grads = loss.backward()?;
    weights
        .trainable
        .iter()
        .map(|(name, var)| {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for {name}")))?;
            let max = g.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?;
            Ok((name.clone(), max))
        })
        .collect()
}

#[test]
fn every_parameter_of_a_tiny_model_gets_a_gradient() -> Result<()> {
    let config = super::model::tests::tiny_config(3);
    let magnitudes = gradient_magnitudes(&config)?;
    assert_eq!(
        magnitudes.len(),
        crate::model::weights::expected_tensors(&config).len()
    );
    for (name, max) in &magnitudes {
        if name.ends_with("attention.key.bias") {
            // Adding a constant to every key shifts all of a query's scores equally, which
            // softmax ignores: this gradient is zero up to rounding.
            assert!(*max < 1e-6, "{name}: {max}");
        } else {
            assert!(*max > 1e-7 && max.is_finite(), "{name}: gradient {max}");
        }
    }
    Ok(())
}
