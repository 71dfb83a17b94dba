//! Python bindings of the core (`spectrum_rs._core`): the catalog and its layers, the
//! layer stream, the statistics and the ranking. Errors become the exception classes of
//! `spectrum_rs.errors`. Policy (devices, files, users) lives in the Python package; this
//! file only translates.

pub mod decode;
pub mod error;
pub mod files;
pub mod layout;
pub mod naming;
pub mod ranking;
pub mod stats;
pub mod stream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyBaseException, PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::decode::dtype_name;
use crate::error::SpectrumError as CoreError;
use crate::layout::Catalog as CoreCatalog;
use crate::stats::NoNoise;
use crate::stream::{Payload, Streamer};

/// The exception of `spectrum_rs.errors` for a core error: the `SpectrumError` family
/// (a `ValueError`) with `path=` for input problems, `InternalError` (a `RuntimeError`)
/// for failures of the core, and Python's own `MemoryError` for a buffer a file asks for
/// that cannot be allocated. Without that module, a plain `ValueError` / `RuntimeError`
/// with the same message.
fn to_py(py: Python<'_>, e: CoreError) -> PyErr {
    let class = match &e {
        CoreError::File { .. } => "ModelFileError",
        CoreError::Layout { .. } => "UnsupportedLayoutError",
        CoreError::Input(_) => "SpectrumError",
        CoreError::Internal(_) => "InternalError",
        CoreError::Memory { .. } => return PyMemoryError::new_err(e.to_string()),
    };
    let message = e.to_string();
    let raised = || -> PyResult<PyErr> {
        let cls = py.import("spectrum_rs.errors")?.getattr(class)?;
        let error = match &e {
            CoreError::Internal(_) => cls.call1((&message,))?,
            _ => {
                let kwargs = PyDict::new(py);
                kwargs.set_item("path", e.path())?;
                cls.call((&message,), Some(&kwargs))?
            }
        };
        if !error.is_instance_of::<PyBaseException>() {
            return Err(PyValueError::new_err("not an exception"));
        }
        Ok(PyErr::from_value(error))
    };
    raised().unwrap_or_else(|_| match e {
        CoreError::Internal(_) => PyRuntimeError::new_err(message),
        _ => PyValueError::new_err(message),
    })
}

/// A model's safetensors files, tensors and layers.
#[pyclass(module = "spectrum_rs._core", frozen)]
struct Catalog {
    inner: Arc<CoreCatalog>,
}

#[pymethods]
impl Catalog {
    /// Opens a folder, an index file, one `.safetensors` file, or a list of files.
    /// `scale_block`: the FP8 block size `(rows, cols)` from the model's config. The
    /// keywords are the layout options of `rust/layout` (docs/layouts.md).
    #[new]
    #[pyo3(signature = (
        paths, scale_block=None, *, max_experts=65_536, max_layers=4_000_000,
        group_experts=false, group_by="type", split_fused=false, model_type=None, quant_method=None,
        attention_heads=None
    ))]
    // The defaults are `layout::MAX_EXPERTS` and `layout::MAX_LAYERS`, written out so that
    // Python's signature shows them.
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        paths: Vec<PathBuf>,
        scale_block: Option<(usize, usize)>,
        max_experts: usize,
        max_layers: usize,
        group_experts: bool,
        group_by: &str,
        split_fused: bool,
        model_type: Option<String>,
        quant_method: Option<String>,
        attention_heads: Option<(usize, usize, usize)>,
    ) -> PyResult<Self> {
        let group_by = crate::layout::GroupBy::parse(group_by).map_err(|e| to_py(py, e))?;
        let options = crate::layout::Options {
            max_experts,
            max_layers,
            group_experts,
            group_by,
            split_fused,
            model_type,
            quant_method,
            attention_heads,
        };
        let mut cat = py.detach(|| CoreCatalog::open_with(&paths, &options)).map_err(|e| to_py(py, e))?;
        cat.scale_block = scale_block;
        Ok(Catalog { inner: Arc::new(cat) })
    }

    /// Every layer, in model order, as a `LayerInfo`.
    fn layers(&self, py: Python<'_>) -> PyResult<Vec<LayerInfo>> {
        let cat = &self.inner;
        cat.layers
            .iter()
            .enumerate()
            .map(|(index, l)| {
                let t = &cat.tensors[l.weight.tensor];
                Ok(LayerInfo {
                    index,
                    name: l.name.clone(),
                    kind: l.kind.clone(),
                    rows: l.rows,
                    cols: l.cols,
                    tensor: t.name.clone(),
                    tensor_shape: PyTuple::new(py, &t.shape)?.unbind(),
                    dtype: dtype_name(t.dtype).to_string(),
                    file: cat.shards[t.shard].path.display().to_string(),
                    expert: l.weight.expert,
                    scale: l.scale.map(|s| cat.tensors[s].name.clone()),
                    nbytes: cat.layer_bytes(l),
                })
            })
            .collect()
    }

    /// The model's files as (path, size in bytes, header hash) tuples.
    fn files(&self) -> Vec<(String, u64, u64)> {
        self.inner.shards.iter().map(|s| (s.path.display().to_string(), s.size, s.header_hash)).collect()
    }

    /// Every tensor name, in file order.
    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// Indices of the layers to scan (see the Rust `Catalog::select`).
    #[pyo3(signature = (include=Vec::new(), exclude=Vec::new(), include_1d=false))]
    fn select(
        &self,
        py: Python<'_>,
        include: Vec<String>,
        exclude: Vec<String>,
        include_1d: bool,
    ) -> PyResult<Vec<usize>> {
        self.inner.select(&include, &exclude, include_1d).map_err(|e| to_py(py, e))
    }

    /// Streams the given layers in file order (or, with `file_order=False`, in the order
    /// given), with at most `window_bytes` of host data queued or held. With `raw=True`,
    /// BF16/F16/F32 layers come as their stored bytes.
    #[pyo3(signature = (layers, window_bytes=1 << 30, raw=false, file_order=true))]
    fn stream(
        &self,
        py: Python<'_>,
        layers: Vec<usize>,
        window_bytes: usize,
        raw: bool,
        file_order: bool,
    ) -> PyResult<LayerStream> {
        let s = Streamer::start_ordered(Arc::clone(&self.inner), layers, window_bytes, raw, file_order)
            .map_err(|e| to_py(py, e))?;
        Ok(LayerStream { inner: Mutex::new(Some(s)) })
    }
}

