//! Which source files compile differently for a device target than for the host.
//!
//! The host's clippy pass (x86_64 glibc here and in CI) lints every line that the musl targets compile the
//! same way; a second pass per target is needed only where a `#[cfg(…)]` or `#[cfg_attr(…)]`
//! keeps or drops code by target. A file that merely names `target_arch` does not make one:
//! `cfg(any(target_arch = "x86_64", target_arch = "aarch64"))` keeps the code on both, and
//! `cfg!(…)` leaves both branches compiled (and linted) everywhere. So each predicate is
//! evaluated for the host and for the target, for every value of the predicate's other
//! options (features, `test`, …), and a file is target-specific when any result differs.

use std::collections::BTreeSet;

/// The target settings a predicate can ask about, for one target.
pub struct Target {
    arch: String,
    env: String,
}

/// The target options this knows; a predicate naming another `target_*` option counts as
/// differing (a second pass is the safe side).
const KNOWN: &[&str] = &[
    "target_arch",
    "target_env",
    "target_os",
    "target_family",
    "target_vendor",
    "target_endian",
    "target_pointer_width",
    "target_has_atomic",
];

impl Target {
    /// From a Linux target triple (`aarch64-unknown-linux-musl`, the host's
    /// `x86_64-unknown-linux-gnu`): its first part is the architecture, its last the libc.
    pub fn from_triple(triple: &str) -> Target {
        Target {
            arch: triple.split('-').next().unwrap_or_default().to_string(),
            env: triple.rsplit('-').next().unwrap_or_default().to_string(),
        }
    }

    /// The value of a target option (`target_arch = "…"` and the like, `unix`), or None for an
    /// option that is not about the target. Cairn's targets are all 64-bit little-endian Linux.
    fn answers(&self, key: &str, value: Option<&str>) -> Option<bool> {
        let is = |v: &str| Some(value == Some(v));
        match key {
            "target_arch" => is(&self.arch),
            "target_env" => is(&self.env),
            "target_os" => is("linux"),
            "target_family" => is("unix"),
            "target_vendor" => is("unknown"),
            "target_endian" => is("little"),
            "target_pointer_width" => is("64"),
            "target_has_atomic" => Some(matches!(
                value,
                None | Some("8" | "16" | "32" | "64" | "ptr")
            )),
            "unix" => Some(true),
            "windows" => Some(false),
            _ => None,
        }
    }
}

/// A cfg predicate.
#[derive(Debug, PartialEq)]
enum Pred {
    Option(String, Option<String>),
    Any(Vec<Pred>),
    All(Vec<Pred>),
    Not(Box<Pred>),
}

impl Pred {
    /// The options that are not about the target (features, `test`, …).
    fn free(&self, target: &Target, out: &mut BTreeSet<(String, Option<String>)>) {
        match self {
            Pred::Option(k, v) => {
                if target.answers(k, v.as_deref()).is_none() {
                    out.insert((k.clone(), v.clone()));
                }
            }
            Pred::Any(ps) | Pred::All(ps) => ps.iter().for_each(|p| p.free(target, out)),
            Pred::Not(p) => p.free(target, out),
        }
    }

    fn eval(&self, target: &Target, set: &BTreeSet<(String, Option<String>)>) -> bool {
        match self {
            Pred::Option(k, v) => target
                .answers(k, v.as_deref())
                .unwrap_or_else(|| set.contains(&(k.clone(), v.clone()))),
            Pred::Any(ps) => ps.iter().any(|p| p.eval(target, set)),
            Pred::All(ps) => ps.iter().all(|p| p.eval(target, set)),
            Pred::Not(p) => !p.eval(target, set),
        }
    }

    /// Whether it names a `target_*` option [`Target`] does not know.
    fn names_unknown(&self) -> bool {
        match self {
            Pred::Option(k, _) => k.starts_with("target_") && !KNOWN.contains(&k.as_str()),
            Pred::Any(ps) | Pred::All(ps) => ps.iter().any(Pred::names_unknown),
            Pred::Not(p) => p.names_unknown(),
        }
    }

    /// Whether `host` and `target` can disagree: tried with every choice of the options that
    /// are not about the target (a predicate names only a few).
    fn differs(&self, host: &Target, target: &Target) -> bool {
        if self.names_unknown() {
            return true;
        }
        let mut free = BTreeSet::new();
        self.free(host, &mut free);
        let free: Vec<_> = free.into_iter().collect();
        if free.len() > 12 {
            return true;
        }
        (0u32..1 << free.len()).any(|mask| {
            let set: BTreeSet<_> = free
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, o)| o.clone())
                .collect();
            self.eval(host, &set) != self.eval(target, &set)
        })
    }
}

/// Tokens of a predicate: words, string literals and the punctuation between them.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

