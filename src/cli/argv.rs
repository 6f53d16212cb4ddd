//! The command line before clap sees it: the reference tool's verbosity forms and its
//! configuration files.
//!
//! - `-v`, `-vv`..., `-vN` become `--verbosity` (once per `v`) and `--verbosity=N`, which clap
//!   parses in order ([`verbosity_level`] applies them as the reference tool does).
//! - `--config FILE` is read in the reference tool's format: one option per line without its
//!   leading dashes, then its value(s); words separated by blanks, `"..."` quotes a word with
//!   blanks, and a word starting with `#` starts a comment. Its options go right after the
//!   command name, so that options written on the command line override them.
//! - Options written before the command name (`crust -D DIR -v4 restore`, which the reference
//!   tool takes) are moved after it, where clap reads them.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};

/// The default level of the reference tool (warnings), and crust's.
pub const DEFAULT_LEVEL: u32 = 2;

/// Rewrites the verbosity forms, moves options given before the command after it and expands
/// `--config` files. `commands` are the names of the subcommands, `valued` the options that
/// take a value in the next word.
pub fn expand(args: Vec<OsString>, commands: &[&str], valued: &[&str]) -> Result<Vec<OsString>> {
    let mut args: Vec<OsString> = args.into_iter().flat_map(rewrite_verbosity).collect();
    let command = command_index(&args, commands, valued);
    if let Some(i) = command {
        args[1..=i].rotate_right(1);
    }
    let Some(file) = config_file(&args) else { return Ok(args) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("--config {}: cannot read it", file.display()))?;
    let options = parse_config(&text).with_context(|| format!("--config {}", file.display()))?;
    let at = if command.is_some() { 2 } else { args.len() };
    args.splice(at..at, options.into_iter().flat_map(rewrite_verbosity));
    Ok(args)
}

/// `-v`, `-vvv` and `-v4` in the long forms clap reads in order.
fn rewrite_verbosity(arg: OsString) -> Vec<OsString> {
    let Some(text) = arg.to_str() else { return vec![arg] };
    let Some(rest) = text.strip_prefix("-v") else { return vec![arg] };
    if rest.chars().all(|c| c == 'v') {
        vec![OsString::from("--verbosity"); rest.len() + 1]
    } else if rest.chars().all(|c| c.is_ascii_digit()) {
        vec![OsString::from(format!("--verbosity={rest}"))]
    } else {
        vec![arg]
    }
}

/// The last `--config FILE` or `--config=FILE` given (the reference tool reads one).
fn config_file(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        match arg.to_str() {
            Some("--config") => found = args.get(i + 1).map(std::path::PathBuf::from),
            Some(a) if a.starts_with("--config=") => found = Some(Path::new(&a["--config=".len()..]).to_owned()),
            _ => {}
        }
    }
    found
}

/// Where the subcommand's name is: the first word naming one that is not the value of a global
/// option.
fn command_index(args: &[OsString], commands: &[&str], valued: &[&str]) -> Option<usize> {
    (1..args.len()).find(|&i| {
        let word = args[i].to_str().unwrap_or_default();
        let after_valued = args[i - 1].to_str().is_some_and(|prev| valued.contains(&prev));
        commands.contains(&word) && !after_valued
    })
}

/// Options and values of a configuration file, in order, as command-line words (an option
/// with one value as `--option=value`).
pub fn parse_config(text: &str) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = split_words(line).with_context(|| format!("line {}", n + 1))?.into_iter();
        let Some(option) = words.next() else { continue };
        let values: Vec<String> = words.collect();
        // One value is attached with `=`, which options with an optional value need.
        match values.as_slice() {
            [value] => out.push(OsString::from(format!("--{option}={value}"))),
            _ => {
                out.push(OsString::from(format!("--{option}")));
                out.extend(values.into_iter().map(OsString::from));
            }
        }
    }
    Ok(out)
}

/// The words of one line up to a comment; `"..."` keeps blanks, `\"` inside it is a quote.
fn split_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(words),
            Some('"') => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        Some('\\') if chars.peek() == Some(&'"') => word.push(chars.next().unwrap_or('"')),
                        Some('"') => break,
                        Some(c) => word.push(c),
                        None => anyhow::bail!("a quote is not closed"),
                    }
                }
                words.push(word);
            }
            Some(_) => {
                let mut word = String::new();
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    word.push(c);
                }
                words.push(word);
            }
        }
    }
}

/// The reference tool's log level after the `--verbosity` values given, in order: empty adds
/// one, a number sets it.
pub fn verbosity_level<'a>(values: impl IntoIterator<Item = &'a String>) -> Result<u32> {
    let mut level = DEFAULT_LEVEL;
    for v in values {
        level = match v.as_str() {
            "" => level + 1,
            n => n.parse().with_context(|| format!("-v{n}: the level is a number (0 to 4)"))?,
        };
    }
    Ok(level)
}

/// crust's log filter for a level: 0 and 1 errors, 2 warnings, 3 information, 4 debug, 5 and
/// more everything.
pub fn level_filter(level: u32) -> &'static str {
    match level {
        0 | 1 => "error",
        2 => "warn",
        3 => "info",
        4 => "debug",
        _ => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn verbosity_forms_become_long_options() {
        let out: Vec<OsString> = words(&["crust", "-v4", "dump", "-vvv", "-v", "-vx"]).into_iter().flat_map(rewrite_verbosity).collect();
        let expected = ["crust", "--verbosity=4", "dump", "--verbosity", "--verbosity", "--verbosity", "--verbosity", "-vx"];
        assert_eq!(out, words(&expected));
    }

    #[test]
    fn verbosity_levels_apply_in_order() {
        let v = |vals: &[&str]| verbosity_level(vals.iter().map(|s| s.to_string()).collect::<Vec<_>>().iter()).unwrap();
        assert_eq!(v(&[]), 2);
        assert_eq!(v(&[""]), 3);
        assert_eq!(v(&["", ""]), 4);
        assert_eq!(v(&["0"]), 0);
        assert_eq!(v(&["4", ""]), 5);
        assert_eq!(v(&["", "1"]), 1);
    }

    #[test]
    fn options_before_the_command_move_after_it() {
        let out = expand(words(&["crust", "-D", "restore", "-v4", "restore", "-d"]), &["dump", "restore"], &["-D"]).unwrap();
        assert_eq!(out, words(&["crust", "restore", "-D", "restore", "--verbosity=4", "-d"]));
        let out = expand(words(&["crust", "--version"]), &["dump"], &[]).unwrap();
        assert_eq!(out, words(&["crust", "--version"]));
    }

    #[test]
    fn config_lines_become_options() {
        let text = "# a comment\ntcp-established\n  log-file \"my log\" # trailing\n\nghost-limit 1M\nverbosity 4\n";
        let out = parse_config(text).unwrap();
        assert_eq!(out, words(&["--tcp-established", "--log-file=my log", "--ghost-limit=1M", "--verbosity=4"]));
        assert!(parse_config("log-file \"open").is_err());
    }

    #[test]
    fn config_options_go_after_the_command_name() {
        let dir = std::env::temp_dir().join(format!("crust-argv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.conf");
        std::fs::write(&file, "file-locks\n").unwrap();
        let args = words(&["crust", "-o", "dump", "dump", "--config", file.to_str().unwrap(), "-t", "1"]);
        let out = expand(args, &["dump", "restore"], &["-o"]).unwrap();
        assert_eq!(out[..5], words(&["crust", "dump", "--file-locks", "-o", "dump"])[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
