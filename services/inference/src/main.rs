use clap::Parser;

/// mediamesh inference service: inference.* jobs and InferenceService.
#[derive(Parser, Debug)]
#[command(name = "mediamesh-inference", version)]
struct Cli {
    #[command(flatten)]
    config: mediamesh_inference::InferenceConfig,
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
    mediamesh_server::run_main("mediamesh-inference", &cli.common, |shutdown| {
        mediamesh_inference::serve(cli.config, shutdown)
    })
    .await
}