/// Reads one predicate from `text` (which starts just after `cfg(` or `cfg_attr(`); None when it
/// does not parse.
fn parse(text: &str) -> Option<Pred> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut depth = 0usize;
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => s.push(chars.next()?),
                        c => s.push(c),
                    }
                }
                tokens.push(Token::Str(s));
            }
            '(' | ')' | ',' | '=' => {
                chars.next();
                if c == '(' {
                    depth += 1;
                }
                if c == ')' {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                }
                // `cfg_attr(pred, attr…)`: the predicate ends at the first top-level comma.
                if c == ',' && depth == 0 {
                    break;
                }
                tokens.push(Token::Punct(c));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_alphanumeric() || c == '_') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(w));
            }
            _ => return None,
        }
    }
    let mut at = 0;
    let pred = pred(&tokens, &mut at)?;
    (at == tokens.len()).then_some(pred)
}

fn pred(tokens: &[Token], at: &mut usize) -> Option<Pred> {
    let Token::Word(word) = tokens.get(*at)? else {
        return None;
    };
    *at += 1;
    match tokens.get(*at) {
        Some(Token::Punct('=')) => {
            let Some(Token::Str(value)) = tokens.get(*at + 1) else {
                return None;
            };
            *at += 2;
            Some(Pred::Option(word.clone(), Some(value.clone())))
        }
        Some(Token::Punct('(')) if matches!(word.as_str(), "any" | "all" | "not") => {
            *at += 1;
            let mut list = Vec::new();
            loop {
                if tokens.get(*at) == Some(&Token::Punct(')')) {
                    *at += 1;
                    break;
                }
                list.push(pred(tokens, at)?);
                match tokens.get(*at)? {
                    Token::Punct(',') => *at += 1,
                    Token::Punct(')') => {}
                    _ => return None,
                }
            }
            match word.as_str() {
                "any" => Some(Pred::Any(list)),
                "all" => Some(Pred::All(list)),
                _ if list.len() == 1 => Some(Pred::Not(Box::new(list.remove(0)))),
                _ => None,
            }
        }
        _ => Some(Pred::Option(word.clone(), None)),
    }
}

/// Whether `source` keeps or drops code differently for `target` than for the host: some
/// `cfg(…)` or `cfg_attr(…)` attribute's predicate can come out differently. A predicate that
/// does not parse counts as differing. (`cfg!(…)` does not count: both its branches compile.)
pub fn differs(source: &str, host: &Target, target: &Target) -> bool {
    ["#[cfg(", "#![cfg(", "#[cfg_attr(", "#![cfg_attr("]
        .iter()
        .any(|opener| {
            source.match_indices(opener).any(|(i, _)| {
                parse(&source[i + opener.len()..]).is_none_or(|p| p.differs(host, target))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "aarch64-unknown-linux-musl";
    const X86_64_MUSL: &str = "x86_64-unknown-linux-musl";

    /// As the suite asks on an x86_64 glibc host.
    fn differs(source: &str, target: &str) -> bool {
        super::differs(
            source,
            &Target::from_triple("x86_64-unknown-linux-gnu"),
            &Target::from_triple(target),
        )
    }

    #[test]
    fn code_kept_on_both_arches_needs_no_second_pass() {
        let both = "#[cfg(any(target_arch = \"x86_64\", target_arch = \"aarch64\"))]\nfn f() {}";
        assert!(!differs(both, AARCH64));
        let neither = "#[cfg(not(any(target_arch = \"powerpc\", target_arch = \"mips\")))]";
        assert!(!differs(neither, AARCH64));
        assert!(!differs(
            "let x = if cfg!(target_arch = \"x86_64\") { 1 } else { 2 };",
            AARCH64
        ));
        assert!(!differs(
            "#[cfg(test)]\nmod tests {}\n#[cfg(feature = \"testing\")]",
            AARCH64
        ));
    }

    #[test]
    fn code_kept_on_one_arch_or_libc_needs_it() {
        assert!(differs(
            "#[cfg(target_arch = \"aarch64\")]\nfn f() {}",
            AARCH64
        ));
        assert!(!differs("#[cfg(target_arch = \"aarch64\")]", X86_64_MUSL));
        assert!(differs(
            "#![cfg_attr(target_env = \"musl\", allow(dead_code))]",
            X86_64_MUSL
        ));
        assert!(differs(
            "#[cfg(all(feature = \"x\", not(target_arch = \"x86_64\")))]",
            AARCH64
        ));
        assert!(differs("#[cfg(target_something_new = \"y\")]", X86_64_MUSL));
    }

    #[test]
    fn a_predicate_that_does_not_parse_counts_as_differing() {
        assert!(differs("#[cfg(any(target_arch = ))]", AARCH64));
        assert_eq!(
            parse("all(unix, feature = \"a\"), allow(x))]"),
            Some(Pred::All(vec![
                Pred::Option("unix".into(), None),
                Pred::Option("feature".into(), Some("a".into()))
            ]))
        );
    }
}
