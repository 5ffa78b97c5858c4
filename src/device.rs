//! Choosing the device and dtype at runtime.

use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// A `--device` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA, then Metal, then the CPU: the first that works.
    Auto,
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(ordinal)) => Ok(Self::Cuda(ordinal)),
                _ => Err(format!(
                    "unknown device {s:?} (expected auto, cpu, cuda, cuda:N or metal)"
                )),
            },
        }
    }
}

/// The device picked for a request, with a note for stderr when `auto` fell back.
pub struct ChosenDevice {
    pub device: Device,
    pub fallback_note: Option<String>,
}

impl DeviceRequest {
    /// Opens the device. `Auto` tries each compiled-in GPU backend at runtime (a CUDA build on a
    /// machine without a GPU falls back to the CPU); an explicit device that is not there, or
    /// was not compiled in, is an error.
    pub fn open(self) -> Result<ChosenDevice> {
        let plain = |device| ChosenDevice {
            device,
            fallback_note: None,
        };
        match self {
            Self::Cpu => Ok(plain(Device::Cpu)),
            Self::Cuda(ordinal) => open_cuda(ordinal).map(plain),
            Self::Metal => open_metal().map(plain),
            Self::Auto => {
                let mut notes = Vec::new();
                if cfg!(feature = "cuda") {
                    match open_cuda(0) {
                        Ok(device) => return Ok(plain(device)),
                        Err(err) => notes.push(format!("{err:#}")),
                    }
                }
                if cfg!(feature = "metal") {
                    match open_metal() {
                        Ok(device) => return Ok(plain(device)),
                        Err(err) => notes.push(format!("{err:#}")),
                    }
                }
                Ok(ChosenDevice {
                    device: Device::Cpu,
                    fallback_note: (!notes.is_empty())
                        .then(|| format!("using the CPU: {}", notes.join("; "))),
                })
            }
        }
    }
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    if !cfg!(feature = "cuda") {
        bail!("cuda:{ordinal}: this vit was built without CUDA support (rebuild with `--features cuda`)");
    }
    // candle links the CUDA libraries at load time (a binary without them does not start), and
    // on a machine without a GPU the driver answers with an error, not a panic. Should anything
    // in candle or cudarc panic all the same, report it as an error, without the panic message
    // and backtrace hint that the default hook would print.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match opened {
        Ok(result) => result
            .map_err(|err| anyhow::anyhow!(one_line(&without_backtrace(&err).to_string())))
            .with_context(|| format!("cuda:{ordinal}: no usable CUDA GPU")),
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown error".into());
            bail!(
                "cuda:{ordinal}: CUDA failed to initialise: {}",
                one_line(&why)
            )
        }
    }
}

/// A candle error without the backtrace that candle appends under `RUST_BACKTRACE=1`.
fn without_backtrace(err: &candle_core::Error) -> &candle_core::Error {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        other => other,
    }
}

/// `text` on one line, for messages that end up in a one-line note.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The compute capability `(major, minor)` of a CUDA device; `None` for other devices, in
/// builds without CUDA, or when the driver cannot tell.
pub fn cuda_compute_capability(device: &Device) -> Option<(i32, i32)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return cuda.cuda_stream().context().compute_capability().ok();
    }
    let _ = device;
    None
}

fn open_metal() -> Result<Device> {
    if !cfg!(feature = "metal") {
        bail!("metal: this vit was built without Metal support (rebuild with `--features metal` on macOS)");
    }
    Device::new_metal(0).context("metal: no usable Metal GPU")
}

/// A `--dtype` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeRequest {
    /// f32 on the CPU, bf16 on CUDA (f16 on GPUs older than sm_80, which lack bf16), f16 on
    /// Metal.
    Auto,
    F32,
    F16,
    BF16,
    /// int8 dense layers (weights per output channel, inputs per row), f32 elsewhere; the
    /// CPU only.
    Int8,
}

impl FromStr for DTypeRequest {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            "int8" | "i8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown dtype {s:?} (expected auto, f32, f16, bf16 or int8)"
            )),
        }
    }
}

impl DTypeRequest {
    /// The dtype to compute in on `device` (f32 for int8, whose dense layers alone are
    /// int8).
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            Self::F32 | Self::Int8 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::Auto => match device {
                Device::Cpu => DType::F32,
                Device::Cuda(_) => match cuda_compute_capability(device) {
                    Some((major, _)) if major < 8 => DType::F16,
                    _ => DType::BF16,
                },
                Device::Metal(_) => DType::F16,
            },
        }
    }
}

/// What a model computes in: a dtype, and whether its dense layers are int8 (in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub dtype: DType,
    pub int8: bool,
}

impl Precision {
    /// The name used in reports and `--dtype`.
    pub fn name(self) -> &'static str {
        match self.int8 {
            true => "int8",
            false => self.dtype.as_str(),
        }
    }
}

impl DTypeRequest {
    /// The precision to compute in on `device`.
    pub fn precision(self, device: &Device) -> Precision {
        Precision {
            dtype: self.resolve(device),
            int8: self == Self::Int8,
        }
    }
}

/// A short name for a device, as printed in reports (`cpu`, `cuda:0`, `metal`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda(3)));
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
        assert!("tpu".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn auto_dtype_is_f32_on_cpu() {
        assert_eq!(DTypeRequest::Auto.resolve(&Device::Cpu), DType::F32);
        assert_eq!(
            "bf16"
                .parse::<DTypeRequest>()
                .unwrap()
                .resolve(&Device::Cpu),
            DType::BF16
        );
    }

    #[test]
    fn auto_device_without_gpu_backends_is_the_cpu() {
        let chosen = DeviceRequest::Auto.open().unwrap();
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert!(chosen.device.is_cpu());
            assert!(chosen.fallback_note.is_none());
        }
    }

    #[test]
    fn no_compute_capability_off_cuda() {
        assert_eq!(cuda_compute_capability(&Device::Cpu), None);
    }

    #[test]
    fn candle_backtraces_are_left_out() {
        let err = candle_core::Error::Msg("no device".into());
        let with = candle_core::Error::WithBacktrace {
            inner: Box::new(err),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(without_backtrace(&with).to_string(), "no device");
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(
            one_line("DriverError(100,\n  \"no device\")\n"),
            "DriverError(100, \"no device\")"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = DeviceRequest::Cuda(0).open().err().unwrap().to_string();
        assert!(err.contains("built without CUDA support"), "{err}");
    }
}
