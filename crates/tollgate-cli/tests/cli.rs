//! The `tollgate` command line: help on every subcommand, the key hash, and
//! clear errors for what it does not know.

use std::process::{Command, Output};

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("the tollgate binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_subcommand_answers_help_with_its_usage_and_success() {
    for args in [
        &["help"][..],
        &["--help"],
        &["serve", "--help"],
        &["hash-key", "--help"],
        &["bench", "--help"],
        &["upstream-sim", "--help"],
        &["upstream-sim", "-h"],
    ] {
        let o = tollgate(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("usage"), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn hash_key_prints_the_sha256_of_the_key() {
    let o = tollgate(&["hash-key", "abc"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn unknown_commands_and_options_fail_with_a_message_naming_them() {
    for (args, named) in [
        (&["frobnicate"][..], "\"frobnicate\""),
        (&["serve", "--bogus"], "\"--bogus\""),
        (&["upstream-sim", "--bogus", "1"], "\"--bogus\""),
        (&["upstream-sim", "--port"], "--port needs a value"),
        (&["hash-key"], "usage: tollgate hash-key KEY"),
    ] {
        let o = tollgate(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(named), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}
