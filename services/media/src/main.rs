use clap::Parser;

/// mediamesh media service: media.* jobs and MediaService.
#[derive(Parser, Debug)]
#[command(name = "mediamesh-media", version)]
struct Cli {
    #[command(flatten)]
    config: mediamesh_media::MediaConfig,
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
    mediamesh_server::run_main("mediamesh-media", &cli.common, |shutdown| {
        mediamesh_media::serve(cli.config, shutdown)
    })
    .await
}
