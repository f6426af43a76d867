//! `podflow-demo`: a demo node (network namespaces with pods and traffic) with live flows; see
//! [`podflow_testbed::demo`]. Needs root. `cargo xtask demo` builds and runs it.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = podflow_testbed::demo::DemoArgs::parse();
    match podflow_testbed::demo::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cur = c.source();
            }
            eprintln!("podflow-demo: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
