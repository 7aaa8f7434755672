//! Which `docker run` options a task may carry (`container_options`), and which images. The server
//! checks a submission with it (an admin's task skips the check) and the worker checks again before
//! running, with its own configuration and no exception: a worker never starts what its operator
//! did not allow.
//!
//! The rule is an allow-list: an option is accepted when it is one of `ALLOWED_FLAGS` or
//! `ALLOWED_SWITCHES`, or one the operator added (`--docker-allowed-options`). Values are checked
//! for the options that can reach the host: `--network`/`--net` (not `host`, not another
//! container's), `-v`/`--volume`/`--mount` (a bind source must be under `--docker-volume-roots`;
//! named volumes and volume drivers are refused). Options that would give a task the host
//! (`--privileged`, `--pid`, `--ipc`, `--cap-add`, `--device`, `--security-opt`, `--userns`, …)
//! are never on the built-in list. Pure: no I/O (paths are compared as written, after refusing
//! `..`), so that both sides reach the same answer.

use std::path::{Component, Path, PathBuf};

/// Options taking a value that any task may use (`--flag value`, `--flag=value`, `-fvalue`).
pub const ALLOWED_FLAGS: &[&str] = &[
    "-e",
    "--env",
    "-w",
    "--workdir",
    "-u",
    "--user",
    "--entrypoint",
    "--shm-size",
    "-m",
    "--memory",
    "--memory-swap",
    "--memory-reservation",
    "--cpus",
    "-c",
    "--cpu-shares",
    "--cpuset-cpus",
    "--gpus",
    "--ulimit",
    "--pids-limit",
    "--tmpfs",
    "-l",
    "--label",
    "-h",
    "--hostname",
    "--add-host",
    "--dns",
    "--dns-search",
    "--dns-option",
    "--platform",
    "--pull",
    "--stop-signal",
    "--stop-timeout",
    "--cap-drop",
    "--group-add",
    "--network",
    "--net",
    "-v",
    "--volume",
    "--mount",
];

/// Options without a value that any task may use.
pub const ALLOWED_SWITCHES: &[&str] = &[
    "--rm",
    "--init",
    "--read-only",
    "-i",
    "--interactive",
    "-t",
    "--tty",
    "-q",
    "--quiet",
];

/// Options refused with a reason of their own (the rest not on a list is "not allowed").
const DANGEROUS: &[(&str, &str)] = &[
    (
        "--privileged",
        "gives the container the host's devices and capabilities",
    ),
    (
        "--pid",
        "shares a process namespace with the host or another container",
    ),
    (
        "--ipc",
        "shares an IPC namespace with the host or another container",
    ),
    ("--uts", "shares the host's UTS namespace"),
    ("--userns", "changes the user namespace"),
    ("--cgroupns", "shares the host's cgroup namespace"),
    ("--cap-add", "adds kernel capabilities"),
    ("--device", "gives the container host devices"),
    ("--device-cgroup-rule", "gives the container host devices"),
    ("--security-opt", "disables confinement (seccomp, apparmor)"),
    ("--volumes-from", "mounts another container's volumes"),
    ("--env-file", "reads a file of the worker's host"),
    ("--name", "the worker names its containers"),
    ("-d", "a detached container escapes the worker's control"),
    (
        "--detach",
        "a detached container escapes the worker's control",
    ),
];

/// What a policy allows beyond the built-in lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerPolicy {
    /// Host folders below which `-v`/`--mount` bind sources may be; empty: no bind mount.
    pub volume_roots: Vec<PathBuf>,
    /// Options the operator allows besides the built-in ones (e.g. `--device`, `--runtime`),
    /// written as given on the command line (`--device`, `-p`). Their values are not checked.
    pub extra_allowed: Vec<String>,
}

/// Why a task's docker settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a valid shell-word list, or an option missing its value: the input is wrong.
    #[error("container options: {0}")]
    Malformed(String),
    /// A valid option the policy does not allow: a permission matter.
    #[error("container option {option} is not allowed: {reason}")]
    Forbidden { option: String, reason: String },
}

const HOW_TO_ALLOW: &str = "an admin may submit it, or the operator may add it with \
                            --docker-allowed-options";

/// At most 64 bytes of an input word, for messages.
fn clip(word: &str) -> String {
    if word.len() <= 64 {
        return word.to_string();
    }
    let mut end = 64;
    while !word.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &word[..end])
}

