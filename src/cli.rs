//! Command-line arguments, as argh definitions. No behaviour lives here.

use argh::FromArgs;
use std::path::PathBuf;

/// mist: a tag-based publish/subscribe server (`mist -d`) and its command-line client.
#[derive(FromArgs, Debug)]
#[argh(
    example = "Run the server on its defaults (TCP 127.0.0.1:1445, HTTP 127.0.0.1:8080):\n  $ {command_name} -d\nRun it with a config file, overriding one setting:\n  $ {command_name} -d --config mist.conf --log-level DEBUG\nPublish and subscribe from a shell:\n  $ {command_name} subscribe alerts,disk &\n  $ {command_name} publish alerts,disk,web01 'disk 91% full'",
    note = "Without -d, a COMMAND runs as a client of the server at --tcp-addr. Admin commands\nsend `auth` first when --admin-token or MIST_ADMIN_TOKEN is set.",
    error_code(
        1,
        "a command failed: the server replied with an error, or could not be reached"
    ),
    error_code(2, "bad arguments or configuration")
)]
pub struct Args {
    /// run the server in the foreground
    #[argh(switch, short = 'd')]
    pub daemon: bool,

    /// server config file (see mist.conf for every setting)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,

    /// line-protocol address: where the server listens, or the server a command talks to
    /// (default 127.0.0.1:1445)
    #[argh(option)]
    pub tcp_addr: Option<String>,

    /// server HTTP and WebSocket address (default 127.0.0.1:8080)
    #[argh(option)]
    pub http_addr: Option<String>,

    /// server log level: TRACE, DEBUG, INFO, WARN or ERROR (default INFO)
    #[argh(option)]
    pub log_level: Option<String>,

    /// admin token sent with `auth` before admin commands (default: $MIST_ADMIN_TOKEN)
    #[argh(option)]
    pub admin_token: Option<String>,

    /// print the version and exit
    #[argh(switch, short = 'v')]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// A client command.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Ping(Ping),
    Publish(Publish),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    List(List),
    Register(Register),
    Unregister(Unregister),
    Set(Set),
    Unset(Unset),
    Tags(Tags),
}

/// Check that the server answers; prints `pong`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ping", example = "$ mist ping\npong")]
pub struct Ping {}

/// Publish DATA with the comma-separated TAGS; with DATA `-`, publish every line of stdin.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "publish",
    example = "$ mist publish alerts,disk 'disk 91% full'\n$ tail -f app.log | mist publish logs,app -"
)]
pub struct Publish {
    /// comma-separated tags, e.g. alerts,disk
    #[argh(positional)]
    pub tags: String,
    /// the message (quote it when it has spaces), or - to read one message per line of stdin
    #[argh(positional)]
    pub data: String,
}

/// Print every message whose tags include all of TAGS, one per line, until interrupted.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "subscribe",
    example = "$ mist subscribe alerts\ndisk 91% full\n$ mist subscribe --with-tags alerts\nalerts,disk disk 91% full"
)]
pub struct Subscribe {
    /// comma-separated tags, e.g. alerts,disk
    #[argh(positional)]
    pub tags: String,
    /// print each message's tags before its data
    #[argh(switch)]
    pub with_tags: bool,
}

/// Send `unsubscribe TAGS` and report any error (subscriptions belong to a connection, so
/// this mainly checks TAGS).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "unsubscribe",
    example = "$ mist unsubscribe alerts,disk"
)]
pub struct Unsubscribe {
    /// comma-separated tags
    #[argh(positional)]
    pub tags: String,
}

/// Print the `list` reply of a new connection (subscriptions belong to a connection).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list", example = "$ mist list\nlist []")]
pub struct List {}

/// Admin: create TOKEN allowing WebSocket subscriptions to TAGS.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "register",
    example = "$ mist register alerts,status s3cret-token"
)]
pub struct Register {
    /// comma-separated tags the token grants
    #[argh(positional)]
    pub tags: String,
    /// the token
    #[argh(positional)]
    pub token: String,
}

/// Admin: delete TOKEN and close its WebSocket connections.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "unregister",
    example = "$ mist unregister s3cret-token"
)]
pub struct Unregister {
    /// the token
    #[argh(positional)]
    pub token: String,
}

/// Admin: add TAGS to an existing TOKEN.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "set", example = "$ mist set billing s3cret-token")]
pub struct Set {
    /// comma-separated tags to add
    #[argh(positional)]
    pub tags: String,
    /// the token
    #[argh(positional)]
    pub token: String,
}

/// Admin: remove TAGS from TOKEN; its WebSocket subscriptions that lose their last allowed tag
/// are removed.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "unset",
    example = "$ mist unset billing s3cret-token"
)]
pub struct Unset {
    /// comma-separated tags to remove
    #[argh(positional)]
    pub tags: String,
    /// the token
    #[argh(positional)]
    pub token: String,
}

/// Admin: print the tags of TOKEN, comma-separated.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "tags",
    example = "$ mist tags s3cret-token\nalerts,status"
)]
pub struct Tags {
    /// the token
    #[argh(positional)]
    pub token: String,
}
