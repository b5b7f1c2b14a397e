//! The command-line plumbing every daemon shares: the flags
//! ([`DaemonArgs`], [`ServerArgs`]), `--print-man`, the start-up
//! (`--config` loaded and checked, `--check`), the exit with a one-line
//! error, and the `status` subcommand's arguments and printing.

use std::future::Future;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{self, ConfigFile};
use crate::logging::LogFormat;

/// The flags every daemon has; `#[command(flatten)]` them into its
/// arguments and parse those with [`parse`].
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The configuration file (TOML).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "print_man"
    )]
    pub config: Option<PathBuf>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    pub check: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print the man page (roff) and exit.
    #[arg(long, hide = true)]
    pub print_man: bool,
}

/// The flags of the servers (the DC and the RS): [`DaemonArgs`] and `--listen`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The flags every daemon has.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Listen on this address instead of the configuration's `listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddrV4>,
}

/// A server's command line: its flags, or one of its subcommands `S`
/// (`status`, ...). Parse it with [`parse`] and the server's [`Identity`].
#[derive(clap::Parser, Debug)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct ServerCli<S: clap::Subcommand> {
    /// The server's flags.
    #[command(flatten)]
    pub server: ServerArgs,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<S>,
}

/// Who a daemon is, for a command line defined here (clap's derive would
/// take the name and version of this crate).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Its name (`ntm-dc`).
    pub name: &'static str,
    /// Its version (its `CARGO_PKG_VERSION`).
    pub version: &'static str,
    /// Its description: one line (`-h`), then paragraphs (`--help` and the
    /// man page).
    pub about: &'static str,
    /// Its status socket unless the configuration says otherwise.
    pub status_socket: &'static str,
}

/// The clap command of `A` (which flattens [`DaemonArgs`]), `--config`'s
/// help naming `C`'s example configuration; named, versioned and
/// described by `id` if given.
pub fn command<A: clap::Parser, C: ConfigFile>(id: Option<&Identity>) -> clap::Command {
    let mut cmd = A::command().mut_arg("config", |a| {
        a.help(format!(
            "The configuration file (TOML; see {} for every setting)",
            C::EXAMPLE
        ))
    });
    if let Some(id) = id {
        // The first line without its full stop, as clap's derive makes it.
        let first = id.about.lines().next().unwrap_or_default();
        let short = first.strip_suffix('.').unwrap_or(first);
        cmd = cmd
            .name(id.name)
            .bin_name(id.name)
            .version(id.version)
            .about(short)
            .long_about(id.about);
    }
    cmd
}

/// Parses the command line into `A` (see [`command`]); `--print-man`
/// prints the man page and exits here, as `--help` does.
pub fn parse<A: clap::Parser, C: ConfigFile>(id: Option<&Identity>) -> A {
    let cmd = command::<A, C>(id);
    let mut m = cmd.clone().get_matches();
    if matches!(m.try_get_one::<bool>("print_man"), Ok(Some(true))) {
        std::process::exit(i32::from(print_man(cmd) != ExitCode::SUCCESS));
    }
    A::from_arg_matches_mut(&mut m).unwrap_or_else(|e| e.exit())
}