fn forbidden(option: &str, reason: impl Into<String>) -> Refusal {
    Refusal::Forbidden {
        option: clip(option),
        reason: reason.into(),
    }
}

/// An option name as the operator wrote it in a list (`device`, `--device`, `-p`, `--device=x`)
/// in the form the checker compares (`--device`, `-p`); None for an empty entry.
pub fn option_name(raw: &str) -> Option<String> {
    let name = raw.trim().split('=').next().unwrap_or("").trim();
    let bare = name.trim_start_matches('-');
    if bare.is_empty() {
        return None;
    }
    Some(if bare.chars().count() == 1 {
        format!("-{bare}")
    } else {
        format!("--{bare}")
    })
}

/// Checks a container image name: it must not look like an option (it is passed to
/// `docker run` as one argument, right after the options) nor hold whitespace or control
/// characters.
pub fn check_image(image: &str) -> Result<(), Refusal> {
    let image = image.trim();
    if image.starts_with('-') {
        return Err(Refusal::Malformed(
            "the container image must not start with '-'".into(),
        ));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Refusal::Malformed(
            "the container image must not hold spaces or control characters".into(),
        ));
    }
    Ok(())
}

/// Checks `options` (a shell-word string, as stored on the task) against `policy`.
pub fn check(options: &str, policy: &DockerPolicy) -> Result<(), Refusal> {
    let words = shell_words::split(options)
        .map_err(|e| Refusal::Malformed(format!("cannot split them into words: {e}")))?;
    check_words(&words, policy)
}

/// Checks options already split into words.
pub fn check_words(words: &[String], policy: &DockerPolicy) -> Result<(), Refusal> {
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        i += 1;
        if !word.starts_with('-') || word == "-" {
            return Err(Refusal::Malformed(format!(
                "{:?} is not an option (the image and command have their own fields)",
                clip(word)
            )));
        }
        if word == "--" {
            return Err(Refusal::Malformed(
                "'--' would end the options; the image has its own field".into(),
            ));
        }
        let (flag, inline): (String, Option<String>) = if let Some(long) = word.strip_prefix("--") {
            match long.split_once('=') {
                Some((name, value)) => (format!("--{name}"), Some(value.to_string())),
                None => (word.to_string(), None),
            }
        } else {
            // Short options: `-e` alone, `-eVALUE`, `-e=VALUE`, or clustered switches `-it`.
            let rest = &word[1..];
            let mut chars = rest.chars();
            let first = chars.next().unwrap_or('-');
            let flag = format!("-{first}");
            let tail = chars.as_str();
            if tail.is_empty() {
                (flag, None)
            } else if is_value_flag(&flag, policy) || !is_switch(&flag, policy) {
                (
                    flag,
                    Some(tail.strip_prefix('=').unwrap_or(tail).to_string()),
                )
            } else {
                // A cluster of switches: each must be a switch.
                for c in rest.chars() {
                    let f = format!("-{c}");
                    if !is_switch(&f, policy) {
                        return Err(refuse_flag(&f));
                    }
                }
                continue;
            }
        };
        if policy.extra_allowed.iter().any(|a| a == &flag) {
            // Whether an operator's option takes a value is not known: a following word that
            // is not an option is taken as its value.
            if inline.is_none() && words.get(i).is_some_and(|w| !w.starts_with('-')) {
                i += 1;
            }
            continue;
        }
        if is_switch(&flag, policy) && inline.is_none() {
            continue;
        }
        if is_switch(&flag, policy) && !is_value_flag(&flag, policy) {
            // `--rm=true` style: accepted for switches docker treats as booleans.
            continue;
        }
        if !is_value_flag(&flag, policy) {
            return Err(refuse_flag(&flag));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let Some(v) = words.get(i) else {
                    return Err(Refusal::Malformed(format!("{} needs a value", clip(&flag))));
                };
                i += 1;
                v.clone()
            }
        };
        check_value(&flag, &value, policy)?;
    }
    Ok(())
}

fn is_switch(flag: &str, policy: &DockerPolicy) -> bool {
    ALLOWED_SWITCHES.contains(&flag) || policy.extra_allowed.iter().any(|a| a == flag)
}

