//! What the daemons' command-line tests share (feature `test-util`, for
//! dev-dependencies only): running the binary, its example configuration,
//! and variants of it written to a private temporary file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The [`Cli`] of the calling crate's binary `$bin`, whose example
/// configuration is the file `$example` of the crate's directory.
#[macro_export]
macro_rules! cli_of {
    ($bin:literal, $example:literal) => {
        $crate::test_util::Cli::new(
            env!(concat!("CARGO_BIN_EXE_", $bin)),
            env!("CARGO_MANIFEST_DIR"),
            $example,
        )
    };
}

/// A daemon's command line under test.
pub struct Cli {
    bin: PathBuf,
    example: PathBuf,
    tmp: PathBuf,
}

impl Cli {
    /// The binary `bin` (`env!("CARGO_BIN_EXE_<name>")`), whose example
    /// configuration is the file `example` of the crate directory `dir`
    /// (`env!("CARGO_MANIFEST_DIR")`); its temporary files go to a directory
    /// named after the binary and this process.
    pub fn new(bin: &str, dir: &str, example: &str) -> Cli {
        let bin = PathBuf::from(bin);
        let name = bin
            .file_name()
            .map_or("cli".into(), |n| n.to_string_lossy());
        let tmp = format!("{name}-cli-{}", std::process::id());
        Cli {
            example: Path::new(dir).join(example),
            tmp: std::env::temp_dir().join(tmp),
            bin,
        }
    }

    /// Runs the binary with `args` and `RUST_LOG=info`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }

    /// The example configuration's path.
    pub fn example(&self) -> &Path {
        &self.example
    }

    /// The example configuration's text.
    pub fn example_text(&self) -> String {
        std::fs::read_to_string(&self.example)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.example.display()))
    }

    /// Writes `text` to the temporary file `name`, readable by its owner
    /// only (the daemons refuse a configuration holding a key that group or
    /// others can read), and returns its path.
    pub fn temp_config(&self, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(&self.tmp).expect("create the temporary directory");
        let path = self.tmp.join(name);
        crate::keys::write_private(&path, text).expect("write a temporary configuration");
        path
    }

    /// The example with each `(name, from, to, want)` edit applied on its
    /// own (`from` replaced by `to`), written to the temporary file `name`:
    /// `(name, path, want)`, for the tests of bad configurations.
    pub fn edited<'a>(
        &self,
        edits: &[(&'a str, &str, &str, &'a str)],
    ) -> Vec<(&'a str, PathBuf, &'a str)> {
        let example = self.example_text();
        edits
            .iter()
            .map(|&(name, from, to, want)| {
                assert!(
                    example.contains(from),
                    "{name}: {from:?} is not in the example"
                );
                (
                    name,
                    self.temp_config(name, &example.replace(from, to)),
                    want,
                )
            })
            .collect()
    }
}

/// What a run wrote to stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a run wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
