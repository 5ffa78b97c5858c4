//! Embedding outputs: rows of floats as `.npy`, `.safetensors` (with the file list in its
//! metadata), JSON lines or CSV.

use std::collections::HashMap;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};

/// Scales `values` to unit Euclidean length (left as is when all zero).
pub fn l2_normalize(values: &mut [f32]) {
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        values.iter_mut().for_each(|v| *v /= norm);
    }
}

/// A little-endian float32 NumPy array file (format 1.0) of `shape`.
pub fn npy_bytes(values: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + values.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// A safetensors file with one float32 tensor `embeddings` of `shape`; its metadata holds
/// `files` (a JSON array of the row paths, in order; `texts` when `key` is `text`) and
/// `failed` (a JSON array of `{"file", "error"}` for inputs left out).
pub fn safetensors_bytes(
    values: &[f32],
    shape: &[usize],
    key: &str,
    files: &[String],
    failed: &[(String, String)],
) -> Result<Vec<u8>> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &data)
        .context("embeddings: inconsistent shape")?;
    let failed: Vec<serde_json::Value> = failed
        .iter()
        .map(|(file, error)| serde_json::json!({"file": file, "error": error}))
        .collect();
    let metadata = HashMap::from([
        (format!("{key}s"), serde_json::to_string(files)?),
        ("failed".to_string(), serde_json::to_string(&failed)?),
    ]);
    safetensors::tensor::serialize([("embeddings", view)], Some(metadata))
        .context("cannot serialize the embeddings")
}

/// The file list written beside an `.npy`: one path a line in row order, then a `# failed:`
/// line for each input left out.
pub fn file_list(files: &[String], failed: &[(String, String)]) -> String {
    let mut text = String::new();
    for file in files {
        text.push_str(file);
        text.push('\n');
    }
    for (file, error) in failed {
        text.push_str(&format!("# failed: {file}: {error}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let bytes = npy_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + header_len + 24);
        assert_eq!(
            &bytes[10 + header_len..10 + header_len + 4],
            1f32.to_le_bytes()
        );
    }

    #[test]
    fn safetensors_output_keeps_the_file_list() {
        let bytes = safetensors_bytes(
            &[0.5, 1.5],
            &[1, 2],
            "file",
            &["a.jpg".into()],
            &[("b.jpg".into(), "cannot decode".into())],
        )
        .unwrap();
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = metadata.metadata().as_ref().unwrap();
        assert_eq!(meta["files"], r#"["a.jpg"]"#);
        assert!(meta["failed"].contains("cannot decode"));
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(tensors.tensor("embeddings").unwrap().shape(), [1, 2]);
    }

    #[test]
    fn normalized_rows_have_unit_length() {
        let mut row = [3.0, 4.0];
        l2_normalize(&mut row);
        assert_eq!(row, [0.6, 0.8]);
        let mut zeros = [0.0, 0.0];
        l2_normalize(&mut zeros);
        assert_eq!(zeros, [0.0, 0.0]);
    }
}