fn is_value_flag(flag: &str, policy: &DockerPolicy) -> bool {
    ALLOWED_FLAGS.contains(&flag) || policy.extra_allowed.iter().any(|a| a == flag)
}

fn refuse_flag(flag: &str) -> Refusal {
    match DANGEROUS.iter().find(|(f, _)| *f == flag) {
        Some((_, why)) => forbidden(flag, format!("it {why}; {HOW_TO_ALLOW}")),
        None => forbidden(
            flag,
            format!("it is not on the allow-list of container options; {HOW_TO_ALLOW}"),
        ),
    }
}

fn check_value(flag: &str, value: &str, policy: &DockerPolicy) -> Result<(), Refusal> {
    match flag {
        "--network" | "--net" => {
            let v = value.trim().to_ascii_lowercase();
            if v == "host" || v.starts_with("container:") {
                return Err(forbidden(
                    &format!("{flag} {value}"),
                    format!(
                        "it shares the network of the host or of another container; {HOW_TO_ALLOW}"
                    ),
                ));
            }
            Ok(())
        }
        "-v" | "--volume" => check_volume(flag, value, policy),
        "--mount" => check_mount(value, policy),
        _ => Ok(()),
    }
}

/// `-v [source:]target[:mode]`: one part is an anonymous volume (allowed); a source that is
/// an absolute path must be under a root; a named volume is refused.
fn check_volume(flag: &str, value: &str, policy: &DockerPolicy) -> Result<(), Refusal> {
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() == 1 {
        return Ok(());
    }
    check_bind_source(&format!("{flag} {value}"), parts[0], policy)
}

/// `--mount type=…,source=…,target=…`: tmpfs and anonymous volumes are allowed; bind sources
/// must be under a root; named volumes and volume options (which can bind any host path) are
/// refused.
fn check_mount(value: &str, policy: &DockerPolicy) -> Result<(), Refusal> {
    let shown = format!("--mount {value}");
    let mut kind = "volume".to_string();
    let mut source: Option<&str> = None;
    for kv in value.split(',') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "type" => kind = v.trim().to_ascii_lowercase(),
            "source" | "src" => source = Some(v),
            k if k.starts_with("volume-") || k.starts_with("bind-propagation") => {
                return Err(forbidden(
                    &shown,
                    format!("{k} can reach host paths; {HOW_TO_ALLOW}"),
                ));
            }
            _ => {}
        }
    }
    match (kind.as_str(), source) {
        ("tmpfs", _) => Ok(()),
        ("volume", None) => Ok(()),
        ("bind", Some(src)) => check_bind_source(&shown, src, policy),
        ("bind", None) => Err(Refusal::Malformed(format!(
            "{}: a bind needs a source",
            clip(&shown)
        ))),
        ("volume", Some(src)) => check_bind_source(&shown, src, policy),
        (other, _) => Err(forbidden(
            &shown,
            format!(
                "mount type {:?} is not allowed; {HOW_TO_ALLOW}",
                clip(other)
            ),
        )),
    }
}

