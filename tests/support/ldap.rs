//! LDAP directories seen from outside idsync: the OpenLDAP client tools
//! (`client`, `search`), their LDIF output parsed (`parse_ldif`,
//! `Entry`), LDIF written (`Ldif`), and DNs compared (`norm_dn`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use base64::Engine as _;

use super::process::Output;

/// An OpenLDAP client tool (`ldapsearch`, `ldapmodify`, …) on `url`, with a
/// simple bind and a network time-out of `nettimeout` seconds; the caller adds
/// the bind DN and password.
pub fn client(tool: &str, url: &str, nettimeout: u32) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(["-x", "-o", &format!("nettimeout={nettimeout}"), "-H", url]);
    cmd
}

/// `ldapsearch` through `run` (a client of one server, given its arguments):
/// `extra` arguments, then the entries under `base` matching `filter`, with
/// `attrs`, as unwrapped LDIF without comments. Panics when it fails.
pub fn search(
    run: impl FnOnce(&[&str]) -> Output,
    extra: &[&str],
    base: &str,
    filter: &str,
    attrs: &[&str],
) -> Vec<Entry> {
    let mut args = vec!["-LLL", "-o", "ldif-wrap=no"];
    args.extend_from_slice(extra);
    args.extend(["-b", base, filter]);
    args.extend_from_slice(attrs);
    let out = run(&args);
    assert_eq!(out.code, 0, "ldapsearch {filter} failed:\n{}", out.dump());
    parse_ldif(&out.stdout)
}

/// One entry of `ldapsearch -LLL` output: its DN and its values by attribute
/// name (lower-cased), base64 ones decoded to bytes.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub dn: String,
    pub attrs: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Entry {
    /// Every value of `name` as text (panics on one that is not UTF-8).
    pub fn texts(&self, name: &str) -> Vec<String> {
        self.attrs
            .get(&name.to_lowercase())
            .map(|vs| {
                vs.iter()
                    .map(|v| {
                        String::from_utf8(v.clone())
                            .unwrap_or_else(|_| panic!("{name} of {} is not UTF-8: {v:?}", self.dn))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first value of `name` as text.
    pub fn text(&self, name: &str) -> Option<String> {
        self.texts(name).into_iter().next()
    }

    /// The first value of `name` that is not blank.
    pub fn first(&self, name: &str) -> Option<String> {
        self.texts(name).into_iter().find(|s| !s.trim().is_empty())
    }

    /// The first value of `name` as bytes.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.attrs
            .get(&name.to_lowercase())
            .and_then(|vs| vs.first())
            .map(Vec::as_slice)
    }

    pub fn has_class(&self, class: &str) -> bool {
        self.texts("objectClass")
            .iter()
            .any(|c| c.eq_ignore_ascii_case(class))
    }
}

/// The entries of `ldapsearch -LLL -o ldif-wrap=no` output.
pub fn parse_ldif(text: &str) -> Vec<Entry> {
    assert!(
        !text.contains(char::REPLACEMENT_CHARACTER),
        "ldapsearch prints UTF-8 LDIF:\n{text}"
    );
    let mut entries = Vec::new();
    let mut current: Option<Entry> = None;
    for line in text.lines() {
        if line.is_empty() {
            entries.extend(current.take());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once(':') else {
            panic!("unexpected LDIF line {line:?}");
        };
        let value = match rest.strip_prefix(':') {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap_or_else(|e| panic!("not base64 ({e}): {line:?}")),
            None => rest.trim_start().as_bytes().to_vec(),
        };
        if name.eq_ignore_ascii_case("dn") {
            entries.extend(current.take());
            current = Some(Entry {
                dn: String::from_utf8(value).expect("a UTF-8 DN"),
                ..Entry::default()
            });
        } else if let Some(entry) = current.as_mut() {
            entry
                .attrs
                .entry(name.to_lowercase())
                .or_default()
                .push(value);
        }
    }
    entries.extend(current);
    entries
}

/// A DN in lower case with no spaces after its commas: how DNs are compared.
pub fn norm_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` in base64, as LDIF writes a value after `::`.
pub fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// Writes LDIF (RFC 2849), base64-encoding values that are not safe strings.
#[derive(Default)]
pub struct Ldif(String);

impl Ldif {
    pub fn entry(&mut self, dn: &str, attrs: &[(&str, &str)]) -> &mut Self {
        self.line("dn", dn);
        for (name, value) in attrs {
            self.line(name, value);
        }
        self.0.push('\n');
        self
    }

    fn line(&mut self, name: &str, value: &str) {
        let safe = value.is_ascii()
            && !value.starts_with([' ', ':', '<'])
            && !value.ends_with(' ')
            && !value.contains(['\n', '\r', '\0']);
        if safe {
            let _ = writeln!(self.0, "{name}: {value}");
        } else {
            let _ = writeln!(self.0, "{name}:: {}", base64(value));
        }
    }

    pub fn text(&self) -> &str {
        &self.0
    }
}
