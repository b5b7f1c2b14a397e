//! `cargo run -p ntm-testbed --example tb -- up|down|status [PREFIX] [QUEUES]`:
//! the library without xtask, for trying it by hand.
use std::time::Instant;

fn main() -> Result<(), ntm_testbed::Error> {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("status");
    let prefix = args
        .get(2)
        .map(String::as_str)
        .unwrap_or(ntm_testbed::DEFAULT_PREFIX);
    let queues = args.get(3).and_then(|q| q.parse().ok()).unwrap_or(1);
    let t = Instant::now();
    match cmd {
        "up" => {
            let opts = ntm_testbed::Options {
                queues,
                ..Default::default()
            };
            let prefix = ntm_testbed::Testbed::up_with(prefix, opts)?.keep();
            eprintln!("up in {:?}", t.elapsed());
            print!("{}", ntm_testbed::status(&prefix)?);
        }
        "down" => {
            ntm_testbed::down(prefix)?;
            eprintln!("down in {:?}", t.elapsed());
        }
        _ => {
            print!("{}", ntm_testbed::status(prefix)?);
            eprintln!("status in {:?}", t.elapsed());
        }
    }
    Ok(())
}
