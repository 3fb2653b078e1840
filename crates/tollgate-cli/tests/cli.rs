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

/// `bench` sends its load from a process of its own (with the simulated
/// upstream), and reports the gateway process's CPU time per request.
#[test]
fn bench_runs_its_load_generator_in_a_process_of_its_own() {
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "bench",
            "--rates",
            "200",
            "--secs",
            "0.5",
            "--only",
            "tollgate-memory",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the tollgate binary runs");
    let bench_pid = child.id();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{}{}", out, stderr(&o));
    let generator_pid: u32 = out
        .split("load generator: process ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no generator process in:\n{out}"));
    assert_ne!(generator_pid, bench_pid, "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("tollgate-memory") && l.trim_start().starts_with("200"))
        .unwrap_or_else(|| panic!("no tollgate-memory row in:\n{out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // ok, then the load generator's and the gateway's CPU µs per request
    // (numbers), then the Redis columns (not measured without a Redis store).
    assert_eq!(cols[6], "100", "{row}");
    for (col, what) in [
        (cols.len() - 4, "load generator"),
        (cols.len() - 3, "gateway"),
    ] {
        let cpu: f64 = cols[col]
            .parse()
            .unwrap_or_else(|_| panic!("no {what} CPU in {row}"));
        assert!(cpu > 0.0, "{what} CPU: {row}");
    }
    assert_eq!(&cols[cols.len() - 2..], ["-", "-"], "{row}");
}
