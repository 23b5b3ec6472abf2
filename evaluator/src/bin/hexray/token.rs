//! `hexray token`: `new` creates a bearer token, appends its hash to the tokens file and prints
//! the token once (the file never holds a token, only hashes); `list` shows who each token is
//! for, by the owner id that the server's log and data carry; `revoke` removes one.

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
    /// List the tokens of a tokens file: owner id, scope and label (never a token).
    List {
        #[arg(long, env = "HEXRAY_TOKENS_FILE")]
        tokens_file: PathBuf,
    },
    /// Remove a token from the tokens file, by the owner id `list` and the server's log show.
    /// The server accepts it until it is restarted.
    Revoke {
        /// The token's owner id (16 hex digits).
        #[arg(long)]
        owner: String,
        #[arg(long, env = "HEXRAY_TOKENS_FILE")]
        tokens_file: PathBuf,
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
        Command::List { tokens_file } => {
            println!("{:<16}  {:<9}  label", "owner id", "scope");
            for entry in Tokens::entries(&tokens_file)? {
                println!(
                    "{:<16}  {:<9}  {}",
                    entry.owner().0,
                    entry.scope.name(),
                    entry.label
                );
            }
            Ok(())
        }
        Command::Revoke { owner, tokens_file } => {
            let entry = Tokens::revoke(&tokens_file, &owner)?;
            eprintln!(
                "Removed the {} token for `{}` from {}. Restart the server to refuse it; its \
                 keys and jobs become unreachable.",
                entry.scope.name(),
                entry.label,
                tokens_file.display()
            );
            Ok(())
        }
    }
}
