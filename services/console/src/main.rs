use clap::Parser;

/// mediamesh console: queues, jobs, media and AI spend in a browser, over the public API.
#[derive(Parser, Debug)]
#[command(name = "mediamesh-console", version)]
struct Cli {
    #[command(flatten)]
    config: mediamesh_console::ConsoleConfig,
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
    mediamesh_server::run_main("mediamesh-console", &cli.common, |shutdown| {
        mediamesh_console::serve(cli.config, shutdown)
    })
    .await
}
