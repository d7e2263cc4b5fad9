use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mailvault::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    runtime.block_on(mailvault::cli::execute(cli))
}
