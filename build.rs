//! Release builds for x86_64 Linux place the functions a request runs next to each other: the
//! symbol patterns of `build/hot-functions.txt` become a linker script that gathers their
//! sections into one output section, `.text.hot`, in front of `.text`.
//!
//! Why: the kernel maps a program's code in 64 KiB windows around each page it runs, so the
//! ~700 KiB of request-path code, spread over 5 MiB of binary, kept ~3.5 MiB of it resident
//! under load; gathered, it keeps ~1 MiB (docs/performance.md, "Memory (issue 16)"). The list
//! is measured, not written by hand: `bench/hot-functions.sh` regenerates it. Its patterns
//! have the symbol hashes replaced by `*`, so a new compiler or crate version still matches.
//! A stale list costs memory, never correctness: a pattern that matches nothing is ignored,
//! and a function it misses keeps its usual place in `.text`.
//!
//! Skipped when RUSTFLAGS choose their own linker, or with `MEDUSA_AUTH_PROXY_NO_LAYOUT` set.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=MEDUSA_AUTH_PROXY_NO_LAYOUT");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = ["linker", "link-self-contained", "fuse-ld"]
        .iter()
        .any(|f| flags.contains(f));
    if var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || own_linker
        || env::var_os("MEDUSA_AUTH_PROXY_NO_LAYOUT").is_some()
    {
        return;
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("build/hot-functions.txt");
    let Ok(text) = std::fs::read_to_string(&list) else {
        return;
    };
    // One input-section statement per pattern keeps the list's order (hottest first); the
    // leading `*` also takes `.text.unlikely.` sections (functions marked #[cold]).
    let mut script = String::from("SECTIONS\n{\n  .text.hot : {\n");
    for pattern in text.lines().map(str::trim) {
        let plain = |c: char| c.is_ascii_alphanumeric() || "_$.*".contains(c);
        if pattern.is_empty() || pattern.starts_with('#') || !pattern.chars().all(plain) {
            continue;
        }
        let _ = writeln!(script, "    *(.text.*{pattern})");
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    let out = PathBuf::from(var("OUT_DIR")).join("hot-functions.ld");
    if std::fs::write(&out, script).is_ok() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", out.display());
    }
}
