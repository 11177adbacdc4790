//! Release builds for x86_64 Linux place the functions a request runs next to each other, in
//! front of the rest of the code: the functions listed in `build/hot-functions.txt`.
//!
//! Why: the kernel maps a program's code in 64 KiB windows around each page it runs, so the
//! ~700 KiB of request-path code, spread over 5 MiB of binary, kept ~3.5 MiB of it resident
//! under load; gathered, it keeps ~1 MiB (docs/performance.md, "Memory (issue 16)"). The list
//! is measured, not written by hand: `bench/hot-functions.sh` regenerates it.
//!
//! Two linker inputs are made from it. A linker script gathers the sections of every function
//! whose name matches a listed one with its hashes replaced by `*` into one output section,
//! `.text.hot`, in front of `.text`: that survives a new compiler or crate version, which
//! change the hashes. A symbol ordering file puts the exact listed functions first within it,
//! so the other instances those patterns also match stay out of the way. A stale list costs
//! memory, never correctness: a name that matches nothing is ignored, and a function the list
//! misses keeps its usual place.
//!
//! The ordering file is LLD's (Rust's default linker for this target since 1.90, with rustup's
//! toolchains); GNU ld rejects it. So the two inputs are first tried on an empty program
//! linked the way the proxy will be (same rustc, RUSTFLAGS and cargo-configured linker): if
//! that fails (GNU ld, mold, a distribution's rustc without LLD), the release build goes on
//! without the layout and says so in a cargo warning. Skipped as well with
//! `MEDUSA_AUTH_PROXY_NO_LAYOUT` set.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/hot-functions.txt");
    println!("cargo:rerun-if-env-changed=MEDUSA_AUTH_PROXY_NO_LAYOUT");
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || env::var_os("MEDUSA_AUTH_PROXY_NO_LAYOUT").is_some()
    {
        return;
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("build/hot-functions.txt");
    let Ok(text) = std::fs::read_to_string(&list) else {
        return;
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "_$.".contains(c);
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.chars().all(plain))
        .collect();
    let mut patterns: Vec<String> = Vec::new();
    for name in &names {
        let p = unhashed(name);
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    // One input-section description, so the ordering file sorts across all of it; the `*`
    // after `.text.` also takes `.text.unlikely.` sections (functions marked #[cold]).
    let mut script = String::from("SECTIONS\n{\n  .text.hot : {\n    *(\n");
    for p in &patterns {
        let _ = writeln!(script, "      .text.*{p}");
    }
    script.push_str("    )\n  }\n}\nINSERT BEFORE .text;\n");
    let out = PathBuf::from(var("OUT_DIR"));
    let (script_path, order_path) = (
        out.join("hot-functions.ld"),
        out.join("hot-functions.order"),
    );
    let mut order = names.join("\n");
    order.push('\n');
    if std::fs::write(&script_path, script).is_err() || std::fs::write(&order_path, order).is_err()
    {
        return;
    }
    let args = [
        format!("-Wl,-T,{}", script_path.display()),
        format!("-Wl,--symbol-ordering-file={}", order_path.display()),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    if !linker_takes(&args, &out) {
        println!(
            "cargo:warning=release build without the request path's code layout: the linker \
             rejects its inputs, e.g. GNU ld LLD's ordering file (build.rs; costs memory only)"
        );
        return;
    }
    for a in &args {
        println!("cargo:rustc-link-arg-bins={a}");
    }
}

/// Whether an empty program links with `link_args`, built by the same rustc for the same
/// target with the same RUSTFLAGS and the linker cargo was configured with (`RUSTC_LINKER`,
/// which is not among the RUSTFLAGS): the proxy's own link then takes them too.
fn linker_takes(link_args: &[String], out: &Path) -> bool {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let src = out.join("layout-probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    rustc
        .arg(&src)
        .args(["--crate-type", "bin", "--edition", "2021", "--target"])
        .arg(env::var_os("TARGET").unwrap_or_default())
        .arg("-o")
        .arg(out.join("layout-probe"))
        .args(
            env::var("CARGO_ENCODED_RUSTFLAGS")
                .unwrap_or_default()
                .split('\x1f')
                .filter(|f| !f.is_empty()),
        );
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut flag = std::ffi::OsString::from("-Clinker=");
        flag.push(linker);
        rustc.arg(flag);
    }
    for a in link_args {
        rustc.arg(format!("-Clink-arg={a}"));
    }
    rustc
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `name` with its hashes replaced by `*`: legacy mangling's `17h<16 hex digits>E` at the end,
/// v0 mangling's crate disambiguators (`Cs<base62>_` before the crate name's length).
fn unhashed(name: &str) -> String {
    let mut s = name.to_owned();
    if let Some(i) = s.rfind("17h")
        && s.len() == i + 3 + 16 + 1
        && s.ends_with('E')
        && s[i + 3..i + 19].bytes().all(|b| b.is_ascii_hexdigit())
    {
        s.truncate(i + 3);
        s.push('*');
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("Cs") {
        out.push_str(&rest[..i + 2]);
        rest = &rest[i + 2..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        // `Cs<base62>_<digit>`: a crate root's disambiguator, followed by its name's length.
        if end < rest.len()
            && rest.as_bytes()[end] == b'_'
            && rest[end + 1..].starts_with(|c: char| c.is_ascii_digit())
        {
            out.push('*');
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}
