//! Layer types (docs/method.md §1.2, docs/layouts.md). By default a type is the
//! reference's (`naming::layer_type`): everything after the first number, so every
//! expert index is a type of its own (`mlp.experts.7.down_proj`). Two options regroup
//! them, both building on that type:
//!
//! * `group_experts`: the expert index becomes `*`, so that one type holds every expert
//!   of one projection and selection ranks experts against each other:
//!   `block_sparse_moe.experts.*.w1`, `mlp.experts.*.down_proj`, and, for stacked
//!   experts, `mlp.experts.gate_up_proj.*`. Only a number right after an `experts` part
//!   (or the index of a stacked expert) is an expert index: T5's `layer.1` stays.
//! * `GroupBy::Stack`: the stack the layer is in (the name before its first number) is
//!   part of the type, `model.vision_tower.encoder.layers.*.self_attn.q_proj` apart from
//!   `model.language_model.layers.*.self_attn.q_proj`, `encoder.block.*...` apart from
//!   `decoder.block.*...`.
//!
//! A grouped type is also a glob that matches its own layers' names.

use crate::error::{Result, SpectrumError};
use crate::layout::Options;
use crate::naming::layer_type;

/// Which layers share a type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// The reference's types: what follows the first number.
    #[default]
    Type,
    /// The stack (the name before the first number) and the type.
    Stack,
}

impl GroupBy {
    /// `"type"` or `"stack"`.
    pub fn parse(s: &str) -> Result<GroupBy> {
        match s {
            "type" => Ok(GroupBy::Type),
            "stack" => Ok(GroupBy::Stack),
            _ => Err(SpectrumError::input(format!("group_by must be 'type' or 'stack', got {s:?}"))),
        }
    }
}

fn is_number(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

/// The type of layer `name` under `options`; `stacked`: the name ends with the index of
/// a stacked expert (`<tensor>.<e>`).
pub fn layer_kind(name: &str, stacked: bool, options: &Options) -> String {
    let kind = layer_type(name);
    let kind = if options.group_experts { group_experts(&kind, stacked) } else { kind };
    match options.group_by {
        GroupBy::Type => kind,
        GroupBy::Stack => {
            let parts: Vec<&str> = name.split('.').collect();
            match parts.iter().position(|p| is_number(p)) {
                // `layer_type` is what follows that number.
                Some(i) if kind.is_empty() => format!("{}.*", parts[..i].join(".")),
                Some(i) => format!("{}.*.{kind}", parts[..i].join(".")),
                None => kind,
            }
        }
    }
}

/// A type with its expert indices replaced by `*`.
fn group_experts(kind: &str, stacked: bool) -> String {
    let mut parts: Vec<&str> = kind.split('.').collect();
    for i in 1..parts.len() {
        if parts[i - 1] == "experts" && is_number(parts[i]) {
            parts[i] = "*";
        }
    }
    if stacked {
        if let Some(last) = parts.last_mut() {
            if is_number(last) {
                *last = "*";
            }
        }
    }
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str, stacked: bool, group_experts: bool, group_by: GroupBy) -> String {
        layer_kind(name, stacked, &Options { group_experts, group_by, ..Options::default() })
    }

    #[test]
    fn reference_types_by_default() {
        let t = |n: &str, s: bool| kind(n, s, false, GroupBy::Type);
        assert_eq!(t("model.layers.0.block_sparse_moe.experts.7.w1", false), "block_sparse_moe.experts.7.w1");
        assert_eq!(t("model.layers.0.mlp.experts.gate_up_proj.5", true), "mlp.experts.gate_up_proj.5");
        assert_eq!(t("encoder.block.0.layer.1.DenseReluDense.wi", false), "layer.1.DenseReluDense.wi");
    }

    #[test]
    fn grouped_experts() {
        let g = |n: &str, s: bool| kind(n, s, true, GroupBy::Type);
        assert_eq!(g("model.layers.0.block_sparse_moe.experts.7.w1", false), "block_sparse_moe.experts.*.w1");
        assert_eq!(g("model.layers.3.mlp.experts.63.down_proj", false), "mlp.experts.*.down_proj");
        assert_eq!(g("model.layers.0.mlp.experts.gate_up_proj.5", true), "mlp.experts.gate_up_proj.*");
        // Not expert indices: T5's sub-layer number, shared experts, the router.
        assert_eq!(g("encoder.block.0.layer.1.DenseReluDense.wi", false), "layer.1.DenseReluDense.wi");
        assert_eq!(g("model.layers.1.mlp.shared_experts.up_proj", false), "mlp.shared_experts.up_proj");
        assert_eq!(g("model.layers.1.mlp.gate", false), "mlp.gate");
        // A grouped type is a glob of its layers' types.
        assert!(glob_match::glob_match("mlp.experts.*.down_proj", "mlp.experts.12.down_proj"));
    }

    #[test]
    fn stacks_apart() {
        let s = |n: &str, e: bool| kind(n, false, e, GroupBy::Stack);
        assert_eq!(
            s("model.vision_tower.encoder.layers.3.self_attn.q_proj", false),
            "model.vision_tower.encoder.layers.*.self_attn.q_proj"
        );
        assert_eq!(
            s("model.language_model.layers.3.self_attn.q_proj", false),
            "model.language_model.layers.*.self_attn.q_proj"
        );
        assert_eq!(s("decoder.block.2.layer.0.SelfAttention.q", false), "decoder.block.*.layer.0.SelfAttention.q");
        assert_eq!(s("model.layers.0.mlp.experts.7.down_proj", true), "model.layers.*.mlp.experts.*.down_proj");
        assert_eq!(s("lm_head", false), "lm_head");
        assert_eq!(s("net.0", false), "net.*");
        assert_eq!(GroupBy::parse("stack").unwrap(), GroupBy::Stack);
        assert!(GroupBy::parse("layer").unwrap_err().to_string().contains("'type' or 'stack'"));
    }
}
