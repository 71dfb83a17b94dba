//! Python bindings of the core (`spectrum_rs._core`): the catalog, the layer stream,
//! the statistics and the ranking, and the `SpectrumError` exception. Policy (devices,
//! files, users) lives in the Python package; this file only translates.

pub mod catalog;
pub mod decode;
pub mod error;
pub mod naming;
pub mod ranking;
pub mod stats;
pub mod stream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::catalog::Catalog as CoreCatalog;
use crate::error::SpectrumError as CoreError;
use crate::stats::NoNoise;
use crate::stream::{Payload, Streamer};

create_exception!(
    _core,
    SpectrumError,
    PyValueError,
    "A model or result file cannot be scanned or read; the message names the file and the problem."
);

fn to_py(e: CoreError) -> PyErr {
    SpectrumError::new_err(e.to_string())
}

/// A model's safetensors files, tensors and layers.
#[pyclass(module = "spectrum_rs._core", frozen)]
struct Catalog {
    inner: Arc<CoreCatalog>,
}

#[pymethods]
impl Catalog {
    /// Opens a folder, an index file, one `.safetensors` file, or a list of files.
    /// `scale_block`: the FP8 block size `(rows, cols)` from the model's config.
    #[new]
    #[pyo3(signature = (paths, scale_block=None))]
    fn new(py: Python<'_>, paths: Vec<PathBuf>, scale_block: Option<(usize, usize)>) -> PyResult<Self> {
        let mut cat = py.detach(|| CoreCatalog::open(&paths)).map_err(to_py)?;
        cat.scale_block = scale_block;
        Ok(Catalog { inner: Arc::new(cat) })
    }

    /// Every layer: a dict with name, type, rows, cols, tensor, tensor_shape, dtype,
    /// file, expert, scale, nbytes.
    fn layers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let cat = &self.inner;
        let list = PyList::empty(py);
        for l in &cat.layers {
            let t = &cat.tensors[l.weight.tensor];
            let d = PyDict::new(py);
            d.set_item("name", &l.name)?;
            d.set_item("type", &l.kind)?;
            d.set_item("rows", l.rows)?;
            d.set_item("cols", l.cols)?;
            d.set_item("tensor", &t.name)?;
            d.set_item("tensor_shape", t.shape.clone())?;
            d.set_item("dtype", format!("{:?}", t.dtype))?;
            d.set_item("file", cat.shards[t.shard].path.display().to_string())?;
            d.set_item("expert", l.weight.expert)?;
            d.set_item("scale", l.scale.map(|s| cat.tensors[s].name.clone()))?;
            d.set_item("nbytes", cat.layer_bytes(l))?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// The model's files as (path, size in bytes, header hash) tuples.
    fn files(&self) -> Vec<(String, u64, u64)> {
        self.inner
            .shards
            .iter()
            .map(|s| (s.path.display().to_string(), s.size, s.header_hash))
            .collect()
    }

    /// Every tensor name, in file order.
    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// Indices of the layers to scan (see the Rust `Catalog::select`).
    #[pyo3(signature = (include=Vec::new(), exclude=Vec::new(), include_1d=false))]
    fn select(&self, include: Vec<String>, exclude: Vec<String>, include_1d: bool) -> PyResult<Vec<usize>> {
        self.inner.select(&include, &exclude, include_1d).map_err(to_py)
    }

    /// Streams the given layers in file order, with at most `window_bytes` of host data
    /// queued or held. With `raw=True`, BF16/F16/F32 layers come as their stored bytes.
    #[pyo3(signature = (layers, window_bytes=1 << 30, raw=false))]
    fn stream(&self, layers: Vec<usize>, window_bytes: usize, raw: bool) -> PyResult<LayerStream> {
        let s = Streamer::start(Arc::clone(&self.inner), layers, window_bytes, raw).map_err(to_py)?;
        Ok(LayerStream { inner: Mutex::new(Some(s)) })
    }
}

/// An iterator of `(layer_index, array, dtype)`: `array` is a 2-D float32 array with
/// dtype "F32", or a 1-D uint8 array of stored bytes with the stored dtype name.
#[pyclass(module = "spectrum_rs._core")]
struct LayerStream {
    inner: Mutex<Option<Streamer>>,
}

#[pymethods]
impl LayerStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<(usize, Bound<'py, PyAny>, String)>> {
        let next = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_mut().and_then(|s| s.next_item())
        });
        let item = match next {
            None => return Ok(None),
            Some(Err(e)) => return Err(to_py(e)),
            Some(Ok(item)) => item,
        };
        match item.payload {
            Payload::F32(v) => {
                let a = PyArray1::from_vec(py, v).reshape([item.rows, item.cols])?;
                Ok(Some((item.layer, a.into_any(), "F32".to_string())))
            }
            Payload::Raw { bytes, dtype } => {
                let a = PyArray1::from_vec(py, bytes);
                Ok(Some((item.layer, a.into_any(), format!("{dtype:?}"))))
            }
        }
    }

    /// Stops the reader thread and frees what it queued.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let s = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(s);
        })
    }
}

