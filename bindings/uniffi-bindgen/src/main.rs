//! The UniFFI bindgen, built from the workspace so it always matches the library's uniffi.
//!
//! `cargo uniffi-bindgen generate --library <libkryonix_ffi.so> --language kotlin --out-dir <dir>`
//!
//! Two changes to UniFFI's output, which UniFFI 0.32 offers no setting for:
//!
//! - Swift error enums get lowerCamelCase cases (`KryonixError.invalidInput`), as Swift's API
//!   guidelines and every other enum of the module have them: each error enum's cases are
//!   renamed wherever the generated file names them (`case X`, `.X`).
//! - Kotlin exceptions whose Rust error exports `Display` get it as their `message` too (UniFFI
//!   makes `message` a field dump, `reason=…`, and only `toString()` the sentence), since apps
//!   show and log `e.message`.
//!
//! Both read what to change from the generated file itself, so a new variant needs no change
//! here; the Kotlin and Swift suites compile against the result with warnings as errors.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    uniffi::uniffi_bindgen_main();
    let result = match generated(&args) {
        Some((Language::Swift, out_dir)) => rewrite_in(&out_dir, "swift", lower_error_cases),
        Some((Language::Kotlin, out_dir)) => rewrite_in(&out_dir, "kt", messages_from_display),
        None => Ok(()),
    };
    if let Err(error) = result {
        eprintln!("uniffi-bindgen: rewriting the generated files: {error}");
        std::process::exit(1);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Language {
    Swift,
    Kotlin,
}

/// The language and output directory of a `generate` run that this post-processes.
fn generated(args: &[OsString]) -> Option<(Language, PathBuf)> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let value = |long: &str, short: &str| -> Option<String> {
        args.iter().enumerate().find_map(|(i, a)| {
            if a == long || a == short {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(&format!("{long}=")).map(str::to_owned)
            }
        })
    };
    if !args.iter().any(|a| a == "generate") {
        return None;
    }
    let language = match value("--language", "-l")?.as_str() {
        "swift" => Language::Swift,
        "kotlin" => Language::Kotlin,
        _ => return None,
    };
    Some((language, PathBuf::from(value("--out-dir", "-o")?)))
}

/// Rewrites every file ending in `.{extension}` under `dir` (recursively) with `rewrite`.
fn rewrite_in(dir: &Path, extension: &str, rewrite: fn(&str) -> String) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rewrite_in(&path, extension, rewrite)?;
        } else if path.extension().is_some_and(|e| e == extension) {
            let source = std::fs::read_to_string(&path)?;
            let rewritten = rewrite(&source);
            if rewritten != source {
                std::fs::write(&path, rewritten)?;
            }
        }
    }
    Ok(())
}

/// The Kotlin source with each exception's `message` made its `toString()` (the Rust
/// `Display`), in the sealed exception classes that override `toString()` with it.
fn messages_from_display(source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("sealed class ") && line.contains(": kotlin.Exception()") {
            let end = (i + 1..lines.len())
                .find(|&j| lines[j] == "}")
                .unwrap_or(lines.len() - 1);
            let block = &lines[i..=end];
            let has_display = block.iter().any(|l| l.contains("_uniffi_trait_display("));
            let mut j = 0;
            while j < block.len() {
                let getter = block.get(j + 1).map(|l| l.trim_start());
                if has_display
                    && block[j].trim() == "override val message"
                    && getter.is_some_and(|g| g.starts_with("get() = \""))
                {
                    out.push(block[j].to_owned());
                    let indent =
                        &block[j + 1][..block[j + 1].len() - block[j + 1].trim_start().len()];
                    out.push(format!("{indent}get() = toString()"));
                    j += 2;
                } else {
                    out.push(block[j].to_owned());
                    j += 1;
                }
            }
            i = end + 1;
        } else {
            out.push(line.to_owned());
            i += 1;
        }
    }
    let mut joined = out.join("\n");
    if source.ends_with('\n') {
        joined.push('\n');
    }
    joined
}

/// The source with every error enum's UpperCamelCase cases in lowerCamelCase.
fn lower_error_cases(source: &str) -> String {
    let mut variants: Vec<String> = Vec::new();
    let mut in_error_enum = false;
    for line in source.lines() {
        if line.trim_start_matches("public ").starts_with("enum ") && line.contains(": Swift.Error")
        {
            in_error_enum = true;
        } else if in_error_enum && line.starts_with('}') {
            in_error_enum = false;
        } else if in_error_enum && let Some(rest) = line.trim_start().strip_prefix("case ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with(|c: char| c.is_ascii_uppercase()) && !variants.contains(&name) {
                variants.push(name);
            }
        }
    }
    let mut out = source.to_owned();
    for variant in &variants {
        let lowered = lower_first(variant);
        for prefix in [".", "case "] {
            out = replace_word(
                &out,
                &format!("{prefix}{variant}"),
                &format!("{prefix}{lowered}"),
            );
        }
    }
    out
}

fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// `text` with `from` replaced by `to` wherever `from` is not followed by an identifier character
/// (so `.Offline` does not touch `.OfflineQueue`).
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        let whole = !after.starts_with(|c: char| c.is_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_cases_are_lowered_where_they_are_named_and_nowhere_else() {
        let source = "public \nenum KryonixError: Swift.Error, Equatable {\n    case Offline(reason: String\n    )\n    case StorageFull\n}\n\
                      public enum Tier {\n    case critical\n}\n\
                      switch v { case 1: return .Offline(reason: r)\n case 2: return .StorageFull\n case let .Offline(reason): x\n case .OfflineQueue: y }\n";
        let out = lower_error_cases(source);
        assert!(out.contains("case offline(reason: String"), "{out}");
        assert!(out.contains("case storageFull\n"), "{out}");
        assert!(out.contains("return .offline(reason: r)"), "{out}");
        assert!(out.contains("return .storageFull\n"), "{out}");
        assert!(out.contains("case let .offline(reason)"), "{out}");
        assert!(out.contains(".OfflineQueue"), "{out}");
        assert!(out.contains("case critical"), "{out}");
    }

    #[test]
    fn only_swift_and_kotlin_generation_is_post_processed() {
        let args = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            generated(&args("b generate lib.so --language swift --out-dir out")),
            Some((Language::Swift, PathBuf::from("out")))
        );
        assert_eq!(
            generated(&args("b generate lib.so -l kotlin -o out")),
            Some((Language::Kotlin, PathBuf::from("out")))
        );
        assert_eq!(
            generated(&args("b generate lib.so --language python --out-dir out")),
            None
        );
        assert_eq!(generated(&args("b --help")), None);
    }

    #[test]
    fn kotlin_messages_become_the_display_only_where_there_is_one() {
        let source = "sealed class AException: kotlin.Exception() {\n    class Bad(\n        val `reason`: kotlin.String\n        ) : AException() {\n        override val message\n            get() = \"reason=${ `reason` }\"\n    }\n    override fun toString(): String {\n        return x_uniffi_trait_display(this)\n    }\n}\n\
                      sealed class BException: kotlin.Exception() {\n    class Bad(\n        val `reason`: kotlin.String\n        ) : BException() {\n        override val message\n            get() = \"reason=${ `reason` }\"\n    }\n}\n";
        let out = messages_from_display(source);
        let (a, b) = out.split_at(out.find("sealed class BException").unwrap());
        assert!(a.contains("            get() = toString()\n"), "{out}");
        assert!(!a.contains("reason=$"), "{out}");
        assert!(b.contains("get() = \"reason=${ `reason` }\""), "{out}");
        assert!(out.ends_with("}\n"));
    }
}
