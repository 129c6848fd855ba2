fn main() {
    eprintln!("turn-server: not built yet");
    std::process::exit(2);
}
