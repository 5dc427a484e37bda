use clap::Parser;

fn main() {
    let cli = bora::args::Cli::parse();
    if let Err(e) = bora::commands::dispatch(cli) {
        // A reader that stopped reading (`bora run … | head`) is not an error.
        let broken_pipe = e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
        if broken_pipe {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
