//! Deterministic "extraction" from text, used to fill structured answers.

/// The first word longer than 3 characters that starts with an uppercase letter (surrounding
/// punctuation removed).
pub(crate) fn first_capitalized_word(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|word| word.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|word| word.chars().count() > 3 && word.chars().next().is_some_and(char::is_uppercase))
        .map(str::to_owned)
}

/// The first sentence (up to and including the first `.`, `!` or `?` followed by whitespace or
/// the end), trimmed; the whole trimmed text when there is no sentence end.
pub(crate) fn first_sentence(text: &str) -> String {
    let text = text.trim();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|(_, next)| next.is_whitespace()) {
            return text[..i + c.len_utf8()].to_owned();
        }
    }
    text.to_owned()
}

/// The first integer in the text (a run of ASCII digits, with a directly preceding `-`).
pub(crate) fn first_integer(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let end = bytes[start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |n| start + n);
    let negative = start > 0 && bytes[start - 1] == b'-';
    let digits = &text[start..end];
    let value = digits.parse::<i64>().unwrap_or(i64::MAX);
    Some(if negative { -value } else { value })
}

/// Up to `n` distinct words longer than 4 characters, lowercased, in order of appearance.
pub(crate) fn long_words(text: &str, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if out.len() >= n {
            break;
        }
        if word.chars().count() > 4 {
            let word = word.to_lowercase();
            if !out.contains(&word) {
                out.push(word);
            }
        }
    }
    out
}

/// The first `n` characters of `text`.
pub(crate) fn prefix(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Rough token count: characters / 4, rounded up.
pub(crate) fn tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

/// The value of a `Key: value` line (case-insensitive key, optional list bullet).
pub(crate) fn labelled_line(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim().trim_start_matches(['-', '*', '•']).trim_start();
        let (label, value) = line.split_once(':')?;
        (label.trim().eq_ignore_ascii_case(key) && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_rules() {
        let text = "the Quick fox. In Paris, 42 people need 7 Tickets!";
        assert_eq!(first_capitalized_word(text).as_deref(), Some("Quick"));
        assert_eq!(first_capitalized_word("a b THE end"), None);
        assert_eq!(first_sentence(text), "the Quick fox.");
        assert_eq!(first_sentence("version 1.5 is out"), "version 1.5 is out");
        assert_eq!(first_integer(text), Some(42));
        assert_eq!(first_integer("from -5 to 3"), Some(-5));
        assert_eq!(first_integer("none"), None);
        assert_eq!(
            long_words("Paris paris Tickets, people Quick zebras", 3),
            ["paris", "tickets", "people"]
        );
        assert_eq!(prefix("héllo", 2), "hé");
        assert_eq!(tokens("abcde"), 2);
        assert_eq!(
            labelled_line("You write.\nTone: playful \n- audience: kids", "tone").as_deref(),
            Some("playful")
        );
        assert_eq!(
            labelled_line("You write.\n- Audience: kids", "audience").as_deref(),
            Some("kids")
        );
    }
}
