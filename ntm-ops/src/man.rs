//! Man pages from the daemons' clap definitions (`<daemon> --print-man`,
//! which `cargo xtask dist` runs to put section-1 pages into the packages).

use std::io::Write;

/// Writes the roff man page of `cmd` (and one section per subcommand) to `out`.
pub fn render(cmd: clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    let cmd = cmd.disable_help_subcommand(true);
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subs.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
        for s in subs {
            writeln!(out, ".TP\n\\fB{}\\fR", s.get_name())?;
            if let Some(about) = s.get_long_about().or(s.get_about()) {
                writeln!(out, "{}", roff_escape(&about.to_string()))?;
            }
            for a in s.get_arguments().filter(|a| !a.is_hide_set()) {
                let flag = match (a.get_short(), a.get_long()) {
                    (Some(s), Some(l)) => format!("-{s}, --{l}"),
                    (None, Some(l)) => format!("--{l}"),
                    (Some(s), None) => format!("-{s}"),
                    (None, None) => a.get_id().to_string().to_uppercase(),
                };
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                writeln!(
                    out,
                    ".RS\n.TP\n{}\n{}\n.RE",
                    roff_escape(&flag),
                    roff_escape(&help)
                )?;
            }
        }
    }
    man.render_version_section(out)?;
    Ok(())
}

fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\\\").replace('-', "\\-");
    s.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "demo", version, about = "A demo daemon.")]
    struct Args {
        /// The configuration.
        #[arg(long)]
        config: Option<String>,
        #[command(subcommand)]
        cmd: Option<Cmd>,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        /// Show the status.
        Status {
            /// As JSON.
            #[arg(long)]
            json: bool,
        },
    }

    #[test]
    fn pages_name_the_options_and_subcommands() {
        let mut out = Vec::new();
        render(<Args as clap::CommandFactory>::command(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            ".TH demo 1",
            "A demo daemon",
            "config",
            ".SH COMMANDS",
            "status",
            "\\-\\-json",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}