/// SPEC §2 statistics of a `rows x cols` matrix from its singular values:
/// `(snr, sigma, threshold, max_singular_value, n_signal)`. `snr` is normalised by the
/// largest singular value and NaN for an all-zero or non-finite matrix.
#[pyfunction]
#[pyo3(signature = (singular_values, rows, cols, no_noise_inf=false))]
fn spectrum_stats(
    singular_values: PyReadonlyArray1<'_, f64>,
    rows: usize,
    cols: usize,
    no_noise_inf: bool,
) -> PyResult<(f64, f64, f64, f64, usize)> {
    let s = singular_values.as_slice().map_err(|e| PyValueError::new_err(e.to_string()))?;
    let rule = if no_noise_inf { NoNoise::Infinity } else { NoNoise::One };
    let r = stats::spectrum(s, rows, cols, rule);
    Ok((r.snr, r.sigma, r.threshold, r.max_singular_value, r.n_signal))
}

/// Types in sorted order, each with its layer indices ordered by SNR (highest first,
/// stable, NaN last).
#[pyfunction]
fn rank_by_type(types: Vec<String>, snrs: Vec<f64>) -> PyResult<Vec<(String, Vec<usize>)>> {
    if types.len() != snrs.len() {
        return Err(PyValueError::new_err("types and snrs differ in length"));
    }
    Ok(ranking::rank_by_type(&types, &snrs))
}

/// For each layer, whether it is in the top `top_percent` of its type.
#[pyfunction]
fn select_top(types: Vec<String>, snrs: Vec<f64>, top_percent: f64) -> PyResult<Vec<bool>> {
    if types.len() != snrs.len() {
        return Err(PyValueError::new_err("types and snrs differ in length"));
    }
    if !(0.0..=100.0).contains(&top_percent) {
        return Err(PyValueError::new_err(format!("top_percent must be between 0 and 100, got {top_percent}")));
    }
    Ok(ranking::select_top(&types, &snrs, top_percent))
}

/// The layer type of a layer name (SPEC §1).
#[pyfunction]
fn layer_type(name: &str) -> String {
    naming::layer_type(name)
}

/// Indices that put layer names in model order (numbers compare as numbers).
#[pyfunction]
fn natural_order(names: Vec<String>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by_cached_key(|&i| catalog::natural_key(&names[i]));
    idx
}

/// Whether a user pattern (type, name or glob) picks this layer.
#[pyfunction]
fn layer_matches(pattern: &str, name: &str, kind: &str) -> bool {
    naming::matches(pattern, name, kind)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SpectrumError", m.py().get_type::<SpectrumError>())?;
    m.add_class::<Catalog>()?;
    m.add_class::<LayerStream>()?;
    m.add_function(wrap_pyfunction!(spectrum_stats, m)?)?;
    m.add_function(wrap_pyfunction!(rank_by_type, m)?)?;
    m.add_function(wrap_pyfunction!(select_top, m)?)?;
    m.add_function(wrap_pyfunction!(layer_type, m)?)?;
    m.add_function(wrap_pyfunction!(natural_order, m)?)?;
    m.add_function(wrap_pyfunction!(layer_matches, m)?)?;
    Ok(())
}
