//! The `filter` query parameter of `instances.list`, the subset a label-driven client sends.
//!
//! Accepted: terms `FIELD OP VALUE` joined by whitespace or `AND` (both mean AND in Compute
//! Engine), each optionally in parentheses, where FIELD is `name`, `status` or `labels.KEY`,
//! OP is `=` or `!=` (spaces around it optional), and VALUE is bare or double-quoted (with
//! `\"` and `\\` escapes). Also `labels.KEY:*` ("has the label").
//!
//! Refused with a 400, so a test finds out instead of getting a wrong list: `OR`, `NOT`/`-`,
//! the legacy regular-expression syntax (`eq`, `ne`), other fields and other operators.
//! Compute Engine compares `=` exactly for these fields, which is what happens here.

use std::collections::BTreeMap;

/// One comparison of the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Term {
    pub field: Field,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Status,
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    /// `labels.KEY:*`: the label is set, whatever its value.
    Has,
}

/// What a term is matched against.
pub(crate) struct Subject<'a> {
    pub name: &'a str,
    pub status: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// All terms must hold (an empty filter matches everything).
pub(crate) fn matches(terms: &[Term], subject: &Subject<'_>) -> bool {
    terms.iter().all(|term| {
        let actual = match &term.field {
            Field::Name => Some(subject.name),
            Field::Status => Some(subject.status),
            Field::Label(key) => subject.labels.get(key).map(String::as_str),
        };
        match term.op {
            Op::Eq => actual == Some(term.value.as_str()),
            Op::Ne => actual != Some(term.value.as_str()),
            Op::Has => actual.is_some(),
        }
    })
}

/// Parses a filter; the error says what was not understood.
pub(crate) fn parse(filter: &str) -> Result<Vec<Term>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut pos = 0;
    let mut terms = Vec::new();
    loop {
        skip_separators(&chars, &mut pos);
        if pos >= chars.len() {
            return Ok(terms);
        }
        let word_end = scan_field(&chars, pos);
        let word: String = chars[pos..word_end].iter().collect();
        let followed_by_separator = chars
            .get(word_end)
            .is_none_or(|c| c.is_whitespace() || *c == '(' || *c == ')');
        if followed_by_separator && word.eq_ignore_ascii_case("AND") {
            pos = word_end;
            continue;
        }
        if followed_by_separator && (word.eq_ignore_ascii_case("OR") || word == "NOT") {
            return Err(format!("'{word}' is not supported by the fake"));
        }
        if word.is_empty() {
            return Err(format!("unexpected '{}' at {pos}", chars[pos]));
        }
        let field = match word.as_str() {
            "name" => Field::Name,
            "status" => Field::Status,
            _ => match word.strip_prefix("labels.") {
                Some(key) if !key.is_empty() => Field::Label(key.to_string()),
                _ => return Err(format!("unsupported field '{word}'")),
            },
        };
        pos = word_end;
        skip_spaces(&chars, &mut pos);
        let op = match (chars.get(pos), chars.get(pos + 1)) {
            (Some('!'), Some('=')) => {
                pos += 2;
                Op::Ne
            }
            (Some('='), _) => {
                pos += 1;
                Op::Eq
            }
            (Some(':'), _) => {
                pos += 1;
                Op::Has
            }
            _ => return Err(format!("expected '=', '!=' or ':' after '{word}'")),
        };
        skip_spaces(&chars, &mut pos);
        let value = scan_value(&chars, &mut pos)?;
        if op == Op::Has && (value != "*" || !matches!(field, Field::Label(_))) {
            return Err("':' is supported only as 'labels.KEY:*'".to_string());
        }
        terms.push(Term { field, op, value });
    }
}

fn skip_spaces(chars: &[char], pos: &mut usize) {
    while chars.get(*pos).is_some_and(|c| c.is_whitespace()) {
        *pos += 1;
    }
}

fn skip_separators(chars: &[char], pos: &mut usize) {
    while chars
        .get(*pos)
        .is_some_and(|c| c.is_whitespace() || *c == '(' || *c == ')')
    {
        *pos += 1;
    }
}

