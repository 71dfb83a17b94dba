//! Per-type ranking and top-percent selection (docs/method.md §3).

use std::collections::BTreeMap;

/// Orders `a` before `b` when its SNR is higher; NaN ranks after every number.
fn by_snr_desc(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Groups layers by type (types in sorted order) and orders each group by SNR, highest
/// first. The sort is stable, so ties keep model order. Returns indices into the inputs.
pub fn rank_by_type(types: &[String], snrs: &[f64]) -> Vec<(String, Vec<usize>)> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in types.iter().enumerate() {
        groups.entry(t.as_str()).or_default().push(i);
    }
    groups
        .into_iter()
        .map(|(t, mut idx)| {
            idx.sort_by(|&a, &b| by_snr_desc(snrs[a], snrs[b]));
            (t.to_string(), idx)
        })
        .collect()
}

/// How many layers of a type of `count` layers are kept: `int(count * top_percent / 100)`,
/// as the reference computes it.
pub fn keep_count(count: usize, top_percent: f64) -> usize {
    let k = (count as f64 * top_percent / 100.0).floor();
    if k.is_nan() || k <= 0.0 {
        0
    } else {
        (k as usize).min(count)
    }
}

/// For each layer, whether it is in the top `top_percent` of its type.
pub fn select_top(types: &[String], snrs: &[f64], top_percent: f64) -> Vec<bool> {
    let mut keep = vec![false; types.len()];
    for (_, idx) in rank_by_type(types, snrs) {
        for &i in idx.iter().take(keep_count(idx.len(), top_percent)) {
            keep[i] = true;
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ranks_per_type_with_stable_ties_and_nan_last() {
        let types = s(&["b", "a", "b", "a", "b", "b"]);
        let snrs = [1.0, 0.5, f64::NAN, 0.7, 3.0, 1.0];
        let r = rank_by_type(&types, &snrs);
        assert_eq!(r, vec![("a".into(), vec![3, 1]), ("b".into(), vec![4, 0, 5, 2])]);
    }

    #[test]
    fn keeps_int_of_count_times_percent() {
        assert_eq!(keep_count(7, 25.0), 1);
        assert_eq!(keep_count(8, 25.0), 2);
        assert_eq!(keep_count(3, 50.0), 1);
        assert_eq!(keep_count(3, 100.0), 3);
        assert_eq!(keep_count(3, 0.0), 0);
        let types = s(&["t"; 4]);
        assert_eq!(select_top(&types, &[0.1, 0.4, 0.3, 0.2], 50.0), vec![false, true, true, false]);
    }
}
