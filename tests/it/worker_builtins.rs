//! The shell helpers (`std.sh`, `bio.sh`) as task commands use them, run by real shells: dash,
//! `busybox sh` and bash (each one that is installed; dash and bash at least). No server needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use taskqueue::worker::builtin;

/// The shells to check, as argv prefixes; dash and bash must exist, busybox when installed.
fn shells() -> Vec<Vec<&'static str>> {
    let mut out = vec![vec!["dash"], vec!["bash"]];
    if Command::new("busybox").arg("true").status().is_ok() {
        out.push(vec!["busybox", "sh"]);
    }
    out
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `script` under `shell` with the helpers installed in a fresh store, as `$B`.
fn run(shell: &[&str], script: &str) -> Run {
    let store = tempfile::tempdir().unwrap();
    let dir: PathBuf = builtin::install(store.path()).unwrap();
    let out = Command::new(shell[0])
        .args(&shell[1..])
        .arg("-c")
        .arg(script)
        .env("B", &dir)
        .current_dir(store.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shell:?}: {e}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn each(script: &str, check: impl Fn(&[&str], Run)) {
    for shell in shells() {
        check(&shell, run(&shell, script));
    }
}

#[test]
fn sourcing_std_turns_strict_mode_on() {
    each(
        ". \"$B/std.sh\"; echo before; false; echo after",
        |sh, r| {
            assert_eq!(r.code, 1, "{sh:?}: {}", r.stderr);
            assert_eq!(r.stdout, "before\n", "{sh:?}");
            assert!(
                r.stderr.is_empty(),
                "{sh:?}: no error from pipefail: {}",
                r.stderr
            );
        },
    );
}

#[test]
fn pipefail_where_the_shell_has_it_and_never_an_error_where_not() {
    // `false | true` fails only under pipefail: bash and busybox have it, dash does not.
    each(". \"$B/std.sh\"; false | true; echo survived", |sh, r| {
        let has_pipefail = sh[0] != "dash";
        assert!(r.stderr.is_empty(), "{sh:?}: {}", r.stderr);
        if has_pipefail {
            assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{sh:?}");
        } else {
            assert_eq!((r.code, r.stdout.as_str()), (0, "survived\n"), "{sh:?}");
        }
    });
    each(
        ". \"$B/std.sh\"; _nostrict; false | true; false; echo off; _strict; echo on; false; echo never",
        |sh, r| {
            assert_eq!(r.code, 1, "{sh:?}: {}", r.stderr);
            assert_eq!(r.stdout, "off\non\n", "{sh:?}");
        },
    );
}

#[test]
fn canfail_runs_one_command_without_strict_mode_and_restores_the_previous_mode() {
    each(
        ". \"$B/std.sh\"; _canfail sh -c 'exit 4'; echo \"rc=$? flags=$-\"; \
         _nostrict; _canfail false; echo \"still off: $-\"; false; echo off-ok; \
         _strict; _canfail; false; echo \"no argument = _nostrict\"",
        |sh, r| {
            assert_eq!(r.code, 0, "{sh:?}: {}", r.stderr);
            let lines: Vec<&str> = r.stdout.lines().collect();
            assert!(lines[0].starts_with("rc=0 flags="), "{sh:?}: {lines:?}");
            assert!(
                lines[0].split("flags=").nth(1).unwrap().contains('e'),
                "{sh:?}: -e back on"
            );
            assert!(
                !lines[1].split(": ").nth(1).unwrap().contains('e'),
                "{sh:?}: strict mode stays off after _canfail when it was off: {lines:?}"
            );
            assert_eq!(&lines[2..], ["off-ok", "no argument = _nostrict"], "{sh:?}");
        },
    );
    // pipefail is restored too, where the shell has it.
    each(
        ". \"$B/std.sh\"; _canfail false; false | true; echo after",
        |sh, r| {
            if sh[0] == "dash" {
                assert_eq!(r.code, 0, "{sh:?}");
            } else {
                assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{sh:?}");
            }
        },
    );
}

#[test]
fn para_and_wait_report_each_failure_and_return_the_first_code() {
    each(
        ". \"$B/std.sh\"; _para sh -c 'sleep 0.2; exit 3'; _para true; \
         _para sh -c 'exit 5'; _wait; echo never",
        |sh, r| {
            assert_eq!(r.code, 3, "{sh:?}: {}", r.stderr);
            assert_eq!(r.stdout, "", "{sh:?}");
            let lines: Vec<&str> = r.stderr.lines().collect();
            assert_eq!(lines.len(), 2, "{sh:?}: {lines:?}");
            assert!(
                lines[0].starts_with("Command failed (PID ")
                    && lines[0].ends_with("): sh -c sleep 0.2; exit 3"),
                "{sh:?}: {lines:?}"
            );
            assert!(lines[1].ends_with("): sh -c exit 5"), "{sh:?}: {lines:?}");
        },
    );
    // The PIDs in the messages are the commands' ones; all succeeding: 0 and silence.
    each(
        ". \"$B/std.sh\"; _para sh -c 'exit 2'; p=$!; _canfail _wait; echo \"pid=$p\"; \
         _para true; _para sleep 0.1; _wait; echo \"all ok $?\"",
        |sh, r| {
            assert_eq!(r.code, 0, "{sh:?}: {}", r.stderr);
            let pid = r.stdout.lines().next().unwrap().trim_start_matches("pid=");
            assert_eq!(
                r.stderr.trim(),
                format!("Command failed (PID {pid}): sh -c exit 2"),
                "{sh:?}"
            );
            assert!(r.stdout.ends_with("all ok 0\n"), "{sh:?}: {}", r.stdout);
        },
    );
}

#[test]
fn retry_counts_attempts_and_returns_the_last_code() {
    let script = |args: &str, succeed_at: u32| {
        format!(
            ". \"$B/std.sh\"; n=0; f() {{ n=$((n + 1)); echo try >> tries; [ \"$n\" -ge {succeed_at} ] || return 7; }}; \
             _retry {args} f; echo \"rc=$? n=$n\""
        )
    };
    for shell in shells() {
        let sh = shell.as_slice();
        // Fails every time: MAX attempts, then the command's code (strict mode off to see it).
        let r = run(
            sh,
            &script("3 0", 99).replace("_retry", "_nostrict; _retry"),
        );
        assert_eq!(r.stdout, "rc=7 n=3\n", "{sh:?}: {}", r.stderr);
        // Succeeds at the third attempt.
        let r = run(sh, &script("5 0", 3));
        assert_eq!((r.code, r.stdout.as_str()), (0, "rc=0 n=3\n"), "{sh:?}");
        // MAX alone: DELAY stays 1 s, MAX 1 means a single attempt (no pause).
        let r = run(sh, &script("1", 99).replace("_retry", "_nostrict; _retry"));
        assert_eq!(r.stdout, "rc=7 n=1\n", "{sh:?}");
        // Under strict mode a final failure stops the script.
        let r = run(sh, &script("2 0", 99));
        assert_eq!((r.code, r.stdout.as_str()), (7, ""), "{sh:?}");
    }
}

#[test]
fn retry_defaults_to_five_attempts_one_second_apart() {
    // Once, with the real defaults: 5 attempts, 4 pauses of 1 s.
    let started = std::time::Instant::now();
    let r = run(
        &["dash"],
        ". \"$B/std.sh\"; _nostrict; n=0; f() { n=$((n + 1)); return 1; }; _retry f; echo \"rc=$? n=$n\"",
    );
    assert_eq!(r.stdout, "rc=1 n=5\n", "{}", r.stderr);
    let took = started.elapsed().as_secs_f64();
    assert!((3.5..15.0).contains(&took), "took {took}s");
}

fn pairs(files: &str) -> (i32, String) {
    let mut seen = None;
    for shell in shells() {
        let r = run(
            &shell,
            &format!(
                ". \"$B/bio.sh\"; _find_pairs {files}; rc=$?; \
                 printf '%s\\n' \"rc=$rc\" \"R1=$READS1\" \"R2=$READS2\" \"EXTRA=$EXTRA\""
            ),
        );
        assert!(r.stderr.is_empty(), "{shell:?}: {}", r.stderr);
        let got = (r.code, r.stdout);
        if let Some(prev) = &seen {
            assert_eq!(&got, prev, "{shell:?} agrees with the other shells");
        }
        seen = Some(got);
    }
    seen.unwrap()
}

#[test]
fn find_pairs_tries_each_separator_in_turn() {
    let expect = |rc: i32, r1: &str, r2: &str, extra: &str| {
        (0, format!("rc={rc}\nR1={r1}\nR2={r2}\nEXTRA={extra}\n"))
    };
    assert_eq!(
        pairs("/input/x_1.fastq.gz /input/x_2.fastq.gz"),
        expect(0, "/input/x_1.fastq.gz", "/input/x_2.fastq.gz", "")
    );
    assert_eq!(
        pairs("x.1.fq.gz x.2.fq.gz y.1.fq.gz y.2.fq.gz"),
        expect(0, "x.1.fq.gz y.1.fq.gz", "x.2.fq.gz y.2.fq.gz", "")
    );
    assert_eq!(
        pairs("xR1.fastq.gz xR2.fastq.gz"),
        expect(0, "xR1.fastq.gz", "xR2.fastq.gz", "")
    );
    assert_eq!(
        pairs("xr1.fq.gz xr2.fq.gz"),
        expect(0, "xr1.fq.gz", "xr2.fq.gz", "")
    );
    assert_eq!(
        pairs("x1.fq.gz x2.fq.gz"),
        expect(0, "x1.fq.gz", "x2.fq.gz", "")
    );
    // Unpaired files are EXTRA, the separator found first wins.
    assert_eq!(
        pairs("x_1.fastq.gz x_2.fastq.gz single.fastq.gz notes.txt y1.fq.gz"),
        expect(
            0,
            "x_1.fastq.gz",
            "x_2.fastq.gz",
            "single.fastq.gz notes.txt y1.fq.gz"
        )
    );
    // `_` gives 2 and 1, `.` 0: falls through to `R`, which pairs.
    assert_eq!(
        pairs("a_1.fq.gz b_1.fq.gz b_2.fq.gz cR1.fq.gz cR2.fq.gz"),
        expect(0, "cR1.fq.gz", "cR2.fq.gz", "a_1.fq.gz b_1.fq.gz b_2.fq.gz")
    );
}

#[test]
fn find_pairs_returns_1_when_no_separator_pairs() {
    let expect_none = |files: &str| (0, format!("rc=1\nR1=\nR2=\nEXTRA={files}\n"));
    for files in [
        "x_1.fastq.gz x_2.fastq.gz y_1.fastq.gz",
        "x1.fq.gz y_1.fq.gz y2.fq.gz",
        "single.fastq.gz",
        "x_1.fastq x_2.fastq",
    ] {
        assert_eq!(pairs(files), expect_none(files), "{files}");
    }
}

#[test]
fn the_installed_files_are_the_shipped_ones() {
    let store = tempfile::tempdir().unwrap();
    let dir = builtin::install(store.path()).unwrap();
    for (name, text) in builtin::SCRIPTS {
        assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), text);
    }
    assert!(Path::new(&dir).join("std.sh").is_file());
}
