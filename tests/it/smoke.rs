//! The harness itself works: a server starts and answers.

use crate::support::TestServer;

#[test]
fn ping_pong() {
    let server = TestServer::start();
    let mut c = server.client();
    c.send("ping");
    c.expect("pong");
}
