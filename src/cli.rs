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

    /// monitoring address: where the server's monitoring listener is (`off` turns it off), or
    /// the server `mist top` reads (default 127.0.0.1:9445)
    #[argh(option)]
    pub monitor_addr: Option<String>,

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
// `Bench` has many flags; the enum is built once per process, so its size does not matter.
#[allow(clippy::large_enum_variant)]
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
    Bench(Bench),
    Top(Top),
}

/// Live view of a running server from its monitoring listener: totals, then one row per
/// connection, most queued bytes first. Keys: b queued bytes, d drops, s subscriptions, a age,
/// q quit.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "top",
    example = "$ mist top\n$ mist top --monitor-addr 127.0.0.1:9445 --sort dropped\n$ mist top --once --limit 20"
)]
pub struct Top {
    /// the server's monitoring listener (default: the global --monitor-addr, else
    /// 127.0.0.1:9445), e.g. --monitor-addr 127.0.0.1:9445
    #[argh(option)]
    pub monitor_addr: Option<String>,
    /// print one snapshot as a plain table and exit (for scripts)
    #[argh(switch)]
    pub once: bool,
    /// queued_bytes, dropped, subscriptions or age (default queued_bytes)
    #[argh(option, default = "String::from(\"queued_bytes\")")]
    pub sort: String,
    /// most connections --once prints (default 1024)
    #[argh(option, default = "1024")]
    pub limit: usize,
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
pub struct PublishArgs {
    /// comma-separated tags, e.g. alerts,disk
    #[argh(positional)]
    pub tags: String,
    /// the message (quote it when it has spaces), or - to read one message per line of stdin
    #[argh(positional)]
    pub data: String,
}

/// `mist publish TAGS DATA`: [`PublishArgs`], except that a lone `-` is a positional.
#[derive(Debug)]
pub struct Publish {
    pub tags: String,
    pub data: String,
}

impl Publish {
    /// argh takes every argument that starts with `-` for an option, so it refuses
    /// `publish TAGS -`. Ending the options just before the first lone `-` makes it the
    /// positional that the shell convention (and our help) says it is.
    fn dash_is_positional<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut out = Vec::with_capacity(args.len() + 1);
        let mut ended = false;
        for &arg in args {
            if !ended && arg == "-" {
                out.push("--");
                ended = true;
            }
            ended |= arg == "--";
            out.push(arg);
        }
        out
    }
}

impl FromArgs for Publish {
    fn from_args(command_name: &[&str], args: &[&str]) -> Result<Self, argh::EarlyExit> {
        let args = Publish::dash_is_positional(args);
        let p = PublishArgs::from_args(command_name, &args)?;
        Ok(Publish {
            tags: p.tags,
            data: p.data,
        })
    }

    fn redact_arg_values(
        command_name: &[&str],
        args: &[&str],
    ) -> Result<Vec<String>, argh::EarlyExit> {
        PublishArgs::redact_arg_values(command_name, &Publish::dash_is_positional(args))
    }
}

impl argh::SubCommand for Publish {
    const COMMAND: &'static argh::CommandInfo = <PublishArgs as argh::SubCommand>::COMMAND;
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

/// Load a running server and report what it sustained: throughput, latency percentiles,
/// losses, and the server's CPU and memory (with --server-pid). One scenario per run.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "bench",
    example = "100 subscribers, 1 publisher sending 100000 messages as fast as possible:\n  $ mist bench\n4 publishers into 1 subscriber, 1 KiB messages, as JSON:\n  $ mist bench --scenario fanin --size 1024 --json\nLatency of 100 subscribers at 5000 msg/s, subscribers on WebSocket:\n  $ mist bench --scenario latency --transport ws --http-addr 127.0.0.1:8080\nDoes matching slow down with 100000 idle subscriptions? (prints the ratio)\n  $ mist bench --scenario index --compare\nServer memory per connection, with 5000 subscribers at 50 msg/s:\n  $ mist bench --scenario conns --server-pid $(pidof mist)\nWebSocket connects per second (compare auth_store memory and postgres):\n  $ mist --admin-token s3cret bench --scenario connect --conns 2000 --threads 100\nThe same fan-out with the publisher on mist::Client:\n  $ mist bench --client",
    note = "Scenarios and their defaults (flags override them):\n  fanout   1 publisher -> --subs 100, --msgs 100000, --rate 0 (as fast as possible)\n  fanin    --pubs 4 -> 1 subscriber, --msgs 100000 per publisher\n  latency  1 publisher -> --subs 100 at --rate 5000, 5 seconds' worth of messages\n  index    1 subscriber plus --noise-subs 100000 non-matching subscriptions on\n           --noise-conns 10 connections, then a fan-out of --msgs 1000000\n  conns    1 publisher -> --subs 5000 at --rate 50, 10 seconds' worth of messages\n  connect  --conns 1000 WebSocket connects from --threads 50 threads, kept open\nEvery message carries its publisher, sequence number and send time, so each delivery's\nlatency, loss and order are checked. Subscriptions are confirmed (ping/pong, or the\nWebSocket subscribe reply) before the first publish. The run ends when every subscriber\nhas everything (complete), when nothing arrived for --idle seconds after the publishers\nfinished (idle), or at --timeout. The human table goes to stdout, progress to stderr;\n--json prints one JSON object instead of the table. WebSocket runs register a token over\nTCP first (from loopback, or after `auth` with --admin-token or $MIST_ADMIN_TOKEN).\nServer memory per connection is the growth of its RSS during set-up: use a fresh server."
)]
pub struct Bench {
    /// fanout, fanin, latency, index, conns or connect (default fanout), e.g. --scenario fanin
    #[argh(option, default = "String::from(\"fanout\")")]
    pub scenario: String,

