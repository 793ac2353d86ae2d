//! `oasis-reflector`: the branch reflector daemon (built out by the reflector issue).

fn main() {
    eprintln!("oasis-reflector: the branch reflector daemon is not implemented yet");
    std::process::exit(2);
}