/// `<daemon> --print-man`: the roff man page of `cmd` on stdout.
pub fn print_man(cmd: clap::Command) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match crate::man::render(cmd, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// A configuration loaded and checked as its daemon starts.
#[derive(Debug)]
pub struct Loaded<C: ConfigFile> {
    /// The file.
    pub path: PathBuf,
    /// What it says, after the command line's changes.
    pub config: C,
    /// What the daemon runs on.
    pub settings: C::Settings,
}

impl DaemonArgs {
    /// A daemon's start: logging set up, `--config` loaded, changed by the
    /// command line (`adjust`), validated, and a key in it refused unless
    /// the file is private. With `--check`: prints `<file>: configuration
    /// OK (<summary>)`, warns of a key others can read, and gives `None`.
    pub fn start<C>(
        &self,
        daemon: &str,
        adjust: impl FnOnce(&mut C),
        summary: impl FnOnce(&C::Settings) -> String,
    ) -> Result<Option<Loaded<C>>>
    where
        C: ConfigFile,
        C::Error: std::error::Error + Send + Sync + 'static,
    {
        crate::logging::init(self.log_format, "info");
        let path = self.config.clone().context("--config is required")?;
        let mut config: C = config::load(&path)?;
        adjust(&mut config);
        let settings = config
            .validate()
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        let exposed = config::exposed_key(&config, &path);
        if self.check {
            if let Some(e) = &exposed {
                eprintln!("{daemon}: warning: {e}; {daemon} refuses to start with it");
            }
            println!(
                "{}: configuration OK ({})",
                path.display(),
                summary(&settings)
            );
            return Ok(None);
        }
        if let Some(e) = exposed {
            return Err(e.into());
        }
        Ok(Some(Loaded {
            path,
            config,
            settings,
        }))
    }
}

/// Runs a daemon's driver on a current-thread tokio runtime (every daemon
/// is one task: its state machine is not shared).
pub fn block_on(driver: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(driver)
}

/// The process exit for `result`: an error goes to stderr as
/// `<daemon>: <whole chain on one line>` (for operators: no backtrace).
pub fn exit(daemon: &str, result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{daemon}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `name=count` pairs of a status' counters, space-separated, for its text
/// form; with `all` false only the non-zero ones. `none` when nothing is left.
pub fn counts(m: &std::collections::BTreeMap<String, u64>, all: bool) -> String {
    let v: Vec<String> = m
        .iter()
        .filter(|(_, n)| all || **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(" ")
    }
}

/// The text form of a daemon's status (`<daemon> status`): a headline,
/// sections of indented lines, then the counters and the drops.
#[derive(Debug, Default)]
pub struct StatusText(String);

impl StatusText {
    /// A status text that starts with `headline`.
    pub fn new(headline: std::fmt::Arguments<'_>) -> StatusText {
        let mut t = StatusText::default();
        t.line(headline);
        t
    }

    /// One line.
    pub fn line(&mut self, line: std::fmt::Arguments<'_>) {
        use std::fmt::Write as _;
        let _ = writeln!(self.0, "{line}");
    }

    /// One item of a section, indented.
    pub fn item(&mut self, item: std::fmt::Arguments<'_>) {
        self.line(format_args!("  {item}"));
    }

    /// The counters (every one) and the drops (the non-zero ones): the end.
    pub fn finish(
        mut self,
        counters: &std::collections::BTreeMap<String, u64>,
        drops: &std::collections::BTreeMap<String, u64>,
    ) -> String {
        self.line(format_args!("counters: {}", counts(counters, true)));
        self.line(format_args!("drops: {}", counts(drops, false)));
        self.0
    }
}

/// The arguments of `<daemon> status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The configuration the daemon runs with (names its status socket).
    #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The status socket (default /run/<daemon>/<daemon>.sock).
    #[arg(short, long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// The socket: `--socket`, else the one `socket_of` reads from
    /// `--config`, else `default`.
    pub fn socket(
        &self,
        default: &str,
        socket_of: impl FnOnce(&Path) -> Result<PathBuf>,
    ) -> Result<PathBuf> {
        match (&self.socket, &self.config) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(c)) => socket_of(c),
            (None, None) => Ok(PathBuf::from(default)),
        }
    }

    /// `<daemon> status`: asks the socket from `--socket`, else the one
    /// `socket_of` reads from `--config` (parsed without its key files,
    /// which the operator may not be allowed to read), else the daemon's
    /// default; and
    /// prints the answer (see [`StatusArgs::print`]).
    pub fn run<C, S>(
        &self,
        daemon: &Identity,
        socket_of: impl FnOnce(C) -> PathBuf,
        render: impl FnOnce(&S) -> String,
    ) -> Result<()>
    where
        C: ConfigFile,
        S: DeserializeOwned + Serialize,
    {
        let path = self.socket(daemon.status_socket, |c| {
            Ok(socket_of(config::parse_file(c)?))
        })?;
        self.print(&path, daemon.name, render)
    }

    /// Asks `daemon`'s status socket at `path` and prints the answer: as
    /// JSON with `--json`, else as `render` makes it.
    pub fn print<S: DeserializeOwned + Serialize>(
        &self,
        path: &Path,
        daemon: &str,
        render: impl FnOnce(&S) -> String,
    ) -> Result<()> {
        let text = crate::unix::query(path, daemon)?;
        let st: S = serde_json::from_str(&text)
            .with_context(|| format!("bad answer from {}", path.display()))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print!("{}", render(&st));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches as _;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Demo {
        listen: Option<SocketAddrV4>,
    }

    impl ConfigFile for Demo {
        const EXAMPLE: &'static str = "demo/demo.example.toml";
        type Settings = ();
        type Error = config::Error;
        fn read_files(&mut self, _: &Path) -> Result<(), config::Error> {
            Ok(())
        }
        fn holds_inline_key(&self) -> bool {
            false
        }
        fn validate(&self) -> Result<(), config::Error> {
            Ok(())
        }
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        /// Show the status.
        Status(StatusArgs),
    }

    const ID: Identity = Identity {
        name: "demo-d",
        version: "9.9.9",
        about: "demo-d: a demo server.\n\nIt serves demos.",
        status_socket: "/run/demo/demo.sock",
    };

    #[test]
    fn server_command_lines_carry_the_daemons_identity_and_example() {
        let mut cmd = command::<ServerCli<Cmd>, Demo>(Some(&ID));
        let help = cmd.render_long_help().to_string();
        for needle in [
            "demo-d: a demo server.",
            "It serves demos.",
            "see demo/demo.example.toml for every setting",
            "--listen",
            "--check",
        ] {
            assert!(help.contains(needle), "{needle:?} missing from\n{help}");
        }
        assert!(!help.contains("--print-man"), "{help}");
        assert_eq!(cmd.get_version(), Some("9.9.9"));
        let m = cmd
            .clone()
            .try_get_matches_from(["demo-d", "-c", "d.toml", "--listen", "127.0.0.1:1"])
            .unwrap();
        let a = ServerCli::<Cmd>::from_arg_matches(&m).unwrap();
        assert_eq!(a.server.daemon.config, Some(PathBuf::from("d.toml")));
        assert_eq!(a.server.listen, Some("127.0.0.1:1".parse().unwrap()));
        // --config is needed to serve, not for a subcommand or the man page.
        assert!(cmd.clone().try_get_matches_from(["demo-d"]).is_err());
        assert!(cmd
            .clone()
            .try_get_matches_from(["demo-d", "--print-man"])
            .is_ok());
        let m = cmd
            .try_get_matches_from(["demo-d", "status", "--json"])
            .unwrap();
        let a = ServerCli::<Cmd>::from_arg_matches(&m).unwrap();
        assert!(matches!(a.command, Some(Cmd::Status(s)) if s.json));
    }

    #[test]
    fn status_text_ends_with_counters_and_non_zero_drops() {
        let mut t = StatusText::new(format_args!("demo on {}", 7));
        t.line(format_args!("things:"));
        t.item(format_args!("thing {}", 1));
        let c = BTreeMap::from([("a".to_owned(), 0), ("b".to_owned(), 2)]);
        let d = BTreeMap::from([("x".to_owned(), 0)]);
        assert_eq!(
            t.finish(&c, &d),
            "demo on 7\nthings:\n  thing 1\ncounters: a=0 b=2\ndrops: none\n"
        );
    }
}