fn scan_field(chars: &[char], mut pos: usize) -> usize {
    while chars
        .get(pos)
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        pos += 1;
    }
    pos
}

fn scan_value(chars: &[char], pos: &mut usize) -> Result<String, String> {
    let mut value = String::new();
    if chars.get(*pos) == Some(&'"') {
        *pos += 1;
        loop {
            match chars.get(*pos) {
                None => return Err("unterminated quoted value".to_string()),
                Some('"') => {
                    *pos += 1;
                    return Ok(value);
                }
                Some('\\') => {
                    let escaped = chars
                        .get(*pos + 1)
                        .ok_or_else(|| "dangling '\\' in quoted value".to_string())?;
                    value.push(*escaped);
                    *pos += 2;
                }
                Some(c) => {
                    value.push(*c);
                    *pos += 1;
                }
            }
        }
    }
    while let Some(c) = chars.get(*pos) {
        if c.is_whitespace() || *c == '(' || *c == ')' {
            break;
        }
        value.push(*c);
        *pos += 1;
    }
    if value.is_empty() {
        return Err("missing value".to_string());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_eq(key: &str, value: &str) -> Term {
        Term {
            field: Field::Label(key.to_string()),
            op: Op::Eq,
            value: value.to_string(),
        }
    }

    #[test]
    fn the_label_forms_a_client_sends_all_parse_to_the_same_terms() {
        let cases = [
            "labels.pool = warm",
            "labels.pool=warm",
            "labels.pool = \"warm\"",
            "(labels.pool = \"warm\")",
            "  labels.pool=\"warm\"  ",
        ];
        for filter in cases {
            assert_eq!(
                parse(filter),
                Ok(vec![label_eq("pool", "warm")]),
                "{filter}"
            );
        }
    }

    #[test]
    fn terms_join_with_spaces_or_and() {
        let expected = Ok(vec![label_eq("pool", "warm"), label_eq("owner", "wp-1")]);
        for filter in [
            "labels.pool = warm labels.owner = wp-1",
            "labels.pool=warm AND labels.owner=wp-1",
            "(labels.pool = \"warm\") AND (labels.owner = \"wp-1\")",
            "(labels.pool = \"warm\") (labels.owner = \"wp-1\")",
            "labels.pool = \"warm\" and labels.owner = \"wp-1\"",
        ] {
            assert_eq!(parse(filter), expected, "{filter}");
        }
    }

    #[test]
    fn other_fields_operators_and_quoting() {
        assert_eq!(
            parse("name != \"a \\\"b\\\"\" status = RUNNING labels.x:*"),
            Ok(vec![
                Term {
                    field: Field::Name,
                    op: Op::Ne,
                    value: "a \"b\"".to_string()
                },
                Term {
                    field: Field::Status,
                    op: Op::Eq,
                    value: "RUNNING".to_string()
                },
                Term {
                    field: Field::Label("x".to_string()),
                    op: Op::Has,
                    value: "*".to_string()
                },
            ])
        );
        assert_eq!(parse(""), Ok(vec![]));
    }

    #[test]
    fn unsupported_syntax_is_refused_not_ignored() {
        for filter in [
            "labels.a = b OR labels.c = d",
            "NOT labels.a = b",
            "labels.a eq b",
            "zone = us-central1-a",
            "labels.a = \"b",
            "labels.a =",
            "labels.a > 3",
            "name:*",
            "labels. = x",
        ] {
            assert!(parse(filter).is_err(), "{filter} should be refused");
        }
    }

    #[test]
    fn matching_needs_every_term() {
        let labels = BTreeMap::from([("pool".to_string(), "warm".to_string())]);
        let subject = Subject {
            name: "vm-1",
            status: "RUNNING",
            labels: &labels,
        };
        let yes = parse("labels.pool = warm status = RUNNING").unwrap_or_default();
        let no = parse("labels.pool = warm labels.owner = x").unwrap_or_default();
        let ne_missing = parse("labels.owner != x").unwrap_or_default();
        assert!(matches(&yes, &subject));
        assert!(!matches(&no, &subject));
        assert!(matches(&ne_missing, &subject));
        assert!(matches(&[], &subject));
    }
}
