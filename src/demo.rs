pub fn run() -> Result<(), crate::cli::Error> {
    Err("demo: not built yet".into())
}
