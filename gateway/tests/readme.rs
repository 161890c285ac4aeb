//! The gateway's README says what the binary does: its flags table lists every flag of
//! `--help` with its value name, default and environment variable, and its commands parse.

mod support;

use std::collections::BTreeSet;

use clap::CommandFactory;
use stream_deadline_gateway::config::Flags;

const README: &str = include_str!("../README.md");

/// The rows of the flags table: (flag, value name, default), as written.
fn table() -> Vec<(String, Option<String>, String)> {
    README
        .lines()
        .skip_while(|line| *line != "| flag | default | meaning |")
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let flag = cells[1].trim_matches('`');
            let (flag, value) = match flag.split_once(' ') {
                Some((flag, value)) => (flag, Some(value.to_owned())),
                None => (flag, None),
            };
            (
                flag.to_owned(),
                value,
                cells[2].trim_matches('`').to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_flags_table_lists_every_flag_of_help_with_its_value_name_default_and_environment() {
    let help = support::help();
    let in_help: BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split([' ', ',', '=']).find(|w| w.starts_with("--")))
        .filter(|flag| !matches!(*flag, "--help" | "--version"))
        .map(str::to_owned)
        .collect();
    let table = table();
    let in_table: BTreeSet<String> = table.iter().map(|(flag, ..)| flag.clone()).collect();
    assert_eq!(
        in_table, in_help,
        "the README's flags table and --help differ"
    );

    let command = Flags::command();
    for (flag, value, default) in &table {
        let long = flag.trim_start_matches("--");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .unwrap_or_else(|| panic!("{flag} is not a flag"));
        let value_name = arg
            .get_value_names()
            .filter(|_| arg.get_action().takes_values())
            .and_then(|names| names.first())
            .map(|name| name.to_string());
        assert_eq!(&value_name, value, "{flag}: the value name");
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        // A switch is off unless given; a value without a default is `none`.
        let expected = match (arg.get_action().takes_values(), defaults.is_empty()) {
            (false, _) => vec!["off".to_owned()],
            (true, true) => vec!["none".to_owned()],
            (true, false) => defaults,
        };
        assert_eq!(
            expected,
            std::slice::from_ref(default),
            "{flag}: the default"
        );
        let env = format!("STREAM_DEADLINE_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().map(|env| env.to_string_lossy().into_owned()),
            Some(env),
            "{flag}: the environment variable the README's rule names"
        );
    }
}

#[test]
fn the_readme_s_gateway_commands_parse() {
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in README.lines() {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        let code = line.split(" #").next().unwrap_or_default().trim();
        match code.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(code);
                if pending.starts_with("stream-deadline-gateway ") {
                    commands.push(std::mem::take(&mut pending));
                }
                pending.clear();
            }
        }
    }
    assert!(!commands.is_empty(), "no gateway command in the README");
    for command in commands {
        if let Err(err) = Flags::try_from_iter(command.split_whitespace()) {
            panic!("`{command}` does not parse: {err}");
        }
    }
}

#[test]
fn the_readme_s_policy_file_loads() {
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in README.lines() {
        match (&mut block, line) {
            (None, "```toml") => block = Some(String::new()),
            (Some(text), "```") => {
                blocks.push(std::mem::take(text));
                block = None;
            }
            (Some(text), line) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(!blocks.is_empty(), "the README shows a policy file");
    for (i, text) in blocks.iter().enumerate() {
        let path = std::env::temp_dir().join(format!(
            "stream-deadline-gateway-readme-{}-{i}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        let flags = Flags::try_from_iter(["gw", "--config", path.to_str().unwrap()]);
        let flags = flags.unwrap_or_else(|err| panic!("the README's policy file: {err}\n{text}"));
        let members = stream_deadline_gateway::pool::Members::default();
        let policies = stream_deadline_gateway::policy::Policies::load(&flags, &members);
        let _ = std::fs::remove_file(&path);
        assert!(policies.unwrap().models().count() >= 1, "{text}");
    }
}
