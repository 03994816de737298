//! The mapping expression language: a lexer, a parser that compiles `expr:` strings
//! and `{{ … }}` template placeholders to an AST once, and the evaluator.
//!
//! Evaluation never fails and never panics: a missing attribute or a value that
//! does not fit (a non-number given to `flag`) yields the empty string, and an empty
//! result means "absent". Values are borrowed from the source record whenever the
//! result is a slice of it, so most rules allocate nothing until the final value
//! is stored.

use std::borrow::Cow;
use std::collections::BTreeSet;

use regex::Regex;

use crate::model::SourceAttrs;

/// What a bare name can refer to: users have `key`; groups have `key` and `name`
/// and no other attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    User,
    Group,
}

/// The record an expression is evaluated against.
pub(crate) struct Record<'a> {
    pub key: &'a str,
    /// The group's name; empty for users.
    pub name: &'a str,
    pub attrs: &'a SourceAttrs,
    /// Group memberships for `member_of` scope clauses (empty for groups).
    pub memberships: &'a super::assign::Memberships<'a>,
}

/// A compiled expression.
#[derive(Debug)]
pub(crate) enum Expr {
    Lit(Box<str>),
    /// A source attribute: its first non-empty value.
    Attr(Box<str>),
    Key,
    Name,
    Lower(Box<Expr>),
    Upper(Box<Expr>),
    Trim(Box<Expr>),
    Join(Box<Expr>, Vec<Expr>),
    Split(Box<Expr>, Box<Expr>, i64),
    Replace(Box<[Expr; 3]>),
    Coalesce(Vec<Expr>),
    If(Box<[Expr; 3]>),
    Eq(Box<[Expr; 2]>),
    Ne(Box<[Expr; 2]>),
    Present(Box<Expr>),
    Matches(Box<Expr>, Regex),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Flag(Box<Expr>, u64),
    /// A `{{ … }}` template: literal text and placeholders.
    Template(Vec<Expr>),
}

const TRUE: &str = "true";

fn truth(b: bool) -> Cow<'static, str> {
    Cow::Borrowed(if b { TRUE } else { "" })
}

/// Narrows a value to a slice of itself without copying when it is borrowed.
fn narrow<'a>(value: Cow<'a, str>, f: impl for<'x> FnOnce(&'x str) -> &'x str) -> Cow<'a, str> {
    match value {
        Cow::Borrowed(s) => Cow::Borrowed(f(s)),
        Cow::Owned(s) => {
            let part = f(&s);
            if part.len() == s.len() {
                Cow::Owned(s)
            } else {
                Cow::Owned(part.to_owned())
            }
        }
    }
}

