//! `cargo xtask testbed up|down|status [--prefix P]`, on the ntm-testbed library.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use ntm_testbed::{Options, Testbed, DEFAULT_PREFIX};

#[derive(Subcommand)]
pub enum Action {
    /// Build the whole topology (idempotent) and leave it up; prints its status.
    Up {
        /// Namespace name prefix.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// RX/TX queues of the veths on the AF_XDP path.
        #[arg(long, default_value_t = 1)]
        queues: u16,
    },
    /// Remove everything carrying the prefix (also after a crashed run).
    Down {
        /// Namespace name prefix.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Say what is up.
    Status {
        /// Namespace name prefix.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Up { prefix, queues } => {
            let started = Instant::now();
            let options = Options {
                queues,
                ..Options::default()
            };
            let tb = Testbed::up_with(&prefix, options)
                .with_context(|| format!("bringing testbed {prefix} up"))?;
            eprintln!("testbed: up in {:.1} s", started.elapsed().as_secs_f64());
            show(&tb.status().context("reading the testbed's status")?);
            let prefix = tb.keep();
            eprintln!(
                "testbed: left up; remove it with `cargo xtask testbed down --prefix {prefix}`"
            );
            Ok(())
        }
        Action::Down { prefix } => {
            let started = Instant::now();
            ntm_testbed::down(&prefix).with_context(|| format!("removing testbed {prefix}"))?;
            eprintln!(
                "testbed: {prefix} removed in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Action::Status { prefix } => {
            print!(
                "{}",
                ntm_testbed::status(&prefix)
                    .with_context(|| format!("reading testbed {prefix}"))?
            );
            let others: Vec<String> = ntm_testbed::list()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| *p != prefix)
                .collect();
            if !others.is_empty() {
                println!("other testbeds on this machine: {}", others.join(" "));
            }
            Ok(())
        }
    }
}

fn show(status: &ntm_testbed::Status) {
    let text = status.to_string();
    println!("{}", text.trim_end_matches('\n'));
}
