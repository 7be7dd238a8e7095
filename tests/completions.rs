//! `op25b completions SHELL` and `op25b man [SUBCOMMAND]`: what the package
//! installs is generated from the CLI itself, so it cannot drift from it.
//! The bash script is loaded into a real bash and asked to complete.

use std::process::{Command, Output, Stdio};

/// The subcommands a user sees.
const SUBCOMMANDS: &[&str] = &["run", "check", "stats", "replay", "lab", "completions", "man"];

fn op25b(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run op25b {}: {e}", args.join(" ")))
}

fn stdout_of(args: &[&str]) -> String {
    let out = op25b(args);
    assert!(
        out.status.success(),
        "op25b {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "op25b {} wrote to stderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `script` in bash and returns its stdout, failing on a non-zero exit.
fn bash(script: &str) -> String {
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash (it is needed for this test): {e}"));
    assert!(out.status.success(), "bash failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let script = stdout_of(&["completions", "bash"]);
    let dir = std::env::temp_dir().join(format!("o25-compl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("op25b.bash");
    std::fs::write(&file, &script).expect("writing the script");
    // Load it as bash-completion would, then ask the completion function
    // what follows `op25b ` and `op25b run --`, as bash does on TAB.
    let probe = format!(
        r#"source {file}
complete -p op25b
COMP_WORDS=(op25b ""); COMP_CWORD=1; COMP_LINE="op25b "; COMP_POINT=${{#COMP_LINE}}
_op25b op25b "" op25b; echo "top: ${{COMPREPLY[*]}}"
COMP_WORDS=(op25b run --); COMP_CWORD=2; COMP_LINE="op25b run --"; COMP_POINT=${{#COMP_LINE}}
_op25b op25b -- run; echo "run: ${{COMPREPLY[*]}}""#,
        file = file.display()
    );
    let out = bash(&probe);
    let _ = std::fs::remove_dir_all(&dir); // best effort
    println!("{out}");
    let line = |tag: &str| -> Vec<String> {
        let l = out.lines().find_map(|l| l.strip_prefix(tag)).unwrap_or_else(|| panic!("no {tag:?} line in:\n{out}"));
        l.split_whitespace().map(str::to_string).collect()
    };
    assert!(out.contains("-F _op25b op25b"), "the script registers no completion for op25b:\n{out}");
    let top = line("top: ");
    for sub in SUBCOMMANDS {
        assert!(top.iter().any(|w| w == sub), "`op25b <TAB>` does not offer {sub}: {top:?}");
    }
    let run = line("run: ");
    for flag in ["--config", "--stats"] {
        assert!(run.iter().any(|w| w == flag), "`op25b run --<TAB>` does not offer {flag}: {run:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef op25b"), "zsh script header: {:?}", zsh.lines().next());
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.lines().any(|l| l.starts_with("complete -c op25b")), "fish script has no `complete -c op25b`");
    for sub in SUBCOMMANDS {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh script does not name {sub}");
        assert!(fish.contains(&format!("-a \"{sub}\"")), "fish script does not name {sub}");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = op25b(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"), "{out:?}");
}

#[test]
fn man_pages_are_roff_with_every_subcommand() {
    let page = stdout_of(&["man"]);
    assert!(page.lines().any(|l| l.starts_with(".TH op25b 1")), "no .TH line:\n{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no {section} in op25b(1)");
    }
    for sub in SUBCOMMANDS {
        assert!(page.contains(&format!("op25b\\-{sub}(1)")), "op25b(1) does not list {sub}");
        let sub_page = stdout_of(&["man", sub]);
        assert!(
            sub_page.lines().any(|l| l.starts_with(&format!(".TH op25b-{sub} 1"))),
            "op25b-{sub}(1) has no .TH line:\n{sub_page}"
        );
    }
    // The lab's own subcommands have pages too: op25b-lab(1) lists op25b-lab-up(1), ...
    let lab = stdout_of(&["man", "lab"]);
    for sub in ["up", "down", "status", "exec", "mail", "reload", "config", "demo", "traffic"] {
        assert!(lab.contains(&format!("op25b\\-lab\\-{sub}(1)")), "op25b-lab(1) does not list {sub}");
        let page = stdout_of(&["man", "lab", sub]);
        assert!(page.lines().any(|l| l.starts_with(&format!(".TH op25b-lab-{sub} 1"))), "op25b-lab-{sub}(1):\n{page}");
    }
    assert!(!lab.contains("op25b\\-lab\\-serve"), "op25b-lab(1) lists the hidden serve");
    let run = stdout_of(&["man", "run"]);
    assert!(run.contains("\\-\\-config") && run.contains("SIGHUP"), "op25b-run(1) lacks --config or SIGHUP:\n{run}");
    assert!(page.contains("RestartPreventExitStatus=2"), "op25b(1) does not say what exit status 2 means");
}

#[test]
fn man_of_an_unknown_subcommand_names_the_known_ones() {
    let out = op25b(&["man", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"frobnicate\"") && err.contains("run, check"), "{err}");
    assert!(out.stdout.is_empty(), "printed a page anyway");
}
