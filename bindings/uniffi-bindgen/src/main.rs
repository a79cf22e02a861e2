//! The UniFFI bindgen, built from the workspace so it always matches the library's uniffi.
//!
//! `cargo uniffi-bindgen generate --library <libkryonix_ffi.so> --language kotlin --out-dir <dir>`
//!
//! One change to UniFFI's output: Swift error enums get lowerCamelCase cases
//! (`KryonixError.invalidInput`), as Swift's API guidelines and every other enum of the module
//! have them. UniFFI 0.32 names error cases in UpperCamelCase and offers no setting for it, so
//! after generating Swift this renames each error enum's cases wherever the generated file
//! names them (`case X`, `.X`). The cases are read from the file itself, so a new variant needs
//! no change here; the Swift suite compiles against the result with warnings as errors.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    uniffi::uniffi_bindgen_main();
    if let Some(out_dir) = swift_out_dir(&args)
        && let Err(error) = lower_error_cases_in(&out_dir)
    {
        eprintln!("uniffi-bindgen: renaming Swift error cases: {error}");
        std::process::exit(1);
    }
}

/// The output directory of a `generate … --language swift` run (`-l`/`-o` and `--x=y` forms too).
fn swift_out_dir(args: &[OsString]) -> Option<PathBuf> {
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
    if !args.iter().any(|a| a == "generate") || value("--language", "-l")? != "swift" {
        return None;
    }
    value("--out-dir", "-o").map(PathBuf::from)
}

fn lower_error_cases_in(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "swift") {
            let source = std::fs::read_to_string(&path)?;
            let renamed = lower_error_cases(&source);
            if renamed != source {
                std::fs::write(&path, renamed)?;
            }
        }
    }
    Ok(())
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
    fn only_swift_generation_is_post_processed() {
        let args = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            swift_out_dir(&args("b generate lib.so --language swift --out-dir out")),
            Some(PathBuf::from("out"))
        );
        assert_eq!(
            swift_out_dir(&args("b generate lib.so -l swift -o out")),
            Some(PathBuf::from("out"))
        );
        assert_eq!(
            swift_out_dir(&args("b generate lib.so --language kotlin --out-dir out")),
            None
        );
    }
}
