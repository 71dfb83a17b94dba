//! Layer names and layer types (SPEC §1), and matching of user patterns against them.

/// The layer name of a weight tensor: the tensor name without its trailing `.weight`.
pub fn layer_name(tensor_name: &str) -> &str {
    tensor_name.strip_suffix(".weight").unwrap_or(tensor_name)
}

/// The type of a layer (SPEC §1, parity with the reference tool): everything after the
/// first dot-separated part made only of digits; the whole name when there is none.
pub fn layer_type(layer: &str) -> String {
    let parts: Vec<&str> = layer.split('.').collect();
    match parts
        .iter()
        .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        // A name that ends with its number part gets the empty type, as in the reference.
        Some(i) => parts[i + 1..].join("."),
        None => layer.to_string(),
    }
}

/// True when `pattern` names this layer: equal to its type or its name, or a glob
/// (`*`, `?`, `[...]`) matching either.
pub fn matches(pattern: &str, layer: &str, kind: &str) -> bool {
    pattern == kind
        || pattern == layer
        || glob_match::glob_match(pattern, kind)
        || glob_match::glob_match(pattern, layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_the_first_number_part() {
        assert_eq!(layer_type("model.layers.3.self_attn.q_proj"), "self_attn.q_proj");
        assert_eq!(
            layer_type("model.layers.0.mlp.experts.7.down_proj"),
            "mlp.experts.7.down_proj"
        );
        assert_eq!(layer_type("lm_head"), "lm_head");
        assert_eq!(layer_type("model.embed_tokens"), "model.embed_tokens");
        assert_eq!(
            layer_type("encoder.layer.11.attention.output.dense"),
            "attention.output.dense"
        );
        assert_eq!(layer_type("h.2x.attn"), "h.2x.attn");
        assert_eq!(layer_type("net.0"), "");
    }

    #[test]
    fn layer_names_drop_weight_suffix_only() {
        assert_eq!(layer_name("model.norm.weight"), "model.norm");
        assert_eq!(layer_name("model.layers.0.mlp.experts.gate_up_proj"), "model.layers.0.mlp.experts.gate_up_proj");
    }

    #[test]
    fn patterns_match_types_names_and_globs() {
        let l = "model.layers.3.self_attn.q_proj";
        assert!(matches("self_attn.q_proj", l, "self_attn.q_proj"));
        assert!(matches("self_attn.*", l, "self_attn.q_proj"));
        assert!(matches("*q_proj", l, "self_attn.q_proj"));
        assert!(matches("model.layers.3.*", l, "self_attn.q_proj"));
        assert!(!matches("mlp.*", l, "self_attn.q_proj"));
        assert!(!matches("q_proj", l, "self_attn.q_proj"));
    }
}