    /// how subscribers connect: tcp (line protocol) or ws (WebSocket; publishers stay on TCP)
    /// (default tcp), e.g. --transport ws
    #[argh(option, default = "String::from(\"tcp\")")]
    pub transport: String,

    /// the server's line-protocol address (default: the global --tcp-addr, else
    /// 127.0.0.1:1445), e.g. --addr 127.0.0.1:7400
    #[argh(option)]
    pub addr: Option<String>,

    /// publishers connect here instead of --addr: another node of the same cluster, so every
    /// message crosses the bus (default: --addr), e.g. --pub-addr 127.0.0.1:7500
    #[argh(option)]
    pub pub_addr: Option<String>,

    /// the server's HTTP/WebSocket address, for --transport ws and the connect scenario
    /// (default: the global --http-addr, else 127.0.0.1:8080), e.g. --http-addr 127.0.0.1:7401
    #[argh(option)]
    pub http_addr: Option<String>,

    /// subscriber connections that read as fast as they can (default: 100, or 1 for fanin
    /// and index, 5000 for conns; 0 is allowed with --stalled or --slow), e.g. --subs 10
    #[argh(option)]
    pub subs: Option<usize>,

    /// publisher connections (default: 4 for fanin, else 1), e.g. --pubs 2
    #[argh(option)]
    pub pubs: Option<usize>,

    /// messages per publisher (default: 100000; index: 1000000; latency and conns: 5 and 10
    /// seconds at --rate), e.g. --msgs 1000000
    #[argh(option)]
    pub msgs: Option<u64>,

    /// payload bytes per message, at least the stamp of about 25 bytes (default 64), e.g.
    /// --size 1024
    #[argh(option, default = "64")]
    pub size: usize,

    /// messages per second per publisher, 0 for as fast as possible (default: 5000 for
    /// latency, 50 for conns, else 0), e.g. --rate 10000
    #[argh(option)]
    pub rate: Option<f64>,

    /// comma-separated tags of every published message (default bench), e.g. --topic bench,eu
    #[argh(option, default = "String::from(\"bench\")")]
    pub topic: String,

    /// tags each subscriber subscribes to; must be among --topic, so that every subscriber
    /// gets every message (default: --topic), e.g. --sub-tags bench
    #[argh(option)]
    pub sub_tags: Option<String>,

    /// index: subscriptions that never match, 1-3 tags each like n123,n456 (default 100000),
    /// e.g. --noise-subs 1000000
    #[argh(option)]
    pub noise_subs: Option<usize>,

    /// index: connections holding the noise subscriptions (default 10), e.g. --noise-conns 4
    #[argh(option, default = "10")]
    pub noise_conns: usize,

    /// run once without the noise (index) or without the stalled subscribers (--stalled)
    /// first, then report the ratios with/without
    #[argh(switch)]
    pub compare: bool,

    /// extra TCP subscribers that subscribe and then never read, to see whether they slow
    /// anyone down; reported apart from the others (default 0), e.g. --stalled 2
    #[argh(option, default = "0")]
    pub stalled: usize,

    /// extra TCP subscribers that read slowly: --slow-read bytes at a time, then a pause of
    /// --slow-pause milliseconds; reported apart from the others (default 0), e.g. --slow 3
    #[argh(option, default = "0")]
    pub slow: usize,

    /// bytes a --slow subscriber takes per read (default 65536), e.g. --slow-read 4096
    #[argh(option, default = "65536")]
    pub slow_read: usize,

    /// milliseconds a --slow subscriber pauses after each read (default 2), e.g.
    /// --slow-pause 10
    #[argh(option, default = "2.0")]
    pub slow_pause: f64,

    /// connect: WebSocket connections to open and keep open (default 1000), e.g. --conns 5000
    #[argh(option, default = "1000")]
    pub conns: usize,

    /// connect: threads opening them at once (default 50), e.g. --threads 100
    #[argh(option, default = "50")]
    pub threads: usize,

    /// threads reading the subscriber connections with epoll (default: CPUs, at most 4),
    /// e.g. --sub-threads 1
    #[argh(option)]
    pub sub_threads: Option<usize>,

    /// the server's process id, to report its CPU time, CPU per delivery and memory from
    /// /proc (same machine only), e.g. --server-pid $(pidof mist)
    #[argh(option)]
    pub server_pid: Option<u32>,

    /// admin token for `auth` before registering the benchmark's WebSocket token (default:
    /// the global --admin-token, else $MIST_ADMIN_TOKEN), e.g. --admin-token s3cret
    #[argh(option)]
    pub admin_token: Option<String>,

    /// seconds the whole run may take, set-up included (default 120), e.g. --timeout 30
    #[argh(option, default = "120.0")]
    pub timeout: f64,

    /// seconds without a delivery, after the publishers finished, that end the run
    /// (default 2), e.g. --idle 5
    #[argh(option, default = "2.0")]
    pub idle: f64,

    /// publishers publish through mist::Client, the library's client, instead of writing
    /// lines to their sockets themselves (to compare the two)
    #[argh(switch)]
    pub client: bool,

    /// print one JSON object on stdout instead of the table
    #[argh(switch)]
    pub json: bool,
}
