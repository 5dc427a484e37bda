use clap::Parser;

fn main() {
    let cli = bora::args::Cli::parse();
    if let Err(e) = bora::commands::dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