impl Expr {
    pub(crate) fn eval<'a>(&'a self, rec: &Record<'a>) -> Cow<'a, str> {
        match self {
            Expr::Lit(s) => Cow::Borrowed(s),
            Expr::Attr(name) => Cow::Borrowed(rec.attrs.first(name).unwrap_or("")),
            Expr::Key => Cow::Borrowed(rec.key),
            Expr::Name => Cow::Borrowed(rec.name),
            Expr::Lower(e) => {
                let v = e.eval(rec);
                if v.is_ascii() {
                    if v.bytes().any(|b| b.is_ascii_uppercase()) {
                        Cow::Owned(v.to_ascii_lowercase())
                    } else {
                        v
                    }
                } else {
                    Cow::Owned(v.to_lowercase())
                }
            }
            Expr::Upper(e) => {
                let v = e.eval(rec);
                if v.is_ascii() {
                    if v.bytes().any(|b| b.is_ascii_lowercase()) {
                        Cow::Owned(v.to_ascii_uppercase())
                    } else {
                        v
                    }
                } else {
                    Cow::Owned(v.to_uppercase())
                }
            }
            Expr::Trim(e) => narrow(e.eval(rec), str::trim),
            Expr::Join(sep, parts) => {
                let mut values = parts.iter().map(|p| p.eval(rec)).filter(|v| !v.is_empty());
                let Some(first) = values.next() else {
                    return Cow::Borrowed("");
                };
                let Some(second) = values.next() else {
                    return first;
                };
                let sep = sep.eval(rec);
                let mut out = String::with_capacity(first.len() + sep.len() + second.len());
                out.push_str(&first);
                out.push_str(&sep);
                out.push_str(&second);
                for v in values {
                    out.push_str(&sep);
                    out.push_str(&v);
                }
                Cow::Owned(out)
            }
            Expr::Split(value, sep, index) => {
                let sep = sep.eval(rec);
                let value = value.eval(rec);
                if sep.is_empty() {
                    return value;
                }
                let index = *index;
                // Counted without negation, so even i64::MIN can't overflow.
                let nth = usize::try_from(index.unsigned_abs()).unwrap_or(usize::MAX);
                narrow(value, |s| {
                    let piece = if index >= 0 {
                        s.split(&*sep).nth(nth)
                    } else {
                        s.rsplit(&*sep).nth(nth - 1)
                    };
                    piece.unwrap_or("")
                })
            }
            Expr::Replace(args) => {
                let [value, from, to] = &**args;
                let value = value.eval(rec);
                let from = from.eval(rec);
                if from.is_empty() || !value.contains(&*from) {
                    return value;
                }
                Cow::Owned(value.replace(&*from, &to.eval(rec)))
            }
            Expr::Coalesce(options) => options
                .iter()
                .map(|o| o.eval(rec))
                .find(|v| !v.is_empty())
                .unwrap_or(Cow::Borrowed("")),
            Expr::If(args) => {
                let [cond, then, otherwise] = &**args;
                if cond.eval(rec).is_empty() {
                    otherwise.eval(rec)
                } else {
                    then.eval(rec)
                }
            }
            Expr::Eq(args) => truth(args[0].eval(rec) == args[1].eval(rec)),
            Expr::Ne(args) => truth(args[0].eval(rec) != args[1].eval(rec)),
            Expr::Present(e) => truth(!e.eval(rec).is_empty()),
            Expr::Matches(e, re) => truth(re.is_match(&e.eval(rec))),
            Expr::Not(e) => truth(e.eval(rec).is_empty()),
            Expr::And(cs) => truth(cs.iter().all(|c| !c.eval(rec).is_empty())),
            Expr::Or(cs) => truth(cs.iter().any(|c| !c.eval(rec).is_empty())),
            Expr::Flag(e, mask) => {
                let v = e.eval(rec);
                let v = v.trim();
                // AD writes userAccountControl as a decimal that may be negative
                // when read as a signed 32-bit integer.
                let bits = v
                    .parse::<u64>()
                    .ok()
                    .or_else(|| v.parse::<i64>().ok().map(|n| n as u64));
                truth(bits.is_some_and(|b| b & mask != 0))
            }
            Expr::Template(parts) => {
                let mut out = String::new();
                let mut any = false;
                for p in parts {
                    let v = p.eval(rec);
                    if !matches!(p, Expr::Lit(_)) && !v.is_empty() {
                        any = true;
                    }
                    out.push_str(&v);
                }
                if !any {
                    return Cow::Borrowed("");
                }
                let trimmed = out.trim();
                if trimmed.len() != out.len() {
                    out = trimmed.to_owned();
                }
                Cow::Owned(out)
            }
        }
    }

