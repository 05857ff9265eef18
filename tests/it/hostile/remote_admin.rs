//! Admin commands from a non-loopback address, from a network namespace of the test's own.

use super::*;

/// A network namespace of this test's own, joined to this one by a veth pair with a /30 from
/// 198.18.0.0/15 (the range set aside for network tests), never this machine's own network.
/// Removed when dropped, also when the test fails.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: std::net::Ipv4Addr,
}

impl NetNs {
    /// `None` when namespaces cannot be made here (not root, no `ip`, no permission).
    fn create() -> Option<NetNs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let pid = std::process::id();
        for attempt in 0..4u32 {
            let block = (pid.wrapping_mul(4).wrapping_add(attempt)) % (1 << 15);
            let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
            let (host_ip, ns_ip) = (
                std::net::Ipv4Addr::from(base + 1),
                std::net::Ipv4Addr::from(base + 2),
            );
            let ns = NetNs {
                name: format!("mist-test-{pid}-{attempt}"),
                host_if: format!("mh{pid}x{attempt}"),
                host_ip,
            };
            let ns_if = format!("mn{pid}x{attempt}");
            let (host_cidr, ns_cidr) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
            let ok = ip(&["netns", "add", &ns.name])
                && ip(&[
                    "link",
                    "add",
                    &ns.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &ns_if,
                ])
                && ip(&["link", "set", &ns_if, "netns", &ns.name])
                && ip(&["addr", "add", &host_cidr, "dev", &ns.host_if])
                && ip(&["link", "set", &ns.host_if, "up"])
                && ip(&[
                    "netns", "exec", &ns.name, "ip", "addr", "add", &ns_cidr, "dev", &ns_if,
                ])
                && ip(&["netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up"]);
            if ok {
                return Some(ns);
            }
            // Dropping `ns` removes whatever part was made.
        }
        None
    }

    /// Runs the mist client inside the namespace (bounded by `timeout`).
    fn mist(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("timeout")
            .args([
                "20",
                "ip",
                "netns",
                "exec",
                &self.name,
                crate::support::process::MIST,
            ])
            .args(args)
            .env_remove("MIST_ADMIN_TOKEN")
            .output()
            .expect("run the client in the namespace")
    }
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}

/// A client in another network namespace reaches the server from a non-loopback address:
/// without an `admin_token` its admin commands are refused (and other commands work); with one,
/// they work after `auth`. Needs root and `ip netns`; elsewhere the pure rule is covered by
/// `auth::admin_allowed`'s unit test, and this test says it was skipped.
#[test]
fn admin_commands_from_another_network_namespace() {
    let Some(ns) = NetNs::create() else {
        eprintln!("skipped: cannot create a network namespace here (needs root and `ip netns`)");
        return;
    };
    let addr = format!("{}:0", ns.host_ip);
    let open = TestServer::with(|c| c.tcp_listen_address = addr.clone());
    let tcp = open.tcp.to_string();
    let out = ns.mist(&["--tcp-addr", &tcp, "register", "a", "tok"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mist: admin commands are only allowed from loopback (no admin_token set)\n"
    );
    let out = ns.mist(&["--tcp-addr", &tcp, "ping"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "pong\n")
    );
    // Nothing was registered.
    assert_eq!(
        open.context().tokens().store().tags("tok"),
        Err(mist::StoreError::UnknownToken)
    );

    let guarded = TestServer::with(|c| {
        c.tcp_listen_address = addr.clone();
        c.admin_token = Some("s3cret".into());
    });
    let tcp = guarded.tcp.to_string();
    let out = ns.mist(&["--tcp-addr", &tcp, "register", "a", "tok"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mist: admin commands need auth ADMIN_TOKEN first\n"
    );
    let out = ns.mist(&[
        "--tcp-addr",
        &tcp,
        "--admin-token",
        "s3cret",
        "register",
        "a",
        "tok",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        guarded.context().tokens().store().tags("tok"),
        Ok(vec!["a".to_string()])
    );
}