fn check_bind_source(shown: &str, source: &str, policy: &DockerPolicy) -> Result<(), Refusal> {
    let path = Path::new(source);
    if !path.is_absolute() {
        return Err(forbidden(
            shown,
            format!(
                "named volumes are not allowed (bind a folder under --docker-volume-roots); {HOW_TO_ALLOW}"
            ),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(forbidden(shown, "'..' is not allowed in a mount source"));
    }
    if policy
        .volume_roots
        .iter()
        .any(|root| path.starts_with(root))
    {
        return Ok(());
    }
    let roots = if policy.volume_roots.is_empty() {
        "none configured".to_string()
    } else {
        policy
            .volume_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(forbidden(
        shown,
        format!(
            "the source is outside the configured roots ({roots}); set --docker-volume-roots \
             or have an admin submit the task"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> DockerPolicy {
        DockerPolicy::default()
    }

    fn rooted() -> DockerPolicy {
        DockerPolicy {
            volume_roots: vec!["/data".into(), "/scratch/shared".into()],
            extra_allowed: Vec::new(),
        }
    }

    fn forbidden_for(opts: &str, policy: &DockerPolicy) -> bool {
        matches!(check(opts, policy), Err(Refusal::Forbidden { .. }))
    }

    #[test]
    fn ordinary_options_pass() {
        for opts in [
            "",
            "--gpus all --shm-size 2g",
            "-e A=1 -e B=2 --env=C=3 -eD=4",
            "--tmpfs /tmp --tmpfs=/run:size=1g",
            "-it --rm --init",
            "--network bridge",
            "--net=none",
            "-u 1000:1000 -w /work --memory 4g --cpus 2",
            "-v /anonymous",
            "--mount type=tmpfs,target=/x",
            "--cap-drop ALL",
        ] {
            assert_eq!(check(opts, &plain()), Ok(()), "{opts}");
        }
    }

    #[test]
    fn host_reaching_options_are_refused() {
        for opts in [
            "--privileged",
            "--pid host",
            "--pid=host",
            "--ipc host",
            "--ipc=container:x",
            "--network host",
            "--network=host",
            "--net=host",
            "--net HOST",
            "--network container:abc",
            "--cap-add SYS_ADMIN",
            "--cap-add=ALL",
            "--device /dev/sda",
            "--security-opt seccomp=unconfined",
            "--userns host",
            "--uts=host",
            "--volumes-from other",
            "--env-file /etc/taskqueue/env",
            "-d",
            "-itd",
            "--name other",
            "-v /:/host",
            "-v /etc:/etc:ro",
            "--volume=/var/run/docker.sock:/var/run/docker.sock",
            "-v/root:/r",
            "--mount type=bind,source=/,target=/host",
            "--mount type=volume,source=named,target=/x",
            "--mount type=volume,target=/x,volume-opt=device=/etc,volume-opt=o=bind",
            "-v named:/x",
            "--gpus all --privileged",
            "--runtime runsc",
            "-p 80:80",
        ] {
            assert!(forbidden_for(opts, &plain()), "{opts}");
        }
    }

    #[test]
    fn bind_mounts_under_roots_only() {
        let p = rooted();
        assert_eq!(check("-v /data/ref:/ref:ro", &p), Ok(()));
        assert_eq!(
            check("--mount type=bind,source=/scratch/shared/x,target=/x", &p),
            Ok(())
        );
        assert!(forbidden_for("-v /data/../etc:/x", &p));
        assert!(
            forbidden_for("-v /database:/x", &p),
            "a prefix is not a parent"
        );
        assert!(forbidden_for("-v /scratch:/x", &p));
        let msg = check("-v /etc:/x", &p).unwrap_err().to_string();
        assert!(msg.contains("--docker-volume-roots"), "{msg}");
    }

    #[test]
    fn the_operator_may_allow_more() {
        let p = DockerPolicy {
            extra_allowed: vec!["--device".into(), "--privileged".into()],
            ..DockerPolicy::default()
        };
        assert_eq!(check("--device /dev/nvidia0 --privileged", &p), Ok(()));
        assert!(forbidden_for("--cap-add ALL", &p));
    }

    #[test]
    fn malformed_options_are_invalid_not_forbidden() {
        for opts in [
            "--env \"X",
            "-e",
            "image:latest",
            "-- --privileged",
            "--memory",
        ] {
            assert!(
                matches!(check(opts, &plain()), Err(Refusal::Malformed(_))),
                "{opts}"
            );
        }
    }

    #[test]
    fn option_names_are_normalised() {
        assert_eq!(option_name("device").as_deref(), Some("--device"));
        assert_eq!(option_name("--device=/dev/x").as_deref(), Some("--device"));
        assert_eq!(option_name(" -p ").as_deref(), Some("-p"));
        assert_eq!(option_name("p").as_deref(), Some("-p"));
        assert_eq!(option_name("--").as_deref(), None);
        assert_eq!(option_name("").as_deref(), None);
    }

    #[test]
    fn images_cannot_pass_for_options() {
        assert_eq!(check_image("ubuntu:24.04"), Ok(()));
        assert_eq!(check_image("registry.example/a/b@sha256:00"), Ok(()));
        assert!(check_image("--privileged").is_err());
        assert!(check_image("ubuntu --privileged").is_err());
        assert!(check_image("ubuntu\n").is_ok(), "trimmed");
    }

    #[test]
    fn messages_stay_short() {
        let long = format!("--{}", "x".repeat(10_000));
        let msg = check(&long, &plain()).unwrap_err().to_string();
        assert!(msg.len() < 400, "{}", msg.len());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = check(&s, &rooted());
            let _ = check_image(&s);
        }
    }
}
