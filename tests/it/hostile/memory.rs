//! Memory under endless lines and slow consumers: the real binary's resident memory stays
//! within budgets derived from the limits.

use super::*;

/// Four clients each send a 16 MiB line without a newline at once, on the default 1 MiB
/// `max_line_bytes`. Each reader's buffer stops growing at the line limit (1 MiB + 2 bytes), so
/// the server's resident memory grows by at most about 4 MiB for the buffers, plus allocator
/// slack; buffering the lines would cost 64 MiB.
#[test]
fn endless_lines_keep_the_servers_memory_bounded() {
    let d = Proc::server_with("endless", "");
    let mut by = LineClient::connect(d.tcp());
    by.ping();
    let rss0 = d.rss_kib();
    let chunk = vec![b'x'; 1 << 20];
    let mut clients: Vec<LineClient> = (0..4).map(|_| LineClient::connect(d.tcp())).collect();
    let mut peak = rss0;
    for mib in 0..16 {
        for c in &mut clients {
            c.send_raw(&chunk);
        }
        by.ping();
        peak = peak.max(d.rss_kib());
        if mib == 1 {
            for c in &mut clients {
                c.expect("error line too long (max_line_bytes 1048576)");
            }
        }
    }
    for c in &mut clients {
        c.send_raw(b"\nping\n");
        c.expect("pong");
    }
    let grew = peak.saturating_sub(rss0);
    eprintln!("16 MiB lines x 4: VmRSS {rss0} KiB, peak {peak} KiB (+{grew} KiB)");
    assert!(grew < 12 * 1024, "VmRSS grew by {grew} KiB");
}

/// The numbers of `stalled_subscriber_under_one_mib_messages_keeps_memory_bounded`.
const BIG: usize = 1 << 20;
const BIG_MESSAGES: usize = 160;

/// One subscriber stops reading (a small receive window, so the kernel holds little for it)
/// while a publisher sends 160 messages of 1 MiB. With `client_queue_bytes` 8 MiB, the
/// server's resident memory stays under a budget that does not depend on how much is
/// published:
///
/// - the stalled client's queue: at most 8 MiB of message batches (`client_queue_bytes`);
/// - the publisher's read buffer and the batch being built from it: at most 2 MiB each
///   (`max_line_bytes` 2 MiB: one read holds at most one longest line);
/// - slack for the allocator (freed megabyte blocks are not always returned to the system at
///   once) and the thread stacks: 8 MiB.
///
/// Socket buffers are kernel memory and not in VmRSS, so the bound does not depend on the
/// kernel's buffer sizes. Without the byte bound the queue alone would hold the 1,048,576
/// messages of `client_queue`, 1 TiB. When the subscriber reads again it gets what was
/// queued, then one notice counting exactly the messages it lost.
#[test]
fn stalled_subscriber_under_one_mib_messages_keeps_memory_bounded() {
    let d = Proc::server_with(
        "slow-consumer",
        "max_line_bytes 2097152\nclient_queue_bytes 8388608\nwrite_timeout 120\n",
    );
    let mut stalled = small_window_client(d.tcp());
    stalled.send("subscribe a");
    stalled.ping();
    let mut p = LineClient::connect(d.tcp());
    // A first round, so that the publisher's buffers and threads exist before measuring.
    p.send("publish b warm-up");
    p.ping();
    let rss0 = d.rss_kib();
    let mut line = b"publish a ".to_vec();
    line.resize(line.len() + BIG, b'm');
    line.push(b'\n');
    let mut peak = rss0;
    let started = Instant::now();
    for i in 0..BIG_MESSAGES {
        // Each message is distinct: its number ends the data.
        let n = format!("{i:06}");
        let end = line.len() - 1;
        line[end - 6..end].copy_from_slice(n.as_bytes());
        p.send_raw(&line);
        if i % 8 == 7 {
            p.ping();
            peak = peak.max(d.rss_kib());
        }
    }
    p.ping();
    let published = started.elapsed();
    peak = peak.max(d.rss_kib());
    let budget_kib = (8 + 2 * 2 + 8) * 1024;
    let grew = peak.saturating_sub(rss0);
    eprintln!(
        "{BIG_MESSAGES} x 1 MiB to a stalled subscriber in {published:?}: VmRSS {rss0} KiB, \
         peak {peak} KiB (+{grew} KiB, budget {budget_kib} KiB)"
    );
    assert!(grew < budget_kib, "VmRSS grew by {grew} KiB");
    let drops = d.metric("mist_drops_total");
    assert!(drops > 0, "nothing was dropped");

    // The subscriber reads again: a prefix of the messages in order, then one notice for the
    // rest (queued once reading made room), then nothing more.
    let mut delivered = 0;
    let notice = loop {
        let l = stalled.line_bytes();
        if let Some(rest) = l.strip_prefix(b"publish a ") {
            assert_eq!(rest.len(), BIG);
            assert_eq!(&rest[BIG - 6..], format!("{delivered:06}").as_bytes());
            delivered += 1;
        } else {
            break String::from_utf8(l).unwrap();
        }
    };
    let lost = BIG_MESSAGES - delivered;
    assert_eq!(
        notice,
        format!("error slow consumer: dropped {lost} messages")
    );
    stalled.ping();
    assert_eq!(drops, lost as u64);
    assert!(
        delivered > 0 && lost > 0,
        "{delivered} delivered, {lost} lost"
    );
    eprintln!("the stalled subscriber got {delivered} messages and a notice for {lost}");
}
