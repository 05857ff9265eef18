//! The config parser, `Config::parse`, on arbitrary text.
//!
//! It must not panic, must not touch the network (listen addresses are checked without
//! resolving names), must give the same result twice, and every error must name the file, a
//! line that exists, and the key that line starts with.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mist::config::{Config, ConfigError};

fuzz_target!(|text: &str| {
    let parsed = Config::parse(text, "fuzz.conf");
    assert_eq!(parsed, Config::parse(text, "fuzz.conf"));
    match parsed {
        Ok(c) => {
            assert!(c.max_line_bytes >= 64);
            assert!(c.max_tags >= 1 && c.client_queue >= 1 && c.max_connections >= 1);
            for addr in [&c.tcp_listen_address, &c.http_listen_address, &c.pg.address] {
                let (host, port) = addr.rsplit_once(':').expect("addresses are host:port");
                assert!(!host.is_empty() && port.parse::<u16>().is_ok(), "{addr}");
            }
        }
        Err(ConfigError::Setting {
            file,
            line,
            key,
            reason,
        }) => {
            assert_eq!(file, "fuzz.conf");
            let lines: Vec<&str> = text.lines().collect();
            assert!((1..=lines.len()).contains(&line), "line {line}");
            let first_word = lines[line - 1].trim().split(char::is_whitespace).next();
            assert_eq!(first_word, Some(key.as_str()));
            assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
        }
        Err(other) => panic!("not a setting error: {other}"),
    }
});
