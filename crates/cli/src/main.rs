//! `detente`: the command line of a detente node (the contract is docs/cli.md).
//!
//! Exit codes: 0 success, 1 failure (including a check that found a problem), 2 bad usage.
//! Errors go to stderr as `error: WHAT` and, where there is a next step, `hint: WHAT TO DO`.

#![forbid(unsafe_code)]

use detente::{
    bench, charter, commands, demo, formats_cmd, home, screenshots, store_cmd, transcript, users,
    Outcome,
};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "detente",
    version,
    about = "Crisis-communication channels between parties that must talk even when they do not trust each other."
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The node directory of a command: `--dir`, else `$DETENTE_DIR`, else the per-user data
/// directory (see `home`).
#[derive(Args)]
struct NodeDirArg {
    /// The node's directory [default: $DETENTE_DIR, else $XDG_DATA_HOME/detente, else
    /// ~/.local/share/detente].
    #[arg(long = "dir", value_name = "DIR")]
    path: Option<PathBuf>,
}

impl NodeDirArg {
    fn get(self) -> Result<PathBuf, detente::Failure> {
        home::resolve(self.path)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a node: party key, configuration, API token.
    Init {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Short name of this node, e.g. washington.
        #[arg(long)]
        name: String,
        /// Full name of the party, e.g. "United States Department of Defense".
        #[arg(long)]
        party: String,
        /// Language of this node's operators and of what it shows: en or zh-CN.
        #[arg(long, default_value = "en")]
        lang: String,
        /// IANA time zone of the operators, e.g. America/New_York.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Address the peer port (TLS) listens on, HOST:PORT.
        #[arg(long, default_value = "0.0.0.0:7400")]
        peer_listen: String,
        /// Address of the console and the local API, HOST:PORT (keep it on loopback unless a proxy guards it).
        #[arg(long, default_value = "127.0.0.1:7401")]
        console_listen: String,
        /// Keep the node's data in PostgreSQL (postgres://USER:PASSWORD@HOST:PORT/DB)
        /// instead of the SQLite file in --dir.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Show this node's identity: public key and fingerprint.
    Id {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pinned peers.
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Show the charter agreed with a peer: members, deadlines, link-test cadence, formats.
    Charter {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The peer whose channel's charter to show.
        #[arg(long)]
        peer: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Counterpart positions offered for the charter's directory.
    Counterpart {
        #[command(subcommand)]
        command: CounterpartCommand,
    },
    /// Console accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Read and change node.toml.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The node's store: move it to PostgreSQL.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Make a consistent online backup of the node's store (SQLite: a verified copy of the
    /// file; PostgreSQL: pg_dump).
    Backup {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The backup file to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup made by `detente backup` in place of the node's store (the node must be
    /// stopped; the current store is kept beside it).
    Restore {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The backup file.
        file: Option<PathBuf>,
        /// Only mark the store as restored (after restoring PostgreSQL with pg_restore).
        #[arg(long, conflicts_with = "file")]
        mark_only: bool,
        /// Do not mark the store: only when the backup holds everything this node ever sent
        /// (otherwise its next envelopes could reuse sequence numbers its peers hold).
        #[arg(long)]
        insecure_skip_recovery: bool,
    },
    /// Run the node in the foreground.
    Serve {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Start even though the store's file is missing while peers are pinned (a fresh
        /// store: only when the old one is truly gone).
        #[arg(long)]
        new_store: bool,
    },
    /// Send a message to a peer.
    Send {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The peer to send to (its name in `detente peer list`).
        #[arg(long)]
        to: String,
        /// flash, immediate, priority or routine (routine for text; the format's default
        /// for a notification).
        #[arg(long)]
        precedence: Option<String>,
        /// general for text; the format's topic for a notification.
        #[arg(long)]
        topic: Option<String>,
        /// Free text to send (or use --format for a structured notification).
        #[arg(long, required_unless_present = "format", conflicts_with = "format")]
        text: Option<String>,
        /// Send a structured notification in this format (see `detente formats list`).
        #[arg(long)]
        format: Option<String>,
        /// The format's version (its latest by default).
        #[arg(long, requires = "format")]
        format_version: Option<u32>,
        /// A field of the notification, KEY=VALUE; KEY@LANG=TEXT adds a courtesy
        /// translation of a free-text field (repeatable).
        #[arg(long = "field", requires = "format")]
        fields: Vec<String>,
        /// Language of the text (the node's language by default).
        #[arg(long)]
        lang: Option<String>,
        /// A courtesy translation, LANG=TEXT (repeatable).
        #[arg(long = "translation")]
        translations: Vec<String>,
        /// The id of the message this answers (or a unique prefix of 8+ hex digits).
        #[arg(long)]
        reply_to: Option<String>,
        /// Make the send safe to repeat: 1 to 64 visible ASCII characters (a UUID). Run
        /// again with the same key and the same options within 24 hours, it sends nothing
        /// twice and prints the first send's id.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for this receipt before exiting.
        #[arg(long, value_parser = ["delivered", "read", "acknowledged"])]
        wait: Option<String>,
        /// Seconds to wait for --wait's receipt before exiting 1.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print one JSON object: id, seq, precedence, state.
        #[arg(long)]
        json: bool,
    },
    /// List the messages of this node's channels.
    Inbox {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Only the channel with this peer.
        #[arg(long)]
        peer: Option<String>,
        /// Received (in), sent (out) or both (all).
        #[arg(long, default_value = "all", value_parser = ["in", "out", "all"])]
        direction: String,
        /// Render notifications in this language (the node's by default).
        #[arg(long)]
        lang: Option<String>,
        /// List at most this many messages (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Also list the envelopes the nodes exchange among themselves: receipts, link
        /// tests and charters.
        #[arg(long, alias = "system")]
        receipts: bool,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
        /// Keep printing new messages as they arrive.
        #[arg(long)]
        follow: bool,
        /// Show times in this IANA time zone, with UTC beside (the node's zone by default).
        #[arg(long)]
        tz: Option<String>,
    },
    /// The notification formats this build holds.
    Formats {
        #[command(subcommand)]
        command: FormatsCommand,
    },
    /// A channel's glossary of agreed bilingual terms.
    Glossary {
        #[command(subcommand)]
        command: GlossaryCommand,
    },
    /// Answer a received message with a signed receipt.
    Ack {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The message id (or a unique prefix of at least 8 hex digits).
        id: String,
        /// The receipt to send: read, acknowledged or declined.
        #[arg(long, default_value = "acknowledged", value_parser = ["read", "acknowledged", "declined"])]
        level: String,
        /// A note carried in the signed receipt (a reason, an answer).
        #[arg(long)]
        note: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Link health and backlog per peer.
    Status {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint of the channel with a peer now and send it for co-signing.
    Checkpoint {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The peer whose channel to checkpoint.
        #[arg(long)]
        peer: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a self-contained inclusion proof of a message (JSON; `verify` accepts it).
    Proof {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The message id (64 hex digits).
        id: String,
    },
    /// Write the channel with a peer as one verifiable bundle.
    Export {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The peer whose channel to export.
        #[arg(long)]
        peer: String,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle or a proof offline: no node, no network. Exit 1 on any problem.
    Verify {
        /// The bundle (from `detente export`) or proof (from `detente proof`) to check.
        file: PathBuf,
        /// Print one JSON object: ok, counts and every problem.
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle offline, then write a printable record of it (HTML, and PDF through
    /// headless Chromium): both parties, the charter, every message in each party's
    /// language, every receipt with its lateness, the checkpoints. A bundle that fails
    /// verification is refused.
    Report {
        /// The bundle (from `detente export`).
        bundle: PathBuf,
        /// Where to write the HTML record.
        #[arg(long)]
        out: PathBuf,
        /// Also print the record to this PDF file (needs Debian's chromium).
        #[arg(long)]
        pdf: Option<PathBuf>,
        /// Write a record even if the bundle fails verification, marked as failing on every
        /// page, for examining the damage.
        #[arg(long)]
        even_if_damaged: bool,
    },
    /// Run the whole story on this machine: two nodes, an outage, a FLASH, a crash.
    Demo {
        /// Leave both nodes running and print their addresses.
        #[arg(long)]
        keep: bool,
        /// Where to put the two nodes (a temporary directory by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Regenerate the console screenshots (two local nodes and a headless Chromium).
    Screenshots {
        /// Directory to write the PNG files into.
        #[arg(long, default_value = "docs/screenshots")]
        out: PathBuf,
    },
    /// Measure throughput and latency between two local nodes over real TLS.
    Bench {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// ROUTINE messages in the throughput run.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Queued ROUTINE messages in front of the FLASH.
        #[arg(long, default_value_t = 50_000)]
        backlog: u64,
        /// Single messages for the latency run.
        #[arg(long, default_value_t = 200)]
        samples: u64,
        /// Keep the nodes' directories here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Instead: measure offline verification of an export bundle of --messages
        /// messages (no nodes; try --messages 100000).
        #[arg(long)]
        verify: bool,
        /// Instead: measure what growing the Merkle streams adds to committing --messages
        /// messages (no nodes; a real SQLite file; try --messages 20000).
        #[arg(long, conflicts_with = "verify")]
        append: bool,
        /// Instead: build a channel of N messages (and one of 10,000) in real SQLite files and
        /// compare what appending, proving and exporting cost per message on each (no nodes;
        /// up to 10000000, which takes a while: signing alone is ~20,000 a second).
        #[arg(long, value_name = "N", conflicts_with_all = ["verify", "append"])]
        transcript: Option<u64>,
        /// Instead: one node with N peers, each a real node process over TLS on loopback;
        /// --messages spread over them, and the node's CPU per message beside the same
        /// figure with one peer (up to 256; each peer is a process).
        #[arg(long, value_name = "N", conflicts_with_all = ["verify", "append", "transcript", "store"])]
        peers: Option<usize>,
        /// Also measure, in the same run, this machine's raw fdatasync rate, SQLite's commit
        /// rate at 1 and 128 rows per commit, and one core's sign and batch-verify rates, and
        /// print the end-to-end figure as a ratio of each.
        #[arg(long, conflicts_with_all = ["verify", "append", "transcript"])]
        compare: bool,
        /// Where both nodes keep their data: sqlite (a file each) or postgres (a new
        /// database each, made through --database-url and dropped afterwards).
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        store: String,
        /// With --store postgres: an administrative connection to the server, e.g.
        /// postgres://postgres:PASSWORD@127.0.0.1:5432/postgres.
        #[arg(long, env = "DETENTE_BENCH_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum CounterpartCommand {
    /// Offer a pair of positions (ours and the peer's) for the channels' counterpart directory.
    Add {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Our position, e.g. "Secretary of Defense".
        #[arg(long)]
        ours: String,
        /// The peer's position, e.g. "Minister of National Defense".
        #[arg(long)]
        theirs: String,
    },
    /// List the pairs this node offers.
    List {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Pin a peer's key and addresses (works whether or not the node is running).
    Add {
        #[command(flatten)]
        dir: NodeDirArg,
        /// A short name for the peer, used in every other command (e.g. beijing).
        #[arg(long)]
        name: String,
        /// The peer's public key as `detente id` prints it (ed25519:...).
        #[arg(long)]
        key: String,
        /// HOST:PORT, tried in order (primary first).
        #[arg(long = "addr", required = true)]
        addrs: Vec<String>,
    },
    /// List pinned peers.
    List {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a console account, or change its role and password. The password is read
    /// from --password-file, or from the terminal (not echoed), or from standard input.
    Add {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The login name.
        #[arg(long)]
        name: String,
        /// What the account may do: watch, supervisor, principal, auditor or admin.
        #[arg(long, value_parser = ["watch", "supervisor", "principal", "auditor", "admin"])]
        role: String,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Interface language (the node's by default).
        #[arg(long)]
        lang: Option<String>,
    },
    /// List console accounts.
    List {
        #[command(flatten)]
        dir: NodeDirArg,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FormatsCommand {
    /// Every format: id, version, default precedence and topic, title.
    List {
        /// Language of the titles: en or zh-CN.
        #[arg(long, default_value = "en")]
        lang: String,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A format's fields, types, constraints and rules.
    Show {
        /// The format's id, e.g. launch.
        id: String,
        /// The format's version (its latest by default).
        #[arg(long)]
        version: Option<u32>,
        /// Language of labels and help: en or zh-CN.
        #[arg(long, default_value = "en")]
        lang: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GlossaryCommand {
    /// Add an agreed pair of terms: --term LANG=TERM --term LANG=TERM.
    Add {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The peer whose channel's glossary to add to.
        #[arg(long)]
        peer: String,
        /// One term in one language, LANG=TERM (give one per language).
        #[arg(long = "term", required = true)]
        terms: Vec<String>,
    },
    /// The channel's terms.
    List {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The peer whose channel's glossary to list.
        #[arg(long)]
        peer: String,
        /// Print one JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print one value, or all of them.
    Get {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The key to print (every key when left out; see docs/cli.md).
        key: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change one value (validated; on a bad value the file is unchanged).
    Set {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The key to change, e.g. deadlines.flash_acknowledged.
        key: String,
        /// The new value; durations are written 500ms, 3s, 10m, 1h.
        value: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy this node's SQLite store into an empty PostgreSQL database, verifying every
    /// envelope and Merkle root before and after, then point node.toml at it.
    Migrate {
        #[command(flatten)]
        dir: NodeDirArg,
        /// The PostgreSQL database to fill, postgres://USER:PASSWORD@HOST:PORT/DB (empty).
        #[arg(long)]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.log_json,
        matches!(cli.command, Some(Command::Serve { .. })),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = match cli.command {
        Some(command) => runtime.block_on(run(command)),
        None => runtime.block_on(home::where_am_i()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.error);
            if let Some(hint) = failure.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(failure.code)
        }
    }
}

fn init_logging(json: bool, serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DETENTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command) -> Outcome {
    match command {
        Command::Init {
            dir,
            name,
            party,
            lang,
            tz,
            peer_listen,
            console_listen,
            database_url,
        } => commands::init(
            &dir.get()?,
            commands::InitArgs {
                name,
                party,
                lang,
                tz,
                peer_listen,
                console_listen,
                database_url,
            },
        ),
        Command::Id { dir, json } => commands::id(&dir.get()?, json),
        Command::Peer {
            command:
                PeerCommand::Add {
                    dir,
                    name,
                    key,
                    addrs,
                },
        } => commands::peer_add(&dir.get()?, name, key, addrs).await,
        Command::Peer {
            command: PeerCommand::List { dir, json },
        } => commands::peer_list(&dir.get()?, json),
        Command::User {
            command:
                UserCommand::Add {
                    dir,
                    name,
                    role,
                    password_file,
                    lang,
                },
        } => users::user_add(&dir.get()?, &name, &role, password_file.as_deref(), lang).await,
        Command::User {
            command: UserCommand::List { dir, json },
        } => users::user_list(&dir.get()?, json).await,
        Command::Config {
            command: ConfigCommand::Get { dir, key, json },
        } => commands::config_get(&dir.get()?, key, json),
        Command::Config {
            command: ConfigCommand::Set { dir, key, value },
        } => commands::config_set(&dir.get()?, &key, &value),
        Command::Serve { dir, new_store } => commands::serve(&dir.get()?, new_store).await,
        Command::Store {
            command: StoreCommand::Migrate { dir, to },
        } => store_cmd::migrate(&dir.get()?, &to).await,
        Command::Backup { dir, out } => store_cmd::backup(&dir.get()?, &out).await,
        Command::Restore {
            dir,
            file,
            mark_only,
            insecure_skip_recovery,
        } => {
            let args = store_cmd::RestoreArgs {
                file,
                mark_only,
                insecure_skip_recovery,
            };
            store_cmd::restore(&dir.get()?, args).await
        }
        Command::Send {
            dir,
            to,
            precedence,
            topic,
            text,
            format,
            format_version,
            fields,
            lang,
            translations,
            reply_to,
            idempotency_key,
            wait,
            timeout,
            json,
        } => {
            let options = commands::SendOptions {
                to,
                precedence,
                topic,
                text,
                format,
                format_version,
                fields,
                lang,
                translations,
                reply_to,
                idempotency_key,
                wait,
                timeout,
                json,
            };
            commands::send(&dir.get()?, options).await
        }
        Command::Inbox {
            dir,
            peer,
            direction,
            lang,
            limit,
            receipts,
            json,
            follow,
            tz,
        } => {
            commands::inbox(
                &dir.get()?,
                peer,
                direction,
                lang,
                limit,
                receipts,
                json,
                follow,
                tz,
            )
            .await
        }
        Command::Ack {
            dir,
            id,
            level,
            note,
            json,
        } => commands::ack(&dir.get()?, &id, &level, note, json).await,
        Command::Status { dir, json } => commands::status(&dir.get()?, json).await,
        Command::Formats {
            command: FormatsCommand::List { lang, json },
        } => formats_cmd::list(&lang, json),
        Command::Formats {
            command:
                FormatsCommand::Show {
                    id,
                    version,
                    lang,
                    json,
                },
        } => formats_cmd::show(&id, version, &lang, json),
        Command::Glossary {
            command: GlossaryCommand::Add { dir, peer, terms },
        } => formats_cmd::glossary_add(&dir.get()?, &peer, &terms).await,
        Command::Glossary {
            command: GlossaryCommand::List { dir, peer, json },
        } => formats_cmd::glossary_list(&dir.get()?, &peer, json).await,
        Command::Checkpoint { dir, peer, json } => {
            transcript::checkpoint(&dir.get()?, &peer, json).await
        }
        Command::Proof { dir, id } => transcript::proof(&dir.get()?, &id).await,
        Command::Export { dir, peer, out } => transcript::export(&dir.get()?, &peer, &out).await,
        Command::Verify { file, json } => transcript::verify(&file, json),
        Command::Report {
            bundle,
            out,
            pdf,
            even_if_damaged,
        } => {
            detente::report::run(detente::report::Options {
                bundle,
                out,
                pdf,
                even_if_damaged,
            })
            .await
        }
        Command::Charter { dir, peer, json } => charter::show(&dir.get()?, &peer, json).await,
        Command::Counterpart {
            command: CounterpartCommand::Add { dir, ours, theirs },
        } => charter::add(&dir.get()?, &ours, &theirs),
        Command::Counterpart {
            command: CounterpartCommand::List { dir, json },
        } => charter::list(&dir.get()?, json),
        Command::Demo { keep, dir } => demo::run(keep, dir).await,
        Command::Screenshots { out } => screenshots::run(out).await,
        Command::Bench {
            json,
            messages,
            verify: true,
            ..
        } => detente::bench_verify::run(messages, json),
        Command::Bench {
            json,
            messages,
            append: true,
            ..
        } => detente::bench_append::run(messages, json).await,
        Command::Bench {
            json,
            transcript: Some(size),
            ..
        } => detente::bench_transcript::run(size, json).await,
        Command::Bench {
            json,
            messages,
            dir,
            compare,
            peers: Some(peers),
            ..
        } => detente::bench_peers::run(peers, messages, json, dir, compare).await,
        Command::Bench {
            json,
            messages,
            backlog,
            samples,
            dir,
            compare,
            store,
            database_url,
            ..
        } => {
            bench::run(bench::Options {
                json,
                messages,
                backlog,
                samples,
                dir,
                compare,
                postgres: (store == "postgres").then_some(database_url),
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every argument of `command` and its subcommands that has no help line, by path.
    fn without_help(command: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_name() != "help" {
                without_help(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
    }

    #[test]
    fn every_option_of_every_command_has_a_help_line() {
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        without_help(&command, "detente", &mut missing);
        assert!(
            missing.is_empty(),
            "options without help:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn the_command_tree_is_well_formed() {
        Cli::command().debug_assert();
    }
}
