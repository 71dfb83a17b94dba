//! Layer names and layer types (docs/method.md §1), matching of user patterns against them, and the
//! natural (model) order of names.

/// The layer name of a weight tensor: the tensor name without its trailing `.weight`.
pub fn layer_name(tensor_name: &str) -> &str {
    tensor_name.strip_suffix(".weight").unwrap_or(tensor_name)
}

/// The type of a layer (docs/method.md §1, parity with the reference tool): everything after the
/// first dot-separated part made only of digits; the whole name when there is none.
pub fn layer_type(layer: &str) -> String {
    let parts: Vec<&str> = layer.split('.').collect();
    match parts.iter().position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
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

/// Natural order of names: runs of digits compare as numbers (`layers.2` < `layers.10`),
/// which is the order the layers have in the model.
pub fn natural_key(s: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let digit = bytes[i].is_ascii_digit();
        while i < bytes.len() && bytes[i].is_ascii_digit() == digit {
            i += 1;
        }
        // Runs split between an ASCII digit and anything else, so at char boundaries.
        let run = &s[start..i];
        if digit {
            key.push((0, run.parse::<u128>().unwrap_or(u128::MAX), run.to_string()));
        } else if run.starts_with("decoder") {
            // Encoder-decoder models define the encoder first.
            key.push((2, 0, run.to_string()));
        } else {
            key.push((1, 0, run.to_string()));
        }
    }
    key
}

/// Indices that put names in natural order (stable: equal names keep their order).
pub fn natural_order(names: &[String]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by_cached_key(|&i| natural_key(&names[i]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_the_first_number_part() {
        assert_eq!(layer_type("model.layers.3.self_attn.q_proj"), "self_attn.q_proj");
        assert_eq!(layer_type("model.layers.0.mlp.experts.7.down_proj"), "mlp.experts.7.down_proj");
        assert_eq!(layer_type("lm_head"), "lm_head");
        assert_eq!(layer_type("model.embed_tokens"), "model.embed_tokens");
        assert_eq!(layer_type("encoder.layer.11.attention.output.dense"), "attention.output.dense");
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

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        let names: Vec<String> =
            ["model.layers.10.a", "model.layers.2.a", "lm_head", "model.layers.1.b", "model.layers.1.a"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let order: Vec<&str> = natural_order(&names).iter().map(|&i| names[i].as_str()).collect();
        assert_eq!(order, ["lm_head", "model.layers.1.a", "model.layers.1.b", "model.layers.2.a", "model.layers.10.a"]);
        // The encoder comes before the decoder; huge numbers and non-ASCII do not panic.
        let names: Vec<String> = ["decoder.0", "encoder.1", "x.99999999999999999999999999999999999999999", "é1ü"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let order = natural_order(&names);
        assert!(order.iter().position(|&i| i == 1) < order.iter().position(|&i| i == 0));
        assert_eq!(order.len(), 4);
    }
}
