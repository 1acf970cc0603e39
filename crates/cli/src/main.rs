//! `detente`: the command line of a detente node (see CLI.md for the contract).
//!
//! Exit codes: 0 success, 1 failure (including a check that found a problem), 2 bad usage.
//! Errors go to stderr as `error: WHAT` and, where there is a next step, `hint: WHAT TO DO`.

#![forbid(unsafe_code)]

use detente::{
    bench, charter, commands, demo, formats_cmd, screenshots, transcript, users, Outcome,
};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node: party key, configuration, API token.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Short name of this node, e.g. washington.
        #[arg(long)]
        name: String,
        /// Full name of the party, e.g. "United States Department of Defense".
        #[arg(long)]
        party: String,
        #[arg(long, default_value = "en")]
        lang: String,
        /// IANA time zone of the operators, e.g. America/New_York.
        #[arg(long, default_value = "UTC")]
        tz: String,
        #[arg(long, default_value = "0.0.0.0:7400")]
        peer_listen: String,
        #[arg(long, default_value = "127.0.0.1:7401")]
        console_listen: String,
        /// Keep the node's data in PostgreSQL (postgres://USER:PASSWORD@HOST:PORT/DB)
        /// instead of the SQLite file in --dir.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Show this node's identity: public key and fingerprint.
    Id {
        #[arg(long)]
        dir: PathBuf,
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
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: String,
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
    /// Run the node in the foreground.
    Serve {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Send a message to a peer.
    Send {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        to: String,
        /// flash, immediate, priority or routine (routine for text; the format's default
        /// for a notification).
        #[arg(long)]
        precedence: Option<String>,
        /// general for text; the format's topic for a notification.
        #[arg(long)]
        topic: Option<String>,
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
        #[arg(long)]
        reply_to: Option<String>,
        /// Wait for this receipt before exiting.
        #[arg(long, value_parser = ["delivered", "read", "acknowledged"])]
        wait: Option<String>,
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// List the messages of this node's channels.
    Inbox {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: Option<String>,
        #[arg(long, default_value = "all", value_parser = ["in", "out", "all"])]
        direction: String,
        #[arg(long)]
        lang: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Also list the envelopes the nodes exchange among themselves: receipts, link
        /// tests and charters.
        #[arg(long, alias = "system")]
        receipts: bool,
        #[arg(long)]
        json: bool,
        /// Keep printing new messages as they arrive.
        #[arg(long)]
        follow: bool,
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
        #[arg(long)]
        dir: PathBuf,
        /// The message id (or a unique prefix of at least 8 hex digits).
        id: String,
        #[arg(long, default_value = "acknowledged", value_parser = ["read", "acknowledged", "declined"])]
        level: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Link health and backlog per peer.
    Status {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint of the channel with a peer now and send it for co-signing.
    Checkpoint {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a self-contained inclusion proof of a message (JSON; `verify` accepts it).
    Proof {
        #[arg(long)]
        dir: PathBuf,
        /// The message id (64 hex digits).
        id: String,
    },
    /// Write the channel with a peer as one verifiable bundle.
    Export {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle or a proof offline: no node, no network. Exit 1 on any problem.
    Verify {
        file: PathBuf,
        #[arg(long)]
        json: bool,
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
        #[arg(long, default_value = "docs/screenshots")]
        out: PathBuf,
    },
    /// Measure throughput and latency between two local nodes over real TLS.
    Bench {
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
        #[arg(long)]
        dir: PathBuf,
        /// Our position, e.g. "Secretary of Defense".
        #[arg(long)]
        ours: String,
        /// The peer's position, e.g. "Minister of National Defense".
        #[arg(long)]
        theirs: String,
    },
    /// List the pairs this node offers.
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Pin a peer's key and addresses (works whether or not the node is running).
    Add {
        #[arg(long)]
        dir: PathBuf,
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
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a console account, or change its role and password. The password is read
    /// from --password-file, or from the terminal (not echoed), or from standard input.
    Add {
        #[arg(long)]
        dir: PathBuf,
        /// The login name.
        #[arg(long)]
        name: String,
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
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FormatsCommand {
    /// Every format: id, version, default precedence and topic, title.
    List {
        #[arg(long, default_value = "en")]
        lang: String,
        #[arg(long)]
        json: bool,
    },
    /// A format's fields, types, constraints and rules.
    Show {
        id: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, default_value = "en")]
        lang: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GlossaryCommand {
    /// Add an agreed pair of terms: --term LANG=TERM --term LANG=TERM.
    Add {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: String,
        #[arg(long = "term", required = true)]
        terms: Vec<String>,
    },
    /// The channel's terms.
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        peer: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print one value, or all of them.
    Get {
        #[arg(long)]
        dir: PathBuf,
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change one value (validated; on a bad value the file is unchanged).
    Set {
        #[arg(long)]
        dir: PathBuf,
        key: String,
        value: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json, matches!(cli.command, Command::Serve { .. }));
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
    match runtime.block_on(run(cli.command)) {
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
            &dir,
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
        Command::Id { dir, json } => commands::id(&dir, json),
        Command::Peer {
            command:
                PeerCommand::Add {
                    dir,
                    name,
                    key,
                    addrs,
                },
        } => commands::peer_add(&dir, name, key, addrs).await,
        Command::Peer {
            command: PeerCommand::List { dir, json },
        } => commands::peer_list(&dir, json),
        Command::User {
            command:
                UserCommand::Add {
                    dir,
                    name,
                    role,
                    password_file,
                    lang,
                },
        } => users::user_add(&dir, &name, &role, password_file.as_deref(), lang).await,
        Command::User {
            command: UserCommand::List { dir, json },
        } => users::user_list(&dir, json).await,
        Command::Config {
            command: ConfigCommand::Get { dir, key, json },
        } => commands::config_get(&dir, key, json),
        Command::Config {
            command: ConfigCommand::Set { dir, key, value },
        } => commands::config_set(&dir, &key, &value),
        Command::Serve { dir } => commands::serve(&dir).await,
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
                wait,
                timeout,
                json,
            };
            commands::send(&dir, options).await
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
        } => commands::inbox(&dir, peer, direction, lang, limit, receipts, json, follow).await,
        Command::Ack {
            dir,
            id,
            level,
            note,
            json,
        } => commands::ack(&dir, &id, &level, note, json).await,
        Command::Status { dir, json } => commands::status(&dir, json).await,
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
        } => formats_cmd::glossary_add(&dir, &peer, &terms).await,
        Command::Glossary {
            command: GlossaryCommand::List { dir, peer, json },
        } => formats_cmd::glossary_list(&dir, &peer, json).await,
        Command::Checkpoint { dir, peer, json } => transcript::checkpoint(&dir, &peer, json).await,
        Command::Proof { dir, id } => transcript::proof(&dir, &id).await,
        Command::Export { dir, peer, out } => transcript::export(&dir, &peer, &out).await,
        Command::Verify { file, json } => transcript::verify(&file, json),
        Command::Charter { dir, peer, json } => charter::show(&dir, &peer, json).await,
        Command::Counterpart {
            command: CounterpartCommand::Add { dir, ours, theirs },
        } => charter::add(&dir, &ours, &theirs),
        Command::Counterpart {
            command: CounterpartCommand::List { dir, json },
        } => charter::list(&dir, json),
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
            messages,
            backlog,
            samples,
            dir,
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
                postgres: (store == "postgres").then_some(database_url),
            })
            .await
        }
    }
}
