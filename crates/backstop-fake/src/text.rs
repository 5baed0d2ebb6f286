//! Text handling: splitting a reply into stream chunks, and reading the last
//! user message of a request in either format (for `Echo`).

use serde_json::Value;

/// One piece per word, each word keeping the whitespace after it (leading
/// whitespace stays with the first piece).
pub(crate) fn split_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    let mut seen_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else {
            if in_space && seen_word {
                pieces.push(text[start..i].to_string());
                start = i;
            }
            in_space = false;
            seen_word = true;
        }
    }
    if start < text.len() {
        pieces.push(text[start..].to_string());
    }
    pieces
}

/// `n` pieces of about equal length in characters (fewer when the text is shorter).
pub(crate) fn split_even(text: &str, n: usize) -> Vec<String> {
    let chars = text.chars().count();
    if chars == 0 {
        return Vec::new();
    }
    let n = n.clamp(1, chars);
    let mut pieces = Vec::with_capacity(n);
    let mut iter = text.chars();
    for k in 0..n {
        let take = chars * (k + 1) / n - chars * k / n;
        pieces.push(iter.by_ref().take(take).collect());
    }
    pieces
}

/// The text of the last user message, in either format's request body: string
/// content, or the `text` of its `type: "text"` parts/blocks joined with `\n`.
pub(crate) fn last_user_text(body: &Value) -> String {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return gemini_last_user_text(body);
    };
    let Some(last) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Gemini: the `text` parts of the last `user` turn of `contents`, joined with `\n`.
fn gemini_last_user_text(body: &Value) -> String {
    body.get("contents")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter().rev().find(|m| {
                m.get("role").and_then(Value::as_str).unwrap_or("user") == "user"
                    && m.get("parts")
                        .and_then(Value::as_array)
                        .is_some_and(|p| p.iter().any(|p| p.get("text").is_some()))
            })
        })
        .and_then(|m| m.get("parts"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_keep_their_spacing() {
        assert_eq!(split_words("one two  three"), ["one ", "two  ", "three"]);
        assert_eq!(split_words(" lead trail "), [" lead ", "trail "]);
        assert_eq!(split_words(""), Vec::<String>::new());
        assert_eq!(split_words("héllo 🌍"), ["héllo ", "🌍"]);
    }

    #[test]
    fn even_split_on_char_boundaries() {
        assert_eq!(split_even("abcdefg", 3), ["ab", "cd", "efg"]);
        assert_eq!(split_even("🌍é", 5), ["🌍", "é"]);
        assert_eq!(split_even("abc", 0), ["abc"]);
        assert_eq!(split_even("", 3), Vec::<String>::new());
    }

    #[test]
    fn last_user_text_in_both_formats() {
        let openai = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}, {"type": "text", "text": "there"}]},
        ]});
        assert_eq!(last_user_text(&openai), "hi\nthere");
        let anthropic = json!({"messages": [{"role": "user", "content": "hello"}]});
        assert_eq!(last_user_text(&anthropic), "hello");
        assert_eq!(last_user_text(&json!({})), "");
        let gemini = json!({"contents": [
            {"role": "user", "parts": [{"text": "q1"}]},
            {"role": "model", "parts": [{"text": "a"}]},
            {"role": "user", "parts": [{"text": "q2"}, {"inlineData": {}}, {"text": "more"}]},
        ]});
        assert_eq!(last_user_text(&gemini), "q2\nmore");
    }
}
