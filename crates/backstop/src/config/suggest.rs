//! "Did you mean" suggestions by edit distance.

/// Levenshtein distance between two strings, counted in characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate, when it is close enough: at most 2 edits (and fewer edits
/// than the word has characters), or at most a third of the word's length.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let len = word.chars().count();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c == word {
            continue;
        }
        let d = levenshtein(&word.to_lowercase(), &c.to_lowercase());
        let close = (d <= 2 && d < len) || d * 3 <= len;
        if close && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// ` (did you mean "x"?)` or the empty string.
pub fn hint<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match did_you_mean(word, candidates) {
        Some(s) => format!(" (did you mean \"{s}\"?)"),
        None => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("opnai", "openai"), 1);
        assert_eq!(levenshtein("bse_url", "base_url"), 1);
    }

    #[test]
    fn suggestions() {
        let c = ["anthropic", "openai", "openrouter"];
        assert_eq!(did_you_mean("opnai", c), Some("openai"));
        assert_eq!(did_you_mean("antropic", c), Some("anthropic"));
        assert_eq!(did_you_mean("mistral", c), None);
        assert_eq!(did_you_mean("x", ["y"]), None);
        assert_eq!(
            did_you_mean("openai", c),
            None,
            "an exact match is no suggestion"
        );
        assert_eq!(
            hint("bse_url", ["api", "base_url"]),
            " (did you mean \"base_url\"?)"
        );
        assert_eq!(hint("zzzzzz", ["api", "base_url"]), "");
    }
}
