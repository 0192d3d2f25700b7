use clap::Parser;

/// mediamesh scheduler: jobs, dispatch, retries and JobService.
#[derive(Parser, Debug)]
#[command(name = "mediamesh-scheduler", version)]
struct Cli {
    #[command(flatten)]
    config: mediamesh_scheduler::SchedulerConfig,
    #[command(flatten)]
    common: mediamesh_server::CommonArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.common.print_config {
        println!("{:#?}", cli.config);
        return std::process::ExitCode::SUCCESS;
    }
    mediamesh_server::run_main("mediamesh-scheduler", &cli.common, |shutdown| {
        mediamesh_scheduler::serve(cli.config, shutdown)
    })
    .await
}
