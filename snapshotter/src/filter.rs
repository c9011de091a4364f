//! containerd's filter syntax (`filters/parser.go`) for `List`: a request's
//! filters are alternatives; each is a comma-separated list of selectors that
//! must all hold. A selector is a field path, then an operator and a value, or
//! nothing (the field must be present):
//!
//! ```text
//! selector  := fieldpath (operator value)?
//! fieldpath := field ('.' field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! ```
//!
//! Quotes are `"` (Go's escapes), `/` or `|` (raw). Fields are matched as
//! containerd's snapshot adaptor does: `kind`, `name`, `parent`, and
//! `labels.<key>` (the rest of the path, joined with dots, is the key).

use std::collections::BTreeMap;

use regex::Regex;

use crate::meta::Kind;
use crate::snapshotter::Info;

/// Parsed filters: any alternative whose selectors all hold matches; no
/// alternatives match everything.
#[derive(Debug)]
pub struct Filter(Vec<Vec<Selector>>);

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filter {
    /// Parses a request's filters; the error says which and where.
    pub fn parse(filters: &[String]) -> Result<Filter, String> {
        let alternatives = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| {
                Parser::new(f)
                    .selectors()
                    .map_err(|e| format!("filter {f:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter(alternatives))
    }

    /// Whether `info` passes.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty() || self.0.iter().any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let (value, present) = field(info, &self.path);
        match &self.op {
            Op::Present => present,
            Op::Equal(v) => present && value == *v,
            Op::NotEqual(v) => value != *v,
            Op::Matches(re) => re.is_match(&value),
        }
    }
}

/// containerd's snapshot adaptor: a field's value and whether it is present.
fn field(info: &Info, path: &[String]) -> (String, bool) {
    match path.first().map(String::as_str) {
        Some("kind") => (
            match info.kind {
                Kind::Active => "active",
                Kind::View => "view",
                Kind::Committed => "committed",
            }
            .to_string(),
            true,
        ),
        Some("name") => (info.name.clone(), true),
        Some("parent") => (info.parent.clone(), true),
        Some("labels") => label(&info.labels, &path[1..].join(".")),
        _ => (String::new(), false),
    }
}

fn label(labels: &BTreeMap<String, String>, key: &str) -> (String, bool) {
    match labels.get(key) {
        Some(v) => (v.clone(), true),
        None => (String::new(), false),
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Parser<'a> {
        Parser { s, pos: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, String> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_space();
            match self.bump() {
                None => return Ok(all),
                Some(',') => all.push(self.selector()?),
                Some(c) => return Err(format!("unexpected {c:?} at {}", self.pos - 1)),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.bump();
            path.push(self.field()?);
        }
        self.skip_space();
        let op = match self.peek() {
            None | Some(',') => {
                return Ok(Selector {
                    path,
                    op: Op::Present,
                })
            }
            Some(_) => {
                let at = self.pos;
                let op: String = [self.bump(), self.bump()].into_iter().flatten().collect();
                match op.as_str() {
                    "==" | "!=" | "~=" => op,
                    _ => return Err(format!("expected ==, != or ~= at {at}")),
                }
            }
        };
        let value = self.value()?;
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(
                Regex::new(&value).map_err(|e| format!("bad regular expression {value:?}: {e}"))?,
            ),
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, String> {
        self.skip_space();
        if let Some(q) = self.peek().filter(|&c| is_quote(c)) {
            return self.quoted(q);
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c == '_' || c.is_ascii_alphanumeric())
        {
            self.bump();
        }
        if start == self.pos {
            return Err(format!("expected a field name at {start}"));
        }
        Ok(self.s[start..self.pos].to_string())
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_space();
        if let Some(q) = self.peek().filter(|&c| is_quote(c)) {
            return self.quoted(q);
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c != ',' && !c.is_whitespace()) {
            self.bump();
        }
        if start == self.pos {
            return Err(format!("expected a value at {start}"));
        }
        Ok(self.s[start..self.pos].to_string())
    }

    /// A string in `q` quotes: `"` with Go's common escapes, `/` and `|`
    /// raw but for an escaped closing quote.
    fn quoted(&mut self, q: char) -> Result<String, String> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(format!("unterminated quote at {start}")),
                Some(c) if c == q => return Ok(out),
                Some('\\') => {
                    let Some(e) = self.bump() else {
                        return Err(format!("unterminated quote at {start}"));
                    };
                    let c = match (q, e) {
                        ('"', 'n') => '\n',
                        ('"', 't') => '\t',
                        ('"', 'r') => '\r',
                        ('"', '\\') => '\\',
                        (_, e) if e == q => e,
                        ('"', e) => {
                            return Err(format!("unknown escape \\{e} at {}", self.pos - 2))
                        }
                        (_, e) => {
                            // A raw quote keeps other escapes (a regex's).
                            out.push('\\');
                            e
                        }
                    };
                    out.push(c);
                }
                Some(c) => out.push(c),
            }
        }
    }
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            created: 0,
            updated: 0,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn names(filters: &[&str], all: &[Info]) -> Vec<String> {
        let f = Filter::parse(&filters.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        all.iter()
            .filter(|i| f.matches(i))
            .map(|i| i.name.clone())
            .collect()
    }

    #[test]
    fn containerds_selectors_match_as_its_adaptor_does() {
        let root = ("containerd.io/gc.root", "x");
        let all = [
            info("p", "", Kind::Committed, &[root]),
            info("a", "p", Kind::Active, &[root, ("l", "2")]),
            info("v", "p", Kind::View, &[("l", "3")]),
            info("n", "", Kind::Active, &[]),
        ];
        assert_eq!(names(&[], &all), ["p", "a", "v", "n"]);
        assert_eq!(
            names(&[r#"labels."containerd.io/gc.root"==x"#], &all),
            ["p", "a"]
        );
        assert_eq!(names(&["kind==active"], &all), ["a", "n"]);
        assert_eq!(names(&["name==p", "name==n"], &all), ["p", "n"]);
        assert_eq!(names(&["labels.l"], &all), ["a", "v"]);
        assert_eq!(names(&["labels.l==2,kind==active"], &all), ["a"]);
        assert_eq!(names(&[r#"parent!="""#], &all), ["a", "v"]);
        assert_eq!(names(&["parent==p"], &all), ["a", "v"]);
        assert_eq!(names(&["name~=^[av]$"], &all), ["a", "v"]);
        assert_eq!(names(&["name~=/^(p|n)$/"], &all), ["p", "n"]);
        // Absent labels are not equal to anything, but unequal to all.
        assert_eq!(names(&["labels.l!=2"], &all), ["p", "v", "n"]);
    }

    #[test]
    fn malformed_filters_are_refused_with_where() {
        for (f, want) in [
            ("kind=active", "expected ==, != or ~= at 4"),
            ("kind==", "expected a value at 6"),
            ("labels.\"x", "unterminated quote"),
            (",", "expected a field name at 0"),
            ("name~=(", "bad regular expression"),
            ("kind==a b", "unexpected 'b'"),
        ] {
            let e = Filter::parse(&[f.to_string()]).unwrap_err();
            assert!(e.contains(want), "{f}: {e}");
        }
    }
}