/// One layer of a catalog: where it is stored and the matrix it is scanned as.
#[pyclass(module = "spectrum_rs._core", frozen)]
struct LayerInfo {
    /// Position in `Catalog.layers()`.
    #[pyo3(get)]
    index: usize,
    #[pyo3(get)]
    name: String,
    /// The layer type (docs/method.md §1).
    #[pyo3(get, name = "type")]
    kind: String,
    #[pyo3(get)]
    rows: usize,
    #[pyo3(get)]
    cols: usize,
    /// The stored tensor the layer reads.
    #[pyo3(get)]
    tensor: String,
    #[pyo3(get)]
    tensor_shape: Py<PyTuple>,
    /// The stored dtype, as safetensors names it ("BF16", "F8_E4M3").
    #[pyo3(get)]
    dtype: String,
    /// The shard file that holds the tensor.
    #[pyo3(get)]
    file: String,
    /// Which expert of a stacked `[E, out, in]` tensor; `None` for a whole tensor.
    #[pyo3(get)]
    expert: Option<usize>,
    /// The FP8 scale tensor the weight is multiplied by.
    #[pyo3(get)]
    scale: Option<String>,
    /// Bytes on disk (the weight's slice plus its scale).
    #[pyo3(get)]
    nbytes: usize,
}

#[pymethods]
impl LayerInfo {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let s = |v: &str| -> PyResult<String> { Ok(PyString::new(py, v).repr()?.to_string()) };
        let opt = |v: &Option<String>| -> PyResult<String> { v.as_deref().map_or(Ok("None".into()), s) };
        Ok(format!(
            "LayerInfo(index={}, name={}, type={}, rows={}, cols={}, tensor={}, tensor_shape={}, dtype={}, file={}, expert={}, scale={}, nbytes={})",
            self.index,
            s(&self.name)?,
            s(&self.kind)?,
            self.rows,
            self.cols,
            s(&self.tensor)?,
            self.tensor_shape.bind(py).repr()?,
            s(&self.dtype)?,
            s(&self.file)?,
            self.expert.map_or("None".into(), |e| e.to_string()),
            opt(&self.scale)?,
            self.nbytes
        ))
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

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<(usize, Bound<'py, PyAny>, &'static str)>> {
        let next = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_mut().and_then(|s| s.next_item())
        });
        let item = match next {
            None => return Ok(None),
            Some(Err(e)) => return Err(to_py(py, e)),
            Some(Ok(item)) => item,
        };
        match item.payload {
            Payload::F32(v) => {
                let a = PyArray1::from_vec(py, v).reshape([item.rows, item.cols])?;
                Ok(Some((item.layer, a.into_any(), "F32")))
            }
            Payload::Raw { bytes, dtype } => {
                let a = PyArray1::from_vec(py, bytes);
                Ok(Some((item.layer, a.into_any(), dtype_name(dtype))))
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

/// docs/method.md §2 statistics of a `rows x cols` matrix from its singular values:
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

/// The layer type of a layer name (docs/method.md §1.2), by the catalog's rule
/// (`layout::kinds`): with `group_experts`, expert indices become `*` (`stacked`: the name
/// ends with the index of a stacked expert, `<tensor>.<e>`); with `group_by="stack"`, the
/// stack is part of the type. The in-memory scan (`scan_model`) types its layers here.
#[pyfunction]
#[pyo3(signature = (name, *, stacked=false, group_experts=false, group_by="type"))]
fn layer_type(py: Python<'_>, name: &str, stacked: bool, group_experts: bool, group_by: &str) -> PyResult<String> {
    let group_by = layout::GroupBy::parse(group_by).map_err(|e| to_py(py, e))?;
    let options = layout::Options { group_experts, group_by, ..Default::default() };
    Ok(layout::kinds::layer_kind(name, stacked, &options))
}

/// Indices that put layer names in model order (numbers compare as numbers).
#[pyfunction]
fn natural_order(names: Vec<String>) -> Vec<usize> {
    naming::natural_order(&names)
}

/// Whether a user pattern (type, name or glob) picks this layer.
#[pyfunction]
fn layer_matches(pattern: &str, name: &str, kind: &str) -> bool {
    naming::matches(pattern, name, kind)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Catalog>()?;
    m.add_class::<LayerInfo>()?;
    m.add_class::<LayerStream>()?;
    m.add_function(wrap_pyfunction!(spectrum_stats, m)?)?;
    m.add_function(wrap_pyfunction!(rank_by_type, m)?)?;
    m.add_function(wrap_pyfunction!(select_top, m)?)?;
    m.add_function(wrap_pyfunction!(layer_type, m)?)?;
    m.add_function(wrap_pyfunction!(natural_order, m)?)?;
    m.add_function(wrap_pyfunction!(layer_matches, m)?)?;
    Ok(())
}
