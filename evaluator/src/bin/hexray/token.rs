//! `hexray token new`: creates a bearer token, appends its hash to the tokens file and prints
//! the token once. The file never holds a token, only hashes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hexray_evaluator::server::auth::{Scope, Tokens};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a token and append it to the tokens file (created if missing).
    New {
        /// Who the token is for, e.g. a ward or a clinician: kept in the file beside the hash.
        #[arg(long)]
        label: String,
        /// The tokens file `hexray serve --tokens-file` reads.
        #[arg(long, env = "HEXRAY_TOKENS_FILE")]
        tokens_file: PathBuf,
        /// `clinician` (the inference API) or `metrics` (only `/metrics`).
        #[arg(long, default_value = "clinician", value_parser = parse_scope)]
        scope: Scope,
    },
}

fn parse_scope(name: &str) -> Result<Scope, String> {
    Scope::from_name(name).ok_or_else(|| "the scope must be `clinician` or `metrics`".into())
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::New {
            label,
            tokens_file,
            scope,
        } => {
            let token = Tokens::create(&tokens_file, &label, scope)
                .with_context(|| format!("adding a token to {}", tokens_file.display()))?;
            eprintln!(
                "Added a {} token for `{label}` to {}. It is shown only now; the file keeps \
                 its hash. Restart the server to accept it.",
                scope.name(),
                tokens_file.display()
            );
            println!("{token}");
            Ok(())
        }
    }
}
