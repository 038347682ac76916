//! `man` and `completions`: the manual pages and shell completion scripts, generated from the
//! command-line definition itself (clap_mangen, clap_complete), so they never drift from it.

use std::path::PathBuf;

use clap::{Args, Command, CommandFactory};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, roman};

use crate::{Cli, Failure, code, write_stdout};

/// Options of `man`.
#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// The subcommand whose page to print, e.g. `exec` or `payload set` [default: the main page]
    #[arg(value_name = "SUBCOMMAND", conflicts_with = "out_dir")]
    subcommand: Vec<String>,
    /// Write every page (lockticket.1, lockticket-exec.1, ...) into DIR instead of printing one,
    /// e.g. /usr/local/share/man/man1
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// Options of `completions`.
#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_name = "SHELL", value_enum)]
    shell: clap_complete::Shell,
}

/// The whole command, built (subcommands get their display names, `lockticket-exec`...).
fn command() -> Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

pub(crate) fn man(a: &ManArgs) -> Result<i32, Failure> {
    let root = command();
    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::new(code::TABLE, format!("cannot create {}: {e}", dir.display()))
        })?;
        let mut pages = Vec::new();
        collect(&root, &mut pages);
        for cmd in pages {
            let file = dir.join(format!("{}.1", display_name(cmd)));
            std::fs::write(&file, page(cmd)).map_err(|e| {
                Failure::new(code::TABLE, format!("cannot write {}: {e}", file.display()))
            })?;
        }
        return Ok(code::OK);
    }
    let mut cmd = &root;
    for (depth, word) in a.subcommand.iter().enumerate() {
        cmd = cmd.find_subcommand(word).ok_or_else(|| {
            Failure::new(
                code::USAGE,
                format!(
                    "bad usage: no subcommand {:?} (see 'lockticket man --help')",
                    a.subcommand[..=depth].join(" ")
                ),
            )
        })?;
    }
    write_stdout(&page(cmd))?;
    Ok(code::OK)
}

pub(crate) fn completions(a: &CompletionsArgs) -> Result<i32, Failure> {
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "lockticket", &mut out);
    write_stdout(&out)?;
    Ok(code::OK)
}

/// `cmd` and all its subcommands, depth first.
fn collect<'a>(cmd: &'a Command, out: &mut Vec<&'a Command>) {
    out.push(cmd);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
}

fn display_name(cmd: &Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

/// The manual page of `cmd`, in roff: clap_mangen's sections, the command's after-help text
/// (details and exit status) kept as laid out, and cross references.
fn page(cmd: &Command) -> Vec<u8> {
    let man = Man::new(cmd.clone())
        .manual("lockticket manual")
        .source(format!("lockticket {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    if cmd.has_subcommands() {
        let _ = man.render_subcommands_section(&mut out);
    }
    let mut roff = Roff::new();
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        roff.control("SH", ["DETAILS"]);
        roff.control("nf", []);
        // The pointer to this manual is for --help only.
        for line in after
            .to_string()
            .lines()
            .filter(|l| !l.starts_with("Manual: "))
        {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    roff.control("SH", ["SEE ALSO"]);
    // The main page names every other page; the others name the main one.
    let mut refs = Vec::new();
    if cmd.get_name() == "lockticket" {
        collect(cmd, &mut refs);
        refs.remove(0);
    }
    let mut refs: Vec<String> = refs
        .into_iter()
        .map(|c| display_name(c).to_string())
        .collect();
    if cmd.get_name() != "lockticket" {
        refs.push("lockticket".into());
    }
    refs.push("flock".into());
    let refs: Vec<String> = refs.iter().map(|r| format!("{r}(1)")).collect();
    roff.text([roman(refs.join(", "))]);
    let _ = roff.to_writer(&mut out);
    let _ = man.render_version_section(&mut out);
    out
}
