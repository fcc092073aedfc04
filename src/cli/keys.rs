//! `eigenprune keys create|list|revoke` and `eigenprune users quota`: the admin's commands,
//! against the same --data-dir / --database-url as `serve`. `keys create` prints the new key
//! alone on one line of stdout (everything else goes to stderr).

use clap::{Args, Subcommand};

use super::serve::StoreArgs;
use crate::db::Db;
use crate::identity::{issue_key, valid_user_name, Quota};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// A new key for USER (created if new); the key is printed once, to stdout.
    Create {
        #[arg(long)]
        user: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Every key (never the keys themselves): id, user, prefix, created, last used, revoked.
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revokes a key by its id (key_...).
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Shows a user's quota overrides, setting those given (0: no limit; `--default` first
    /// clears every override).
    Quota(QuotaArgs),
}

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[arg(long)]
    user: String,
    /// Clear every override before setting the ones given.
    #[arg(long)]
    default: bool,
    #[arg(long)]
    running_jobs: Option<u64>,
    #[arg(long)]
    queued_jobs: Option<u64>,
    #[arg(long)]
    gpu_seconds_per_day: Option<u64>,
    #[arg(long)]
    sequences: Option<u64>,
    #[arg(long)]
    requests_per_minute: Option<u64>,
    #[command(flatten)]
    store: StoreArgs,
}

async fn connect(store: &StoreArgs) -> anyhow::Result<Db> {
    std::fs::create_dir_all(&store.data_dir)?;
    Db::connect(&store.database_url()).await
}

fn user_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_user_name(name),
        "user `{name}`: use 1 to 64 of A-Z a-z 0-9 . _ -"
    );
    Ok(())
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_string())
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { user, admin, store } => {
            user_name(&user)?;
            let db = connect(&store).await?;
            let (row, key) = issue_key(&db, &user, admin).await?;
            eprintln!(
                "created {} for {user}{}; the key is shown once:",
                row.id,
                if admin { " (admin)" } else { "" }
            );
            println!("{key}");
        }
        KeysCommand::List { user, store } => {
            let db = connect(&store).await?;
            println!("id\tuser\tprefix\tcreated_at\tlast_used_at\trevoked_at");
            for k in db.keys(user.as_deref()).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.user_name,
                    k.prefix,
                    k.created_at,
                    time(k.last_used_at),
                    time(k.revoked_at)
                );
            }
        }
        KeysCommand::Revoke { id, store } => {
            let db = connect(&store).await?;
            anyhow::ensure!(db.revoke_key(&id).await?, "no live key `{id}`");
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

pub async fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    let UsersCommand::Quota(a) = cmd;
    user_name(&a.user)?;
    let db = connect(&a.store).await?;
    let Some(row) = db.user(&a.user).await? else {
        anyhow::bail!("no user `{}` (keys create --user makes one)", a.user);
    };
    let old = if a.default {
        Quota::default()
    } else {
        row.overrides()
    };
    let or = |new: Option<u64>, old: Option<u64>| new.or(old);
    let q = Quota {
        running_jobs: or(a.running_jobs, old.running_jobs),
        queued_jobs: or(a.queued_jobs, old.queued_jobs),
        gpu_seconds_per_day: or(a.gpu_seconds_per_day, old.gpu_seconds_per_day),
        sequences: or(a.sequences, old.sequences),
        requests_per_minute: or(a.requests_per_minute, old.requests_per_minute),
    };
    db.set_quota(&a.user, &q).await?;
    println!("{}", serde_json::to_string(&q)?);
    Ok(())
}
