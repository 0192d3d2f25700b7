use clap::Parser;

/// mediamesh ingest: uploads, media and the public front door.
#[derive(Parser, Debug)]
#[command(name = "mediamesh-ingest", version)]
struct Cli {
    #[command(flatten)]
    config: mediamesh_ingest::IngestConfig,
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
    mediamesh_server::run_main("mediamesh-ingest", &cli.common, |shutdown| {
        mediamesh_ingest::serve(cli.config, shutdown)
    })
    .await
}
