//! Integer-packed quantization formats, which are refused, never skipped: GPTQ and AWQ
//! (`qweight`, `qzeros`, `scales`, `g_idx`), bitsandbytes LLM.int8() (`weight` int8 with
//! `SCB`, `weight_format`) and 4-bit (`weight` uint8 with `weight.absmax`,
//! `weight.quant_map`, `weight.quant_state.bitsandbytes__nf4`), compressed-tensors
//! pack-quantized (`weight_packed`), EXL2 (`q_weight`), HQQ (`W_q`), AQLM (`codes`,
//! `codebooks`), and plain int8 weights. Each quantized module becomes one layer (so that
//! it is listed and can be excluded by type) whose selection fails with an
//! `UnsupportedLayoutError` naming the format and suggesting the unquantized base model:
//! an SNR of packed integers means nothing, and a scan that left these modules out would
//! look complete while missing most of the model.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::Dtype;

use crate::decode::dtype_name;
use crate::layout::{dense, Source, TensorEntry};

/// The formats, by the name suffix that marks a module as quantized, and the tensor of
/// the module that stands for it as a layer.
const MARKERS: &[(&str, Format)] = &[
    (".qweight", Format::GptqAwq),
    (".qzeros", Format::GptqAwq),
    (".g_idx", Format::GptqAwq),
    (".SCB", Format::BnbInt8),
    (".weight_format", Format::BnbInt8),
    (".weight.absmax", Format::Bnb4),
    (".weight.quant_map", Format::Bnb4),
    (".weight.nested_absmax", Format::Bnb4),
    (".weight.nested_quant_map", Format::Bnb4),
    (".weight.quant_state.bitsandbytes__nf4", Format::Bnb4),
    (".weight.quant_state.bitsandbytes__fp4", Format::Bnb4),
    (".weight_packed", Format::CompressedPacked),
    (".q_weight", Format::Exl2),
    (".q_invperm", Format::Exl2),
    (".W_q", Format::Hqq),
    (".codebooks", Format::Aqlm),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Format {
    GptqAwq,
    BnbInt8,
    Bnb4,
    CompressedPacked,
    Exl2,
    Hqq,
    Aqlm,
    Int8,
}

impl Format {
    /// The tensor (suffix of the module name) whose layer stands for the module.
    fn main_tensor(self) -> &'static str {
        match self {
            Format::GptqAwq => ".qweight",
            Format::BnbInt8 | Format::Bnb4 | Format::Int8 => ".weight",
            Format::CompressedPacked => ".weight_packed",
            Format::Exl2 => ".q_weight",
            Format::Hqq => ".W_q",
            Format::Aqlm => ".codes",
        }
    }
}

/// A quantized module: the format's name and what it stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    /// The layer (module) name.
    pub module: String,
    /// "GPTQ", "bitsandbytes LLM.int8()", ... (the message says "holds <format> quantized
    /// weights").
    pub format: String,
    /// What the module stores, for the message ("4-bit integers packed in int32 words").
    pub what: &'static str,
}

impl Packed {
    /// The module as a layer: one matrix of the stored shape (for listing only: it is
    /// refused when chosen).
    pub fn source(&self, t: &TensorEntry) -> Option<Source> {
        let (rows, cols) = dense::matrix_dims(&t.shape).unwrap_or((1, &[]));
        Some(Source::new(self.module.clone(), None, rows, cols))
    }

    /// Why a layer of this module cannot be scanned, and what to do instead.
    pub fn refusal(&self, t: &TensorEntry, kind: &str) -> String {
        format!(
            "tensor {:?} ({}) holds {} quantized weights ({}): spectrum-rs does not dequantize {}, and the SNR of packed integers would mean nothing; scan the unquantized base model this checkpoint was made from instead (or exclude its type {kind:?})",
            t.name,
            dtype_name(t.dtype),
            self.format,
            self.what,
            self.format
        )
    }
}

/// The quantized modules of a model: weight tensor index -> its module, from the names
/// of its tensors (and, to name GPTQ or AWQ, `quant_method` from the config).
pub fn detect(
    tensors: &[TensorEntry],
    by_name: &HashMap<String, usize>,
    quant_method: Option<&str>,
) -> HashMap<usize, Packed> {
    // module -> (format, any tensor of it), deterministic.
    let mut modules: BTreeMap<String, (Format, usize)> = BTreeMap::new();
    for (ti, t) in tensors.iter().enumerate() {
        let found = MARKERS.iter().find_map(|(suffix, f)| t.name.strip_suffix(suffix).map(|m| (m, *f)));
        let found = found.or_else(|| {
            (t.dtype == Dtype::I8).then(|| t.name.strip_suffix(".weight").map(|m| (m, Format::Int8))).flatten()
        });
        if let Some((module, format)) = found {
            let entry = modules.entry(module.to_string()).or_insert((format, ti));
            // A more specific marker wins over plain int8 (bitsandbytes' int8 weight).
            if entry.0 == Format::Int8 && format != Format::Int8 {
                *entry = (format, ti);
            }
        }
    }
    let method = quant_method.map(|m| m.to_ascii_lowercase());
    modules
        .into_iter()
        .map(|(module, (format, any))| {
            let main = by_name.get(&format!("{module}{}", format.main_tensor())).copied().unwrap_or(any);
            let has = |suffix: &str| by_name.contains_key(&format!("{module}{suffix}"));
            let (name, what) = match format {
                Format::GptqAwq => {
                    let name = if has(".g_idx") || method.as_deref() == Some("gptq") {
                        "GPTQ"
                    } else if method.as_deref() == Some("awq") {
                        "AWQ"
                    } else {
                        "AWQ or GPTQ"
                    };
                    (name.to_string(), "integers packed in int32 words, with qzeros and scales")
                }
                Format::BnbInt8 => ("bitsandbytes LLM.int8()".to_string(), "int8 weights with SCB row scales"),
                Format::Bnb4 => {
                    let kind = if has(".weight.quant_state.bitsandbytes__fp4") { "FP4" } else { "NF4" };
                    (format!("bitsandbytes 4-bit ({kind})"), "4-bit codes packed in uint8, with absmax and quant_map")
                }
                Format::CompressedPacked => {
                    ("compressed-tensors packed".to_string(), "integers packed in weight_packed, with scales")
                }
                Format::Exl2 => ("EXL2".to_string(), "packed q_weight with q_scale and q_invperm"),
                Format::Hqq => ("HQQ".to_string(), "packed W_q with its meta"),
                Format::Aqlm => ("AQLM".to_string(), "codes into codebooks"),
                Format::Int8 => {
                    let name = match method.as_deref() {
                        Some(m) if !m.is_empty() => format!("int8 ({m})"),
                        _ => "int8".to_string(),
                    };
                    (name, "8-bit integers")
                }
            };
            (main, Packed { module, format: name, what })
        })
        .collect()
}
