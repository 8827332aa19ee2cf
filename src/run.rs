//! The top level: parse the command line, set up logging, build the config and the plan, carry
//! the plan out, and turn the outcome into the documented exit code.

use std::process::ExitCode;

use crate::cli::{self, Command, Environment};
use crate::config::Config;
use crate::error::{Error, exit};
use crate::output;
use crate::plan::{self, Mode, Plan};
use crate::runner::Runner;

/// The whole program; `main.rs` calls only this.
pub fn main() -> ExitCode {
    output::install_panic_hook();
    let (cli, matches) = match cli::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(error) => {
            // --help and --version are "errors" that print to stdout and exit 0.
            let code = if error.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    // AWS credentials in the environment are secrets too, though the agent only hands them to the SDK.
    for name in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN"] {
        if let Ok(value) = std::env::var(name) {
            crate::secrets::redactor().register(&value);
        }
    }
    output::init(cli.log_format, cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&Error::Internal(format!("failed to start the async runtime: {error}")));
        }
    };
    let result = match &cli.command {
        Command::Run(args) => {
            let run_matches = matches.subcommand_matches("run").expect("the run subcommand was parsed");
            runtime.block_on(run(args, run_matches))
        }
        Command::Host(command) => runtime.block_on(crate::host::run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

async fn run(args: &cli::RunArgs, matches: &clap::ArgMatches) -> Result<(), Error> {
    let env = Environment::from_process();
    let cwd = std::env::current_dir().map_err(|source| Error::LocalFile {
        action: "read the working directory",
        path: ".".into(),
        source,
        hint: None,
    })?;
    let config = Config::new(args, matches, &env, &cwd)?;
    // A way for the tests to prove the panic hook (after the configuration, so that its secrets
    // are registered); not in release builds.
    #[cfg(debug_assertions)]
    if let Some(message) = env.get("AGENT_TEST_PANIC") {
        panic!("a test panic with {message}");
    }
    // Without `SSM:` references the runner types every value now: what resolution refuses (a login
    // key forwarded with --ssh, ec2-instance-connect for a host that is no instance) is refused
    // before the plan, in a dry run too. With references, the run's resolution step does it.
    let mut runner = Runner::new(&config)?;
    let plan = Plan::new(&config, &cwd);
    let mode = match (args.dry, args.check) {
        (true, _) => Mode::Dry,
        (false, true) => Mode::Check,
        (false, false) => Mode::Run,
    };
    let result = plan::execute(&plan, mode, &mut runner).await;
    runner.finish().await;
    result
}

fn fail(error: &Error) -> ExitCode {
    output::eprint(&error.report());
    ExitCode::from(error.exit_code())
}