    /// Adds every source attribute this expression reads.
    pub(crate) fn collect_attrs(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Attr(name) => {
                out.insert(name.to_string());
            }
            Expr::Lit(_) | Expr::Key | Expr::Name => {}
            Expr::Lower(e)
            | Expr::Upper(e)
            | Expr::Trim(e)
            | Expr::Present(e)
            | Expr::Matches(e, _)
            | Expr::Not(e)
            | Expr::Flag(e, _) => e.collect_attrs(out),
            Expr::Join(sep, parts) => {
                sep.collect_attrs(out);
                parts.iter().for_each(|p| p.collect_attrs(out));
            }
            Expr::Split(a, b, _) => {
                a.collect_attrs(out);
                b.collect_attrs(out);
            }
            Expr::Replace(args) | Expr::If(args) => args.iter().for_each(|p| p.collect_attrs(out)),
            Expr::Eq(args) | Expr::Ne(args) => args.iter().for_each(|p| p.collect_attrs(out)),
            Expr::Coalesce(v) | Expr::And(v) | Expr::Or(v) | Expr::Template(v) => {
                v.iter().for_each(|p| p.collect_attrs(out))
            }
        }
    }
}

/// A compile error inside one expression: `offset` counts characters from the
/// start of the expression text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExprError {
    pub offset: usize,
    pub message: String,
    pub hint: String,
}

/// The functions of the language, for arity checks and hints.
const FUNCTIONS: &[(&str, usize, Option<usize>, &str)] = &[
    ("lower", 1, Some(1), "lower(value)"),
    ("upper", 1, Some(1), "upper(value)"),
    ("trim", 1, Some(1), "trim(value)"),
    ("join", 2, None, "join(separator, value, …)"),
    ("split", 3, Some(3), "split(value, separator, index)"),
    ("replace", 3, Some(3), "replace(value, from, to)"),
    ("coalesce", 1, None, "coalesce(value, …)"),
    ("default", 2, Some(2), "default(value, fallback)"),
    ("first", 1, Some(1), "first(attribute)"),
    ("attr", 1, Some(1), "attr('attribute name')"),
    ("if", 3, Some(3), "if(condition, then, else)"),
    ("eq", 2, Some(2), "eq(a, b)"),
    ("ne", 2, Some(2), "ne(a, b)"),
    ("present", 1, Some(1), "present(value)"),
    ("matches", 2, Some(2), "matches(value, 'regex')"),
    ("not", 1, Some(1), "not(condition)"),
    ("and", 1, None, "and(condition, …)"),
    ("or", 1, None, "or(condition, …)"),
    ("flag", 2, Some(2), "flag(value, mask)"),
];

fn function_names() -> String {
    FUNCTIONS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(i64),
    Open,
    Close,
    Comma,
    End,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

struct Parser<'s> {
    src: &'s str,
    /// Byte position of the next unread character.
    pos: usize,
    kind: RecordKind,
}

