//! The command line as clap reads it: every reference-tool option on both commands, the
//! refusals, the verbosity forms, the `--no-` forms and the lease options.

use super::criu::{CRIU_OPTIONS, Class, Pipeline, Takes};
use super::*;

fn parse(args: &[&str]) -> Result<(Cli, ArgMatches), clap::Error> {
    let names = ["dump", "restore", "lease", "show", "check"];
    let words: Vec<std::ffi::OsString> = std::iter::once("crust").chain(args.iter().copied()).map(Into::into).collect();
    let valued = valued_options(&command());
    let valued: Vec<&str> = valued.iter().map(String::as_str).collect();
    let words = argv::expand(words, &names, &valued).expect("expand");
    let matches = command().try_get_matches_from(words)?;
    Ok((Cli::from_arg_matches(&matches)?, matches))
}

/// The words of a dump or restore command that give option `o` (with a value if it takes one).
fn words_with(pipeline: Pipeline, o: &super::criu::CriuOption) -> Vec<String> {
    let mut words: Vec<String> = match pipeline {
        Pipeline::Dump => ["dump", "-t", "1", "-D", "/tmp/x"].map(String::from).to_vec(),
        Pipeline::Restore => ["restore", "-D", "/tmp/x"].map(String::from).to_vec(),
    };
    let value = match o.long {
        "inherit-fd" => "fd[0]:pipe:[1]",
        "file-validation" => "filesize",
        "cpu-cap" => "none",
        "manage-cgroups" => "ignore",
        "network-lock" => "skip",
        "ghost-limit" => "1M",
        "work-dir" | "images-dir" => "/tmp",
        "config" => "/dev/null",
        _ => "1",
    };
    match o.takes {
        Takes::Nothing => words.push(format!("--{}", o.long)),
        Takes::Value(_) => words.extend([format!("--{}", o.long), value.to_string()]),
        Takes::OptionalValue(_) => words.push(format!("--{}={value}", o.long)),
    }
    words
}

#[test]
fn every_criu_option_parses_on_dump_and_restore() {
    for pipeline in [Pipeline::Dump, Pipeline::Restore] {
        for o in CRIU_OPTIONS {
            let words = words_with(pipeline, o);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let (_, matches) = parse(&words).unwrap_or_else(|e| panic!("{words:?}: {e}"));
            let refused = permits(&matches).err();
            match o.class(pipeline) {
                Class::Refused(_) => {
                    let e = refused.unwrap_or_else(|| panic!("{words:?} was not refused"));
                    assert!(e.to_string().starts_with(&format!("--{} is not supported yet (", o.long)), "{words:?}: {e}");
                }
                _ => assert!(refused.is_none(), "{words:?} was refused: {refused:?}"),
            }
        }
    }
}

#[test]
fn negations_are_accepted_and_the_last_one_wins() {
    let (_, m) = parse(&["restore", "-D", "x", "--evasive-devices", "--no-evasive-devices"]).unwrap();
    assert!(permits(&m).is_ok(), "--no-evasive-devices after --evasive-devices");
    let (_, m) = parse(&["restore", "-D", "x", "--no-evasive-devices", "--evasive-devices"]).unwrap();
    assert!(permits(&m).is_err(), "--evasive-devices after --no-evasive-devices");
    let (_, m) = parse(&["restore", "-D", "x", "--tcp-close", "--no-tcp-close"]).unwrap();
    assert!(!permits(&m).unwrap().tcp_close, "--no-tcp-close after --tcp-close");
    let (cli, _) = parse(&["restore", "-D", "x", "-d", "--no-restore-detached"]).unwrap();
    let Command::Restore(a) = cli.command else { panic!("not restore") };
    assert!(!a.detach);
    let (cli, _) = parse(&["dump", "-t", "1", "-D", "x", "-R", "-s"]).unwrap();
    let Command::Dump(a) = cli.command else { panic!("not dump") };
    assert!(a.leave_stopped && !a.leave_running, "-s after -R wins");
}

#[test]
fn only_values_are_checked() {
    let (_, m) = parse(&["dump", "-t", "1", "-D", "x", "--manage-cgroups=ignore"]).unwrap();
    assert!(permits(&m).is_ok());
    for refused in ["--manage-cgroups", "--manage-cgroups=full", "--cpu-cap=fpu"] {
        let (_, m) = parse(&["dump", "-t", "1", "-D", "x", refused]).unwrap();
        let e = permits(&m).unwrap_err().to_string();
        assert!(e.contains("is not supported yet"), "{refused}: {e}");
    }
}

#[test]
fn permissions_are_recorded() {
    let (_, m) = parse(&["dump", "-t", "1", "-D", "x", "--tcp-established", "--ghost-limit", "1M", "-x", "--link-remap"]).unwrap();
    let p = permits(&m).unwrap();
    assert!(p.tcp_established && p.link_remap);
    assert_eq!(p.ghost_limit, Some(1 << 20));
    assert_eq!(p.ext_unix_sk, Some(vec![]));
}

#[test]
fn verbosity_forms_set_the_level() {
    for (args, level) in [
        (vec!["-v0", "check"], 0),
        (vec!["check", "-v4"], 4),
        (vec!["-v", "check"], 3),
        (vec!["-vvvv", "check"], 6),
        (vec!["check", "--verbosity=1"], 1),
        (vec!["check", "--verbosity"], 3),
        (vec!["check"], 2),
    ] {
        let (cli, _) = parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(argv::verbosity_level(&cli.verbosity).unwrap(), level, "{args:?}");
    }
}

#[test]
fn lease_options_are_the_same_on_restore_and_lease() {
    for cmd in ["restore", "lease"] {
        for (opts, policy) in [
            (vec!["--lease-policy", "holder"], Policy::FavorHolder),
            (vec!["--favor", "breaker"], Policy::FavorBreaker),
            (vec!["--lease-favor", "holder"], Policy::FavorHolder),
            (vec!["--add", "-2"], Policy::AddMs(-2000)),
            (vec!["--lease-set", "1.5"], Policy::SetMs(1500)),
            (vec!["--no-break"], Policy::NoBreak),
            (vec!["--lease-policy", "add:3"], Policy::AddMs(3000)),
        ] {
            let mut args = vec![cmd, "-D", "x"];
            args.extend(&opts);
            let (cli, _) = parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let got = match cli.command {
                Command::Restore(a) => a.lease.policy(),
                Command::Lease(a) => a.lease.policy(),
                _ => None,
            };
            assert_eq!(got, Some(policy), "{args:?}");
        }
        assert!(parse(&[cmd, "-D", "x", "--favor", "holder", "--no-break"]).is_err(), "{cmd}: two policies");
    }
}

#[test]
fn options_before_the_command_are_read_as_after_it() {
    let (cli, m) = parse(&["-D", "restore", "-v4", "--evasive-devices", "restore", "-d"]).unwrap();
    let Command::Restore(a) = &cli.command else { panic!("not restore") };
    assert_eq!(a.dir, PathBuf::from("restore"));
    assert!(a.detach);
    assert_eq!(argv::verbosity_level(&cli.verbosity).unwrap(), 4);
    assert!(permits(&m).is_err(), "--evasive-devices before the command is refused too");
}

#[test]
fn version_has_the_line_scripts_parse() {
    assert!(VERSION.lines().any(|l| l.starts_with("Version: ") && l["Version: ".len()..].split('.').count() == 2));
}
