//! "Did you mean" from edit distance. A case-only difference always wins,
//! since everything in a blueprint is case-sensitive (SPEC section 1).

/// The closest candidate to `wrong`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = wrong.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for cand in candidates {
        if cand == wrong {
            continue;
        }
        if cand.to_lowercase() == lower {
            return Some(cand);
        }
        let dist = strsim::damerau_levenshtein(&lower, &cand.to_lowercase());
        let limit = (wrong.chars().count().max(cand.chars().count()) / 3).max(1);
        if dist <= limit && best.is_none_or(|(d, _)| dist < d) {
            best = Some((dist, cand));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn finds_typos_and_case_mismatches() {
        let ops = ["WithSampleRate", "WithRateLimit", "FilterType", "Filter"];
        assert_eq!(did_you_mean("WithSampelRate", ops), Some("WithSampleRate"));
        assert_eq!(did_you_mean("filtertype", ops), Some("FilterType"));
        assert_eq!(did_you_mean("Filtr", ops), Some("Filter"));
        assert_eq!(did_you_mean("Completely", ops), None);
    }
}