impl<'s> Parser<'s> {
    fn error(&self, byte: usize, message: impl Into<String>, hint: impl Into<String>) -> ExprError {
        ExprError {
            offset: self.src[..byte.min(self.src.len())].chars().count(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Returns the next token and the byte offset where it starts.
    fn next(&mut self) -> Result<(Tok, usize), ExprError> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        let start = self.pos + (rest.len() - trimmed.len());
        self.pos = start;
        let Some(c) = trimmed.chars().next() else {
            return Ok((Tok::End, start));
        };
        let tok = match c {
            '(' => Tok::Open,
            ')' => Tok::Close,
            ',' => Tok::Comma,
            '\'' | '"' => {
                let mut out = String::new();
                let mut chars = trimmed[1..].char_indices();
                loop {
                    match chars.next() {
                        None => {
                            return Err(self.error(
                                start,
                                "unterminated string literal",
                                format!("close the string with a matching {c}"),
                            ));
                        }
                        Some((i, q)) if q == c => {
                            self.pos = start + 1 + i + 1;
                            break;
                        }
                        // Only `\\` and `\<quote>` are escapes, so regexes such as
                        // '\d+' need no doubling.
                        Some((_, '\\')) => match chars.clone().next() {
                            Some((_, n)) if n == c || n == '\\' => {
                                out.push(n);
                                chars.next();
                            }
                            _ => out.push('\\'),
                        },
                        Some((_, ch)) => out.push(ch),
                    }
                }
                return Ok((Tok::Str(out), start));
            }
            c if is_ident_char(c) => {
                let len = trimmed
                    .find(|c: char| !is_ident_char(c))
                    .unwrap_or(trimmed.len());
                let word = &trimmed[..len];
                self.pos = start + len;
                return Ok((
                    match word.parse::<i64>() {
                        Ok(n) => Tok::Num(n),
                        Err(_) => Tok::Ident(word.to_owned()),
                    },
                    start,
                ));
            }
            other => {
                return Err(self.error(
                    start,
                    format!("unexpected character `{other}`"),
                    "an expression is a 'string', an attribute name, or a function call such as lower(email); use attr('…') for attribute names with other characters",
                ));
            }
        };
        self.pos = start + c.len_utf8();
        Ok((tok, start))
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let (tok, start) = self.next()?;
        match tok {
            Tok::Str(s) => Ok(Expr::Lit(s.into())),
            Tok::Num(n) => Ok(Expr::Lit(n.to_string().into())),
            Tok::Ident(name) => {
                let save = self.pos;
                let (after, _) = self.next()?;
                if after == Tok::Open {
                    let args = self.args()?;
                    self.call(&name, start, args)
                } else {
                    self.pos = save;
                    self.reference(&name, start)
                }
            }
            Tok::End => Err(self.error(
                start,
                "expected a value, found the end of the expression",
                "write a 'string', an attribute name, or a function call",
            )),
            other => Err(self.error(
                start,
                format!("expected a value, found {}", describe(&other)),
                "write a 'string', an attribute name, or a function call",
            )),
        }
    }

    fn reference(&self, name: &str, start: usize) -> Result<Expr, ExprError> {
        match (name, self.kind) {
            ("key", _) => Ok(Expr::Key),
            ("name", RecordKind::Group) => Ok(Expr::Name),
            (other, RecordKind::Group) => Err(self.error(
                start,
                format!("unknown group attribute `{other}`"),
                "groups have only `name` (the group's name in the source) and `key`",
            )),
            (other, RecordKind::User) => Ok(Expr::Attr(other.into())),
        }
    }

    /// Parses call arguments after `(`, with their start offsets.
    fn args(&mut self) -> Result<Vec<(Expr, usize)>, ExprError> {
        let mut args = Vec::new();
        let save = self.pos;
        if let (Tok::Close, _) = self.next()? {
            return Ok(args);
        }
        self.pos = save;
        loop {
            let rest = &self.src[self.pos..];
            let at = self.pos + (rest.len() - rest.trim_start().len());
            args.push((self.expr()?, at));
            match self.next()? {
                (Tok::Comma, _) => {}
                (Tok::Close, _) => return Ok(args),
                (other, at) => {
                    return Err(self.error(
                        at,
                        format!("expected `,` or `)`, found {}", describe(&other)),
                        "separate arguments with commas and close the call with `)`",
                    ));
                }
            }
        }
    }

    fn call(&self, name: &str, start: usize, args: Vec<(Expr, usize)>) -> Result<Expr, ExprError> {
        let Some(&(_, min, max, usage)) = FUNCTIONS.iter().find(|f| f.0 == name) else {
            let suggestion = FUNCTIONS
                .iter()
                .map(|f| f.0)
                .find(|f| edit_distance(f, name) <= 2)
                .map(|f| format!("did you mean `{f}`? "))
                .unwrap_or_default();
            return Err(self.error(
                start,
                format!("unknown function `{name}`"),
                format!("{suggestion}functions are: {}", function_names()),
            ));
        };
        let n = args.len();
        if n < min || max.is_some_and(|m| n > m) {
            let expected = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            return Err(self.error(
                start,
                format!(
                    "`{name}` takes {expected} argument{}, found {n}",
                    if expected == "1" { "" } else { "s" }
                ),
                format!("usage: {usage}"),
            ));
        }
        let mut args = args.into_iter();
        let mut arg = || args.next().expect("arity checked");
        let one = |e: Expr| Box::new(e);
        Ok(match name {
            "lower" => Expr::Lower(one(arg().0)),
            "upper" => Expr::Upper(one(arg().0)),
            "trim" => Expr::Trim(one(arg().0)),
            "join" => {
                let sep = arg().0;
                Expr::Join(one(sep), args.map(|a| a.0).collect())
            }
            "split" => {
                let (value, sep, (index, at)) = (arg().0, arg().0, arg());
                let Expr::Lit(index) = index else {
                    return Err(self.error(
                        at,
                        "the index of `split` must be a number",
                        "write split(value, ',', 0) for the first part, -1 for the last",
                    ));
                };
                let Ok(index) = index.parse::<i64>() else {
                    return Err(self.error(
                        at,
                        format!("the index of `split` must be a whole number, found '{index}'"),
                        "write split(value, ',', 0) for the first part, -1 for the last",
                    ));
                };
                Expr::Split(one(value), one(sep), index)
            }
            "replace" => Expr::Replace(Box::new([arg().0, arg().0, arg().0])),
            "coalesce" => Expr::Coalesce(args.map(|a| a.0).collect()),
            "default" => Expr::Coalesce(vec![arg().0, arg().0]),
            "first" | "attr" => {
                let (e, at) = arg();
                match (name, e) {
                    ("first", e @ (Expr::Attr(_) | Expr::Key | Expr::Name)) => e,
                    ("attr", Expr::Lit(s)) if self.kind == RecordKind::User => Expr::Attr(s),
                    ("attr", Expr::Lit(s)) => self.reference(&s, at)?,
                    ("first", _) => {
                        return Err(self.error(
                            at,
                            "`first` takes an attribute",
                            "write first(mail) or first(attr('some name'))",
                        ));
                    }
                    _ => {
                        return Err(self.error(
                            at,
                            "`attr` takes an attribute name in quotes",
                            "write attr('Employee ID')",
                        ));
                    }
                }
            }
            "if" => Expr::If(Box::new([arg().0, arg().0, arg().0])),
            "eq" => Expr::Eq(Box::new([arg().0, arg().0])),
            "ne" => Expr::Ne(Box::new([arg().0, arg().0])),
            "present" => Expr::Present(one(arg().0)),
            "matches" => {
                let value = arg().0;
                let (pattern, at) = arg();
                let Expr::Lit(pattern) = pattern else {
                    return Err(self.error(
                        at,
                        "the pattern of `matches` must be a quoted regular expression",
                        "write matches(title, '^Eng')",
                    ));
                };
                let re = Regex::new(&pattern).map_err(|e| {
                    self.error(
                        at,
                        format!("invalid regular expression '{pattern}'"),
                        format!(
                            "fix the pattern (Rust regex syntax): {}",
                            e.to_string().lines().last().unwrap_or_default().trim()
                        ),
                    )
                })?;
                Expr::Matches(one(value), re)
            }
            "not" => Expr::Not(one(arg().0)),
            "and" => Expr::And(args.map(|a| a.0).collect()),
            "or" => Expr::Or(args.map(|a| a.0).collect()),
            "flag" => {
                let value = arg().0;
                let (mask, at) = arg();
                let mask = match mask {
                    Expr::Lit(m) => m.parse::<u64>().ok().filter(|m| *m != 0),
                    _ => None,
                };
                let Some(mask) = mask else {
                    return Err(self.error(
                        at,
                        "the mask of `flag` must be a positive whole number",
                        "write flag(userAccountControl, 2) to test the ACCOUNTDISABLE bit",
                    ));
                };
                Expr::Flag(one(value), mask)
            }
            _ => unreachable!("every entry of FUNCTIONS is handled"),
        })
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Num(n) => format!("`{n}`"),
        Tok::Open => "`(`".into(),
        Tok::Close => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::End => "the end of the expression".into(),
    }
}

/// Compiles an `expr:` string.
pub(crate) fn compile(src: &str, kind: RecordKind) -> Result<Expr, ExprError> {
    let mut p = Parser { src, pos: 0, kind };
    let e = p.expr()?;
    match p.next()? {
        (Tok::End, _) => Ok(e),
        (other, at) => Err(p.error(
            at,
            format!("unexpected {} after the expression", describe(&other)),
            "an expression is a single value; combine values with join(…) or a template",
        )),
    }
}

/// Compiles a template: text with `{{ expression }}` placeholders.
pub(crate) fn compile_template(src: &str, kind: RecordKind) -> Result<Expr, ExprError> {
    let mut parts = Vec::new();
    let mut rest = 0;
    while let Some(open) = src[rest..].find("{{").map(|i| rest + i) {
        if open > rest {
            parts.push(Expr::Lit(src[rest..open].into()));
        }
        let inner_start = open + 2;
        let Some(close) = src[inner_start..].find("}}").map(|i| inner_start + i) else {
            return Err(ExprError {
                offset: src[..open].chars().count(),
                message: "`{{` is never closed".into(),
                hint: "close the placeholder with `}}`".into(),
            });
        };
        let inner = &src[inner_start..close];
        let e = compile(inner, kind).map_err(|mut e| {
            e.offset += src[..inner_start].chars().count();
            e
        })?;
        parts.push(e);
        rest = close + 2;
    }
    if rest < src.len() {
        parts.push(Expr::Lit(src[rest..].into()));
    }
    if !parts.iter().any(|p| !matches!(p, Expr::Lit(_))) {
        return Err(ExprError {
            offset: 0,
            message: "the template has no `{{ … }}` placeholder".into(),
            hint: "use `value:` for constant text, or add a placeholder such as {{ given_name }}"
                .into(),
        });
    }
    Ok(Expr::Template(parts))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn attrs(pairs: &[(&str, &[&str])]) -> SourceAttrs {
        let mut a = SourceAttrs::new();
        for (n, v) in pairs {
            a.push(n, v.iter());
        }
        a
    }

    fn run(expr: &str, a: &SourceAttrs) -> String {
        let e = compile(expr, RecordKind::User).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
        e.eval(&Record {
            memberships: &crate::mapping::assign::Memberships::none(),
            key: "k-1",
            name: "",
            attrs: a,
        })
        .into_owned()
    }

    fn err(expr: &str) -> ExprError {
        compile(expr, RecordKind::User).expect_err(expr)
    }

    fn sample() -> SourceAttrs {
        attrs(&[
            ("email", &["  Alice.Smith@Example.COM "]),
            ("given_name", &["Alice"]),
            ("family_name", &["Smith"]),
            ("empty", &[""]),
            ("multi", &["", "second", "third"]),
            ("Employee ID", &["E42"]),
            ("uac", &["514"]),
            ("uac_on", &["512"]),
            ("dn", &["cn=alice,ou=Sales,dc=example,dc=com"]),
        ])
    }

    #[test]
    fn literals_references_and_key() {
        let a = sample();
        assert_eq!(run("'x'", &a), "x");
        assert_eq!(run("\"y\"", &a), "y");
        assert_eq!(run("given_name", &a), "Alice");
        assert_eq!(
            run("GIVEN_NAME", &a),
            "Alice",
            "lookups are case-insensitive"
        );
        assert_eq!(run("missing", &a), "");
        assert_eq!(run("key", &a), "k-1");
        assert_eq!(run("attr('Employee ID')", &a), "E42");
        assert_eq!(run("multi", &a), "second", "first non-empty value");
        assert_eq!(run("first(multi)", &a), "second");
        assert_eq!(run("42", &a), "42");
    }

    #[test]
    fn string_functions() {
        let a = sample();
        assert_eq!(run("trim(email)", &a), "Alice.Smith@Example.COM");
        assert_eq!(run("lower(trim(email))", &a), "alice.smith@example.com");
        assert_eq!(run("upper(given_name)", &a), "ALICE");
        assert_eq!(
            run("join(' ', given_name, empty, family_name)", &a),
            "Alice Smith"
        );
        assert_eq!(run("join(' ', empty, family_name)", &a), "Smith");
        assert_eq!(run("join(' ', empty, missing)", &a), "");
        assert_eq!(run("split(dn, ',', 1)", &a), "ou=Sales");
        assert_eq!(run("split(dn, ',', -1)", &a), "dc=com");
        assert_eq!(run("split(dn, ',', 9)", &a), "");
        assert_eq!(run("split(dn, ',', -9223372036854775808)", &a), "");
        assert_eq!(run("split(dn, ',', 9223372036854775807)", &a), "");
        assert_eq!(
            run("split(dn, '', 0)", &a),
            "cn=alice,ou=Sales,dc=example,dc=com"
        );
        assert_eq!(run("split(split(dn, ',', 1), '=', 1)", &a), "Sales");
        assert_eq!(run("replace(given_name, 'li', 'LI')", &a), "ALIce");
        assert_eq!(run("replace(given_name, '', 'x')", &a), "Alice");
        assert_eq!(
            run("coalesce(empty, missing, family_name, given_name)", &a),
            "Smith"
        );
        assert_eq!(run("coalesce(empty, missing)", &a), "");
        assert_eq!(run("default(missing, 'n/a')", &a), "n/a");
        assert_eq!(run("default(given_name, 'n/a')", &a), "Alice");
    }

    #[test]
    fn conditions_compose() {
        let a = sample();
        assert_eq!(run("eq(given_name, 'Alice')", &a), "true");
        assert_eq!(run("eq(given_name, 'alice')", &a), "");
        assert_eq!(run("ne(given_name, 'alice')", &a), "true");
        assert_eq!(run("present(given_name)", &a), "true");
        assert_eq!(run("present(empty)", &a), "");
        assert_eq!(run("matches(email, '(?i)@example\\.com')", &a), "true");
        assert_eq!(run("matches(uac, '^\\d+$')", &a), "true");
        assert_eq!(run("not(present(missing))", &a), "true");
        assert_eq!(run("and(present(given_name), present(missing))", &a), "");
        assert_eq!(run("or(present(given_name), present(missing))", &a), "true");
        assert_eq!(run("if(present(missing), 'yes', 'no')", &a), "no");
        assert_eq!(run("if(eq(key, 'k-1'), given_name, 'no')", &a), "Alice");
        assert_eq!(run("flag(uac, 2)", &a), "true");
        assert_eq!(run("flag(uac_on, 2)", &a), "");
        assert_eq!(run("flag(given_name, 2)", &a), "", "not a number");
        assert_eq!(run("flag(missing, 2)", &a), "");
        assert_eq!(run("if(flag(uac, 2), 'false', 'true')", &a), "false");
    }

    #[test]
    fn non_ascii_values() {
        let a = attrs(&[
            ("a", &["Müller"]),
            ("b", &["Nuñez"]),
            ("c", &["Østergaard"]),
            ("d", &["ǅemal"]),
        ]);
        assert_eq!(run("lower(a)", &a), "müller");
        assert_eq!(run("upper(a)", &a), "MÜLLER");
        assert_eq!(run("upper(b)", &a), "NUÑEZ");
        assert_eq!(run("lower(c)", &a), "østergaard");
        assert_eq!(run("upper(c)", &a), "ØSTERGAARD");
        assert_eq!(run("lower(d)", &a), "ǆemal");
        assert_eq!(run("join('·', a, b, c)", &a), "Müller·Nuñez·Østergaard");
        assert_eq!(run("split(a, 'ü', 1)", &a), "ller");
        assert_eq!(run("'Ünïcødé literal'", &a), "Ünïcødé literal");
    }

    #[test]
    fn quotes_and_backslashes() {
        let a = attrs(&[("q", &["O'Brien \"Bob\" C:\\Users\\x"])]);
        assert_eq!(run("q", &a), "O'Brien \"Bob\" C:\\Users\\x");
        assert_eq!(run("lower(q)", &a), "o'brien \"bob\" c:\\users\\x");
        assert_eq!(
            run("replace(q, '\\\\', '/')", &a),
            "O'Brien \"Bob\" C:/Users/x"
        );
        assert_eq!(
            run("replace(q, \"'\", '')", &a),
            "OBrien \"Bob\" C:\\Users\\x"
        );
        assert_eq!(run("'it\\'s'", &a), "it's");
        assert_eq!(run("\"say \\\"hi\\\"\"", &a), "say \"hi\"");
        assert_eq!(run("'\\d'", &a), "\\d", "other backslashes stay literal");
        assert_eq!(
            run("eq(q, 'O\\'Brien \"Bob\" C:\\\\Users\\\\x')", &a),
            "true"
        );
    }

    #[test]
    fn templates() {
        let a = sample();
        let t = |src: &str| {
            compile_template(src, RecordKind::User)
                .unwrap()
                .eval(&Record {
                    memberships: &crate::mapping::assign::Memberships::none(),
                    key: "k",
                    name: "",
                    attrs: &a,
                })
                .into_owned()
        };
        assert_eq!(t("{{ given_name }} {{ family_name }}"), "Alice Smith");
        assert_eq!(
            t("{{given_name}}-{{ upper(family_name) }}!"),
            "Alice-SMITH!"
        );
        assert_eq!(t("{{ missing }} {{ family_name }}"), "Smith", "trimmed");
        assert_eq!(
            t("Dr. {{ missing }} {{ empty }}"),
            "",
            "no placeholder had a value"
        );
        let e = compile_template("Hi {{ lowr(x) }}", RecordKind::User).unwrap_err();
        assert_eq!(e.offset, 6);
        let e = compile_template("Hi {{ x", RecordKind::User).unwrap_err();
        assert_eq!((e.offset, e.message.as_str()), (3, "`{{` is never closed"));
        assert!(compile_template("plain", RecordKind::User).is_err());
    }

    #[test]
    fn compile_errors_point_at_the_mistake() {
        let e = err("lower(trim(emial), 1)");
        assert_eq!(e.offset, 0);
        assert_eq!(e.message, "`lower` takes 1 argument, found 2");
        assert_eq!(e.hint, "usage: lower(value)");
        let e = err("trim(lowr(email))");
        assert_eq!(e.offset, 5);
        assert_eq!(e.message, "unknown function `lowr`");
        assert!(e.hint.contains("lower, upper, trim, join"), "{}", e.hint);
        let e = err("matches(title, '^(Eng')");
        assert_eq!(e.offset, 15);
        assert!(e.message.contains("invalid regular expression"), "{e:?}");
        assert_eq!(err("matches(title, pattern)").offset, 15);
        assert_eq!(
            err("split(a, ',', x)").message,
            "the index of `split` must be a number"
        );
        assert_eq!(err("'abc").message, "unterminated string literal");
        assert_eq!(err("a b").offset, 2);
        assert_eq!(
            err("trim(a").message,
            "expected `,` or `)`, found the end of the expression"
        );
        assert_eq!(
            err("").message,
            "expected a value, found the end of the expression"
        );
        assert_eq!(err("ü + 1").offset, 0);
        assert_eq!(err("join(' ', a) ?").offset, 13);
        assert_eq!(err("'Ø' x").offset, 4, "offsets count characters");
        assert!(err("flag(uac, 0)").message.contains("mask"));
        assert!(err("first('x')").message.contains("attribute"));
        assert!(compile("given_name", RecordKind::Group).is_err());
        assert!(compile("join('-', name, key)", RecordKind::Group).is_ok());
    }

    #[test]
    fn collects_attributes() {
        let e = compile(
            "if(present(a), join(' ', b, attr('c d')), coalesce(key, e))",
            RecordKind::User,
        )
        .unwrap();
        let mut out = BTreeSet::new();
        e.collect_attrs(&mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["a", "b", "c d", "e"]);
    }
}
