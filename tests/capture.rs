//! Root integration tests of the kernel capture: the real programs, real servers and clients.
//! Each test asserts exact byte counts, roles, addresses and pids.
mod common;

use std::{fs, process::Command, time::Instant};

use common::*;
use serde_json::Value;

fn same_conn(e: &Value, open: &Value) -> bool {
    e["pid"] == open["pid"] && e["fd"] == open["fd"] && e["gen"] == open["gen"]
}

fn data_of<'a>(events: &'a [Value], open: &Value) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "data" && same_conn(e, open)).collect()
}

/// One request through raw_client.py: (bytes sent, bytes received).
fn request(client: &mut Peer, line: &str) -> (u64, u64) {
    client.send(line);
    let reply = client.expect("sent ");
    let n: Vec<u64> = reply.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
}

fn payload(e: &Value) -> &str {
    e["payload"].as_str().unwrap_or("")
}

/// The socket tracepoints of the default data path exist (Linux 6.16+).
fn kernel_has_socket_hooks() -> bool {
    ["tcp/tcp_sendmsg_locked", "sock/sock_send_length", "sock/sock_recv_length"]
        .iter()
        .all(|t| std::path::Path::new("/sys/kernel/tracing/events").join(t).is_dir())
}

#[test]
fn python_server_and_curl_exact_bytes_roles_and_addresses() {
    let expected = if kernel_has_socket_hooks() { "sockets" } else { "syscalls" };
    python_server_and_curl(&[], expected);
}

/// The data path of older kernels, on this one: every syscall hooked instead of the socket layer.
#[test]
fn python_server_and_curl_through_the_syscall_hooks() {
    python_server_and_curl(&["--data-hooks", "syscalls"], "syscalls");
}

fn python_server_and_curl(args: &[&str], hooks: &str) {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let pid = server.pid();
    let pid_arg = pid.to_string();
    let mut agent = Agent::start(&[&["--pid", pid_arg.as_str()][..], args].concat());
    let ready = agent.wait_for("ready", EVENT_TIMEOUT, |e| e["type"] == "ready");
    assert_eq!(ready["data_hooks"], hooks);
    let sizes = curl(&format!("http://127.0.0.1:{port}/bytes/1000"), &[]);
    let remote = format!("127.0.0.1:{}", sizes.local_port);
    wait_server_close(&mut agent, pid, &remote);
    let events = agent.stop();

    let opens: Vec<&Value> =
        of(&events, "conn_open", pid).into_iter().filter(|e| e["remote"] == remote.as_str()).collect();
    assert_eq!(opens.len(), 1, "one accepted connection: {events:#?}");
    let open = opens[0];
    assert_eq!(open["role"], "server");
    assert_eq!(open["local"], format!("127.0.0.1:{port}"));
    assert_eq!(open["preexisting"], false);

    let data = data_of(&events, open);
    assert_eq!(bytes(&data, "server", "ingress"), sizes.request, "request bytes");
    assert_eq!(bytes(&data, "server", "egress"), sizes.header + sizes.body, "response bytes");
    let first_in = data.iter().find(|e| e["direction"] == "ingress").expect("ingress data");
    assert!(payload(first_in).starts_with("GET /bytes/1000 HTTP/1.1\r\n"), "{first_in}");
    assert_eq!(first_in["head"], "GET /bytes/1000 HTTP/1.1");
    let first_out = data.iter().find(|e| e["direction"] == "egress").expect("egress data");
    assert!(payload(first_out).starts_with("HTTP/1.1 200 OK\r\n"), "{first_out}");

    // Timestamps are ordered: open ≤ request read < response written ≤ close.
    let close = of(&events, "conn_close", pid).into_iter().find(|e| same_conn(e, open)).expect("close");
    let ts = |e: &Value| e["ts"].as_u64().expect("ts");
    assert!(ts(open) <= ts(first_in) && ts(first_in) <= first_out["enter_ts"].as_u64().unwrap());
    assert!(data.iter().all(|e| ts(e) <= ts(close)));
    // The request was served by a thread of the server process (ThreadingHTTPServer).
    assert!(data.iter().all(|e| e["pid"] == pid && e["tid"].as_u64().unwrap() > 0));
}

/// The Python test server (its pid and port) and an agent tracing it, ready.
fn traced_python_server() -> (Peer, u32, u16, Agent) {
    let (server, port) = python_server("127.0.0.1");
    let pid = server.pid();
    let mut agent = Agent::start(&["--pid", &pid.to_string()]);
    agent.wait_for("ready", EVENT_TIMEOUT, |e| e["type"] == "ready");
    (server, pid, port, agent)
}

/// Waits until server `pid`'s end of the connection from `remote` has closed.
fn wait_server_close(agent: &mut Agent, pid: u32, remote: &str) {
    agent.wait_for("server close", EVENT_TIMEOUT, |e| {
        e["type"] == "conn_close" && e["pid"] == pid && e["remote"] == remote
    });
}

/// The connection server `pid` accepted from `remote`.
fn accepted_from<'a>(events: &'a [Value], pid: u32, remote: &str) -> &'a Value {
    of(events, "conn_open", pid)
        .into_iter()
        .find(|e| e["remote"] == remote)
        .unwrap_or_else(|| panic!("no connection from {remote}: {events:#?}"))
}

/// Runs a Python `script` that prints `port N`, waits for a line on stdin, then makes its
/// exchange and prints `local N` (its client's port), traced from before that line is sent.
/// Returns the peer, its pid, the agent and the client's address.
fn traced_script(script: &str) -> (Peer, u32, Agent, String) {
    let mut peer = Peer::spawn(Command::new("python3").args(["-c", script]));
    peer.expect("port ");
    let pid = peer.pid();
    let mut agent = Agent::start(&["--pid", &pid.to_string()]);
    agent.wait_for("ready", EVENT_TIMEOUT, |e| e["type"] == "ready");
    peer.send("go");
    let local: u16 = peer.expect("local ")[6..].trim().parse().expect("local port");
    (peer, pid, agent, format!("127.0.0.1:{local}"))
}

/// Whether connection `open`'s first data event in `direction` comes before its close (both
/// must be there).
fn data_before_close(events: &[Value], open: &Value, direction: &str) -> bool {
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let close = at(&|e| e["type"] == "conn_close" && same_conn(e, open));
    let data = at(&|e| e["type"] == "data" && e["direction"] == direction && same_conn(e, open));
    data.is_some() && data < close
}

/// A response written from several buffers in one call (writev, sendmsg): every buffer's bytes
/// are captured, in order: two (read as one pair of iovec entries) and five.
#[test]
fn gathered_writes_are_captured_in_order() {
    let _g = serial();
    require_root();
    let (_server, pid, port, mut agent) = traced_python_server();
    let mut expected = Vec::new();
    for (how, parts) in [("writev", 5), ("sendmsg", 5), ("writev", 2), ("sendmsg", 2)] {
        let sizes = curl(&format!("http://127.0.0.1:{port}/gather/{how}/300/{parts}"), &[]);
        assert_eq!(sizes.body, 300, "{how}");
        let remote = format!("127.0.0.1:{}", sizes.local_port);
        wait_server_close(&mut agent, pid, &remote);
        expected.push((remote, how));
    }
    let events = agent.stop();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 300\r\n\r\n";
    let whole = format!("{head}{}{}", "a".repeat(150), "b".repeat(150));
    for (remote, syscall) in expected {
        let open = accepted_from(&events, pid, &remote);
        let out: Vec<&Value> =
            data_of(&events, open).into_iter().filter(|e| e["direction"] == "egress").collect();
        assert_eq!(out.len(), 1, "{syscall}: one write: {out:#?}");
        assert_eq!(out[0]["syscall"], syscall);
        assert_eq!(out[0]["len"], whole.len(), "{syscall}");
        assert_eq!(payload(out[0]), whole, "{syscall}: every buffer, in order");
    }
}

/// A write of a whole head and a body in two buffers has its head copied and its body counted,
/// unless the body is small or its first byte could start a chunk size or another message: a
/// chunked body's size lines and a pipelined head are what framing needs.
#[test]
fn a_body_written_apart_from_its_head_is_counted_not_copied() {
    let _g = serial();
    require_root();
    let (_server, pid, port, mut agent) = traced_python_server();
    let cases = [
        ("writev", 300, "z", true),
        ("sendmsg", 4096, "{", true),
        ("writev", 300, "Hi", true),
        ("writev", 300, "1x", true),
        ("writev", 255, "z", false),
        // Eight hex digits or eight capitals: a chunk size or a method, for all the kernel knows.
        ("writev", 300, "7", false),
        ("writev", 300, "c", false),
        ("sendmsg", 300, "H", false),
    ];
    let mut expected = Vec::new();
    for (how, n, fill, skipped) in cases {
        let sizes = curl(&format!("http://127.0.0.1:{port}/gather/{how}/{n}/2/{fill}"), &[]);
        assert_eq!(sizes.body, n, "{how} {n} {fill}");
        let remote = format!("127.0.0.1:{}", sizes.local_port);
        wait_server_close(&mut agent, pid, &remote);
        expected.push((remote, how, n, fill, skipped));
    }
    let events = agent.stop();
    for (remote, how, n, fill, skipped) in expected {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {n}\r\n\r\n");
        let open = accepted_from(&events, pid, &remote);
        let out: Vec<&Value> =
            data_of(&events, open).into_iter().filter(|e| e["direction"] == "egress").collect();
        let case = format!("{how} {n} bytes of {fill:?}");
        assert_eq!(out.len(), 1, "{case}: one write: {out:#?}");
        assert_eq!(out[0]["len"], head.len() + n as usize, "{case}: every byte counted");
        assert_eq!(out[0]["body_skipped"], skipped, "{case}");
        assert_eq!(out[0]["truncated"], false, "{case}");
        if skipped {
            assert_eq!(payload(out[0]), head, "{case}: the head only");
        } else {
            let body: String = fill.repeat(n as usize).chars().take(n as usize).collect();
            assert_eq!(payload(out[0]), format!("{head}{body}"), "{case}");
        }
    }
}

/// A head written on its own, then its body: the body's writes are counted, not copied, and the
/// next response on the connection is copied again from its head. The client reads every byte.
#[test]
fn a_body_written_after_its_head_is_counted_not_copied() {
    let _g = serial();
    require_root();
    let (_server, pid, port, mut agent) = traced_python_server();
    // One curl, two requests on one keep-alive connection.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{local_port} %{size_download}\n"])
        .arg(format!("http://127.0.0.1:{port}/bytes/100000"))
        .arg(format!("http://127.0.0.1:{port}/bytes/200"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<Vec<u64>> =
        text.lines().map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0][0], lines[1][0], "one connection: {text}");
    assert_eq!((lines[0][1], lines[1][1]), (100_000, 200));
    let remote = format!("127.0.0.1:{}", lines[0][0]);
    wait_server_close(&mut agent, pid, &remote);
    let events = agent.stop();
    let open = accepted_from(&events, pid, &remote);
    let out: Vec<&Value> =
        data_of(&events, open).into_iter().filter(|e| e["direction"] == "egress").collect();
    let heads: Vec<usize> =
        (0..out.len()).filter(|i| payload(out[*i]).starts_with("HTTP/1.1 200 ")).collect();
    assert_eq!(heads.len(), 2, "two heads, each copied: {out:#?}");
    let first_head = payload(out[heads[0]]);
    assert!(first_head.ends_with("Content-Length: 100000\r\n\r\n"), "{first_head:?}");
    let first_body = &out[heads[0] + 1..heads[1]];
    assert!(!first_body.is_empty(), "{out:#?}");
    for e in first_body {
        assert_eq!(e["body_skipped"], true, "{e}");
        assert_eq!(e["captured"], 0, "{e}");
    }
    let body_len: u64 = first_body.iter().map(|e| e["len"].as_u64().unwrap()).sum();
    assert_eq!(body_len, 100_000, "every body byte counted");
    // The second response: its head, then its body, both copied (the body is too small to skip).
    let second: String = out[heads[1]..].iter().map(|e| payload(e)).collect();
    assert!(second.ends_with(&format!("Content-Length: 200\r\n\r\n{}", "x".repeat(200))), "{second:?}");
    assert!(out[heads[1]..].iter().all(|e| e["body_skipped"] == false));
}

/// Go's net/http writes a head and its body in one buffer (a body too large for its 4 KiB
/// buffer goes in later writes): the kernel finds the head's end, copies the head and counts the
/// body, of each response on the connection, and does not look into the second response's write
/// as more of the first one's body.
#[test]
fn a_head_and_body_written_in_one_buffer_has_only_its_head_copied() {
    let _g = serial();
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let go_bin = build_go_hop(dir.path());
    for body in [3_000usize, 20_000] {
        let port = free_port();
        let mut go = Peer::spawn(
            Command::new(&go_bin).args(["127.0.0.1", &port.to_string()]).env("HOP_BODY", body.to_string()),
        );
        go.expect("port ");
        let pid = go.pid();
        let mut agent = Agent::start(&["--pid", &pid.to_string()]);
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{local_port} %{size_download}\n"])
            .arg(format!("http://127.0.0.1:{port}/hop/a"))
            .arg(format!("http://127.0.0.1:{port}/hop/b"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let sizes: Vec<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap_or("")).collect();
        assert_eq!(sizes, [body.to_string(), body.to_string()], "{text}");
        let remote = format!("127.0.0.1:{}", text.split(' ').next().unwrap());
        // Go closes the connection when curl has left.
        wait_server_close(&mut agent, pid, &remote);
        let events = agent.stop();
        let open = accepted_from(&events, pid, &remote);
        let out: Vec<&Value> =
            data_of(&events, open).into_iter().filter(|e| e["direction"] == "egress").collect();
        let total: u64 = out.iter().map(|e| e["len"].as_u64().unwrap()).sum();
        let heads: Vec<usize> =
            (0..out.len()).filter(|i| payload(out[*i]).starts_with("HTTP/1.1 200 OK")).collect();
        assert_eq!(heads.len(), 2, "{body}: {out:#?}");
        let head_bytes: u64 = heads.iter().map(|i| out[*i]["captured"].as_u64().unwrap()).sum();
        assert_eq!(total, head_bytes + 2 * body as u64, "{body}: every byte counted");
        for (i, e) in out.iter().enumerate() {
            assert_eq!(e["body_skipped"], true, "{body}: {e}");
            if heads.contains(&i) {
                let p = payload(e);
                assert!(p.contains(&format!("\r\nContent-Length: {body}\r\n")), "{p:?}");
                assert!(p.ends_with("\r\n\r\n"), "{body}: the head only: {p:?}");
            } else {
                assert_eq!(e["captured"], 0, "{body}: {e}");
            }
        }
        // Only the writes that go on with a body were looked into: not the second response,
        // which comes after the client's next request.
        let status = events.iter().rev().find(|e| e["type"] == "status").expect("final status");
        assert_eq!(status["kernel"]["body_checks"], (out.len() - heads.len()) as u64, "{body}: {status}");
    }
}

/// A response written to a client that has already closed its end: the client's kernel answers
/// the bytes with a reset, which the server's kernel processes before the write returns and which
/// closes the socket. The response still went out: it is reported, and before the close.
#[test]
fn a_response_to_a_client_that_left_is_reported_before_the_reset_closes_the_socket() {
    let _g = serial();
    require_root();
    let (_server, pid, port, mut agent) = traced_python_server();
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         print('local', s.getsockname()[1], flush=True)\n\
         s.sendall(b'GET /after-close HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         s.close()\n\
         print('closed', flush=True)\n"
    );
    let mut client = Peer::spawn(Command::new("python3").args(["-c", &script]));
    let local: u16 = client.expect("local ")[6..].trim().parse().unwrap();
    client.expect("closed");
    let remote = format!("127.0.0.1:{local}");
    wait_server_close(&mut agent, pid, &remote);
    let events = agent.stop();
    let open = accepted_from(&events, pid, &remote);
    let data = data_of(&events, open);
    let response = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
    assert_eq!(bytes(&data, "server", "egress"), response.len() as u64, "the response: {data:#?}");
    let out = data.iter().find(|e| e["direction"] == "egress").expect("egress data");
    assert_eq!(payload(out), response);
    assert!(data_before_close(&events, open, "egress"), "the response comes before the close: {events:#?}");
}

/// A client that sends a request and resets the connection before the server reads it: the
/// reset closes the socket (in the client's context), and the server still reads the request
/// from it afterwards. That request is reported, on a connection that ends after it.
#[test]
fn a_request_read_after_the_client_reset_the_connection_is_reported() {
    let _g = serial();
    require_root();
    if !kernel_has_socket_hooks() {
        return; // the syscall path ends connections at close(), not at the reset
    }
    let script = "import select, socket, struct, sys\n\
         l = socket.socket()\n\
         l.bind(('127.0.0.1', 0))\n\
         l.listen(1)\n\
         print('port', l.getsockname()[1], flush=True)\n\
         sys.stdin.readline()\n\
         c = socket.create_connection(l.getsockname())\n\
         s, _ = l.accept()\n\
         c.sendall(b'GET /reset HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         print('local', c.getsockname()[1], flush=True)\n\
         c.close()\n\
         p = select.poll()\n\
         p.register(s, select.POLLHUP)\n\
         p.poll(10000)\n\
         print('read', len(s.recv(4096)), flush=True)\n\
         s.close()\n";
    let (mut peer, pid, mut agent, local) = traced_script(script);
    let request = "GET /reset HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(peer.expect("read "), format!("read {}", request.len()), "the request was still readable");
    let remote = local;
    wait_server_close(&mut agent, pid, &remote);
    let events = agent.stop();
    let open = accepted_from(&events, pid, &remote);
    assert_eq!(open["role"], "server");
    let data = data_of(&events, open);
    assert_eq!(bytes(&data, "server", "ingress"), request.len() as u64, "{events:#?}");
    assert_eq!(data[0]["head"], "GET /reset HTTP/1.1");
    assert!(data_before_close(&events, open, "ingress"), "the request comes before the close: {events:#?}");
}

/// A client that half-closes after its request (shutdown(SHUT_WR)) and reads the response only
/// after the server's FIN arrived: its socket closed (FIN_WAIT2 → TIME_WAIT) before the reads,
/// which still return the whole response, 64 KiB of body over many reads.
#[test]
fn a_response_read_after_a_half_closed_socket_closed_is_reported() {
    let _g = serial();
    require_root();
    if !kernel_has_socket_hooks() {
        return; // the syscall path ends connections at close(), not at the state change
    }
    // The server is a forked child: a state change that the client's own process causes inside
    // close() is that process closing, and ends the connection at once.
    let script = "import os, select, socket, sys\n\
         l = socket.socket()\n\
         l.bind(('127.0.0.1', 0))\n\
         l.listen(1)\n\
         child = os.fork()\n\
         if child == 0:\n\
         \x20   s, _ = l.accept()\n\
         \x20   s.recv(4096)\n\
         \x20   s.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 65536\\r\\n\\r\\n' + b'x' * 65536)\n\
         \x20   s.close()\n\
         \x20   os._exit(0)\n\
         print('port', l.getsockname()[1], flush=True)\n\
         sys.stdin.readline()\n\
         c = socket.create_connection(l.getsockname())\n\
         c.sendall(b'GET /half HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         c.shutdown(socket.SHUT_WR)\n\
         p = select.poll()\n\
         p.register(c, select.POLLRDHUP)\n\
         p.poll(10000)\n\
         os.waitpid(child, 0)\n\
         print('local', c.getsockname()[1], flush=True)\n\
         n = 0\n\
         while True:\n\
         \x20   b = c.recv(4096)\n\
         \x20   n += len(b)\n\
         \x20   if not b:\n\
         \x20       break\n\
         print('read', n, flush=True)\n\
         c.close()\n";
    let (mut peer, pid, mut agent, local) = traced_script(script);
    let response = "HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".len() + 65536;
    assert_eq!(peer.expect("read "), format!("read {response}"), "the response was still readable");
    let close = agent.wait_for("the client's close", EVENT_TIMEOUT, |e| {
        e["type"] == "conn_close" && e["pid"] == pid && e["local"] == local.as_str()
    });
    let events = agent.stop();
    let open = events
        .iter()
        .find(|e| e["type"] == "conn_open" && same_conn(e, &close))
        .unwrap_or_else(|| panic!("the client connection opened: {events:#?}"));
    assert_eq!(open["role"], "client");
    let data = data_of(&events, open);
    assert_eq!(bytes(&data, "client", "egress"), "GET /half HTTP/1.1\r\nHost: x\r\n\r\n".len() as u64);
    assert_eq!(bytes(&data, "client", "ingress"), response as u64, "{events:#?}");
    assert!(data_before_close(&events, open, "ingress"), "the response comes before the close: {events:#?}");
}

/// The kernel's connection entries of process `pid`, each as whether it is dead (generation 0:
/// ended by its socket's close and left for the process to reuse), from `bpftool`.
fn conn_entries(pid: u32) -> Vec<bool> {
    let out = Command::new("bpftool").args(["map", "dump", "name", "CONNS", "-j"]).output().expect("bpftool");
    let entries: Value = serde_json::from_slice(&out.stdout).expect("bpftool map dump json");
    let bytes = |v: &Value| -> Vec<u8> {
        v.as_array()
            .expect("hex bytes")
            .iter()
            .map(|b| {
                u8::from_str_radix(b.as_str().expect("hex byte").trim_start_matches("0x"), 16).expect("hex")
            })
            .collect()
    };
    entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| bytes(&e["key"])[4..8] == pid.to_le_bytes())
        .map(|e| bytes(&e["value"])[..8].iter().all(|b| *b == 0))
        .collect()
}

/// A connection whose socket closes after its application let go of it (the server closed first;
/// the state change comes later, in softirq context) leaves a dead entry in the kernel's map for
/// the process to reuse with the fd number. When the process exits, the agent removes those: the
/// map keeps nothing of an exited process.
#[test]
fn an_exited_process_leaves_no_connection_entries() {
    let _g = serial();
    require_root();
    if !kernel_has_socket_hooks() {
        return; // the syscall path removes a connection's entry at close()
    }
    let (server, pid, port, mut agent) = traced_python_server();
    for _ in 0..3 {
        let sizes = curl(&format!("http://127.0.0.1:{port}/"), &[]);
        wait_server_close(&mut agent, pid, &format!("127.0.0.1:{}", sizes.local_port));
    }
    let before = conn_entries(pid);
    assert!(before.contains(&true), "a closed connection's entry is left, dead: {before:?}");
    drop(server);
    // The agent handles an event before it prints it.
    agent.wait_for("the server's exit", EVENT_TIMEOUT, |e| e["type"] == "exit" && e["pid"] == pid);
    assert_eq!(conn_entries(pid), Vec::<bool>::new(), "entries of the exited process");
    agent.stop();
}

/// The kernel's selection array takes a byte per possible pid (eight to a map value, not a value
/// each: 4 MiB instead of 32 at the common pid_max of 4194304), and the byte the agent sets for
/// a selected process is the one the kernel reads for it.
#[test]
fn the_selection_array_takes_a_byte_per_pid() {
    let _g = serial();
    require_root();
    let (_server, pid, _port, agent) = traced_python_server();
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let out =
        Command::new("bpftool").args(["map", "show", "name", "WATCHED", "-j"]).output().expect("bpftool");
    let map: Value = serde_json::from_slice(&out.stdout).expect("bpftool map show json");
    assert_eq!(map["bytes_value"], 8, "{map}");
    assert_eq!(map["max_entries"], pid_max.div_ceil(8), "{map}");
    let key: Vec<String> = (pid / 8).to_le_bytes().iter().map(|b| b.to_string()).collect();
    let out = Command::new("bpftool")
        .args(["map", "lookup", "name", "WATCHED", "key"])
        .args(&key)
        .arg("-j")
        .output()
        .expect("bpftool");
    let entry: Value = serde_json::from_slice(&out.stdout).expect("bpftool map lookup json");
    let value: Vec<u8> = entry["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    // WATCH_SELECTED is bit 0 of the pid's own byte.
    assert_eq!(value[(pid % 8) as usize] & 1, 1, "pid {pid}: {value:?}");
    agent.stop();
}

/// A server that accepts in one process and serves each connection in a child it forks (the
/// parent closes its copy): the connection belongs to the process that reads and writes it.
#[test]
fn fork_per_connection_server_is_traced_in_the_child_that_serves() {
    let _g = serial();
    require_root();
    if !kernel_has_socket_hooks() {
        return; // the syscall path ties a connection to the process that accepted it
    }
    let mut server = Peer::python("http_server.py", &["127.0.0.1", "fork"]);
    let port: u16 = server.port();
    let spid = server.pid();
    let mut agent = Agent::start(&["--pid", &spid.to_string()]);
    for n in [100, 2000] {
        let sizes = curl(&format!("http://127.0.0.1:{port}/bytes/{n}"), &[]);
        let remote = format!("127.0.0.1:{}", sizes.local_port);
        let close = agent.wait_for("the child's close", EVENT_TIMEOUT, |e| {
            e["type"] == "conn_close" && e["remote"] == remote.as_str()
        });
        let events = &agent.seen;
        let open = events
            .iter()
            .find(|e| e["type"] == "conn_open" && same_conn(e, &close))
            .expect("opened by the child's first read");
        assert_eq!(open["role"], "server");
        assert_ne!(open["pid"], spid, "served by a forked child, not the accepting parent");
        assert_eq!(open["local"], format!("127.0.0.1:{port}"));
        let data = data_of(events, open);
        assert_eq!(bytes(&data, "server", "ingress"), sizes.request, "request bytes");
        assert_eq!(bytes(&data, "server", "egress"), sizes.header + sizes.body, "response bytes");
    }
    let events = agent.stop();
    assert!(
        !events.iter().any(|e| e["type"] == "data" && e["pid"] == spid),
        "the parent only accepts: {events:#?}"
    );
}

/// Loaded programs whose id is above `after`: (id, name).
fn programs_loaded_after(after: u64) -> Vec<(u64, String)> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool json");
    progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string())))
        .filter(|(id, _)| *id > after)
        .collect()
}

/// The socket path attaches no syscall tracepoint: one alone would put every syscall of every
/// task on the kernel's slow path (TIF_SYSCALL_TRACEPOINT). The syscall path, by contrast, does.
#[test]
fn the_socket_path_attaches_no_syscall_tracepoint() {
    let _g = serial();
    require_root();
    if !kernel_has_socket_hooks() {
        return;
    }
    for (args, syscall_hooks) in [(&[][..], false), (&["--data-hooks", "syscalls"][..], true)] {
        let before = programs_loaded_after(0).iter().map(|(id, _)| *id).max().unwrap_or(0);
        let agent = Agent::start(&[&["--pid", &std::process::id().to_string()][..], args].concat());
        let names: Vec<String> = programs_loaded_after(before).into_iter().map(|(_, n)| n).collect();
        agent.stop();
        // TCP state changes: the tracepoint with the syscall path, its raw form (no record built)
        // with the socket path.
        let state = if syscall_hooks { "inet_sock_set_state" } else { "sock_set_state" };
        assert!(names.iter().any(|n| n == state), "{names:?}");
        let syscall: Vec<&String> = names.iter().filter(|n| n.starts_with("sys_")).collect();
        assert_eq!(!syscall.is_empty(), syscall_hooks, "{args:?}: {names:?}");
    }
}

/// A connection found in /proc (its socket unknown) that closes before a byte moves on it: its
/// fd's next connection is a connection of its own, not the old one with the old peer.
#[test]
fn a_reused_fd_of_a_connection_found_in_proc_is_a_new_connection() {
    let _g = serial();
    require_root();
    if !kernel_has_socket_hooks() {
        return; // the syscall path sees the close() itself
    }
    let (server, port) = python_server("127.0.0.1");
    let mut client = Peer::python("raw_client.py", &["127.0.0.1", &port.to_string()]);
    let old_port: u16 = client.expect("connected ")[10..].trim().parse().unwrap();
    request(&mut client, "get /before"); // accepted and served before the agent starts
    let spid = server.pid();
    let mut agent = Agent::start(&["--pid", &spid.to_string()]);
    let old_remote = format!("127.0.0.1:{old_port}");
    let adopted = agent.wait_for("the connection found in /proc", EVENT_TIMEOUT, |e| {
        e["type"] == "conn_open" && e["pid"] == spid && e["remote"] == old_remote.as_str()
    });
    assert_eq!(adopted["preexisting"], true);
    client.send("quit");
    client.expect("closed");
    // Until the server has closed its end, the fd is not free.
    let gone = || {
        let table = fs::read_to_string(format!("/proc/{spid}/net/tcp")).unwrap_or_default();
        let (l, r) = (format!(":{port:04X} "), format!(":{old_port:04X} "));
        !table.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[1]).ends_with(&l) && format!("{} ", f[2]).ends_with(&r)
        })
    };
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !gone() {
        assert!(Instant::now() < deadline, "the server never closed the old connection");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sizes = curl(&format!("http://127.0.0.1:{port}/bytes/10"), &[]);
    let remote = format!("127.0.0.1:{}", sizes.local_port);
    agent.wait_for("the new connection's close", EVENT_TIMEOUT, |e| {
        e["type"] == "conn_close" && e["pid"] == spid && e["remote"] == remote.as_str()
    });
    let events = agent.stop();
    let open = events
        .iter()
        .find(|e| e["type"] == "conn_open" && e["pid"] == spid && e["remote"] == remote.as_str())
        .expect("the new connection opens");
    assert_eq!(open["fd"], adopted["fd"], "the scenario: the new connection took the old fd");
    assert_eq!(open["preexisting"], false);
    assert_eq!(bytes(&data_of(&events, open), "server", "ingress"), sizes.request);
    assert!(data_of(&events, &adopted).is_empty(), "nothing belongs to the old connection: {events:#?}");
    let old_close = events.iter().position(|e| e["type"] == "conn_close" && same_conn(e, &adopted));
    let new_open = events.iter().position(|e| e["type"] == "conn_open" && same_conn(e, open));
    assert!(old_close.is_some() && old_close < new_open, "the old connection ends first");
}

#[test]
fn keep_alive_requests_on_one_connection_both_sides() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("127.0.0.1");
    let mut client = Peer::python("raw_client.py", &["127.0.0.1", &port.to_string()]);
    let client_port: u16 = client.expect("connected ")[10..].trim().parse().unwrap();
    let (spid, cpid) = (server.pid(), client.pid());
    let mut agent = Agent::start(&["--pid", &spid.to_string(), "--pid", &cpid.to_string()]);

    // The server thread was already blocked in recv() when the agent attached: that read's
    // bytes are not seen (the connection is traced from its next message), so a warm-up request
    // goes first and the assertions allow for its request being missed on the server side.
    let (warm_sent, warm_received) = request(&mut client, "get /warmup");
    let mut sent = 0;
    let mut received = 0;
    for path in ["/k1", "/bytes/3000", "/k3"] {
        let (s, r) = request(&mut client, &format!("get {path}"));
        sent += s;
        received += r;
    }
    client.send("quit");
    client.expect("closed");
    agent.wait_for("server close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == spid);
    let events = agent.stop();

    // The connection existed before the agent started on both sides.
    let sopen = of(&events, "conn_open", spid)[0];
    assert_eq!(sopen["role"], "server");
    assert_eq!(sopen["preexisting"], true);
    assert_eq!(sopen["remote"], format!("127.0.0.1:{client_port}"));
    let copen = of(&events, "conn_open", cpid)[0];
    assert_eq!(copen["role"], "client");
    assert_eq!(copen["preexisting"], true);
    assert_eq!(copen["remote"], format!("127.0.0.1:{port}"));
    assert_eq!(copen["local"], format!("127.0.0.1:{client_port}"));

    let sdata = data_of(&events, sopen);
    let mut requests: Vec<&str> =
        sdata.iter().filter(|e| e["direction"] == "ingress").filter_map(|e| e["head"].as_str()).collect();
    let warm_seen = requests.first() == Some(&"GET /warmup HTTP/1.1");
    if warm_seen {
        requests.remove(0);
    }
    assert_eq!(requests, ["GET /k1 HTTP/1.1", "GET /bytes/3000 HTTP/1.1", "GET /k3 HTTP/1.1"]);
    let warm_in = if warm_seen { warm_sent } else { 0 };
    assert_eq!(bytes(&sdata, "server", "ingress"), sent + warm_in);
    // Responses are written after the agent attached: all of them are seen.
    assert_eq!(bytes(&sdata, "server", "egress"), received + warm_received);

    // The client was waiting on stdin, not in a socket call: everything is seen.
    let cdata = data_of(&events, copen);
    assert_eq!(bytes(&cdata, "client", "egress"), sent + warm_sent);
    assert_eq!(bytes(&cdata, "client", "ingress"), received + warm_received);
    // A client span starts when its request's first bytes leave: each send carries its own start,
    // after the previous response was read, not one left over from an earlier send.
    let mut last_read = 0;
    for e in &cdata {
        let ts = e["ts"].as_u64().expect("ts");
        if e["direction"] == "egress" {
            let start = e["enter_ts"].as_u64().expect("enter_ts");
            assert!(last_read < start && start <= ts, "a send's own start: {e}");
        } else {
            last_read = ts;
        }
    }
}

#[test]
fn headers_beyond_the_cap_are_truncated_and_flagged() {
    let _g = serial();
    require_root();
    for (cap, pad) in [(None, 10_000u64), (Some("16384"), 10_000)] {
        let (server, port) = python_server("127.0.0.1");
        let mut client = Peer::python("raw_client.py", &["127.0.0.1", &port.to_string()]);
        client.expect("connected ");
        let (spid, cpid) = (server.pid(), client.pid());
        let mut args = vec!["--pid".to_string(), spid.to_string(), "--pid".to_string(), cpid.to_string()];
        if let Some(cap) = cap {
            args.extend(["--payload-cap".to_string(), cap.to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = Agent::start(&argv);
        // See keep_alive_requests_on_one_connection_both_sides: the warm-up absorbs the read
        // that was in flight when the agent attached.
        let (warm, _) = request(&mut client, "get /warmup");
        let (sent, _) = request(&mut client, &format!("get /big {pad}"));
        client.send("quit");
        client.expect("closed");
        agent.wait_for("server close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == spid);
        let events = agent.stop();
        let cap_bytes: u64 = cap.map_or(4096, |c| c.parse().unwrap());

        let copen = of(&events, "conn_open", cpid)[0];
        let out: Vec<&Value> = data_of(&events, copen)
            .into_iter()
            .filter(|e| e["direction"] == "egress" && e["head"] == "GET /big HTTP/1.1")
            .collect();
        assert_eq!(out.len(), 1, "one sendall of {sent} bytes: {out:#?}");
        assert_eq!(out[0]["len"], sent);
        assert_eq!(out[0]["captured"], sent.min(cap_bytes));
        assert_eq!(out[0]["truncated"], sent > cap_bytes);
        assert_eq!(payload(out[0]).len() as u64, sent.min(cap_bytes));
        assert!(payload(out[0]).starts_with("GET /big HTTP/1.1\r\n"));

        let sopen = of(&events, "conn_open", spid)[0];
        let ins: Vec<&Value> =
            data_of(&events, sopen).into_iter().filter(|e| e["direction"] == "ingress").collect();
        let total: u64 = ins.iter().map(|e| e["len"].as_u64().unwrap()).sum();
        assert!(total == sent || total == sent + warm, "server read {total} of {sent} (+{warm} warm-up)");
        assert!(ins.iter().any(|e| e["head"] == "GET /big HTTP/1.1"));
        // Once a read of the head is cut at the cap, the head is framed from its first line: the
        // rest of it (reads of "p"s) is counted, not copied.
        let mut cut = false;
        for e in &ins {
            let len = e["len"].as_u64().unwrap();
            if cut && len >= 256 {
                assert_eq!(
                    (e["captured"].as_u64(), &e["body_skipped"]),
                    (Some(0), &Value::Bool(true)),
                    "{e}"
                );
                continue;
            }
            assert_eq!(e["captured"].as_u64().unwrap(), len.min(cap_bytes), "{e}");
            assert_eq!(e["truncated"], len > cap_bytes, "{e}");
            cut |= len > cap_bytes;
        }
    }
}

#[test]
fn ipv6_loopback() {
    let _g = serial();
    require_root();
    let (server, port) = python_server("::1");
    let pid = server.pid();
    let mut agent = Agent::start(&["--pid", &pid.to_string()]);
    let sizes = curl(&format!("http://[::1]:{port}/"), &[]);
    let remote = format!("[::1]:{}", sizes.local_port);
    let open = agent
        .wait_for("v6 open", EVENT_TIMEOUT, |e| e["type"] == "conn_open" && e["remote"] == remote.as_str());
    agent.wait_for("v6 close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == pid);
    let events = agent.stop();
    assert_eq!(open["local"], format!("[::1]:{port}"));
    assert_eq!(open["role"], "server");
    let data = data_of(&events, &open);
    assert_eq!(bytes(&data, "server", "ingress"), sizes.request);
    assert_eq!(bytes(&data, "server", "egress"), sizes.header + sizes.body);
}

/// A server on the wildcard address: accept() says nothing about which local address a client
/// reached, so the connection learns it from the socket on its first read, before the request is
/// reported; the TCP option's context is taken from the same socket.
#[test]
fn wildcard_listener_learns_the_local_address_before_the_request() {
    wildcard_listener("0.0.0.0", "127.0.0.1", &[]);
}

#[test]
fn ipv6_wildcard_listener_learns_the_local_address_before_the_request() {
    wildcard_listener("::", "[::1]", &[]);
}

/// Through the syscall hooks, the addresses come from `tcp:tcp_rcv_space_adjust` records.
#[test]
fn wildcard_listener_through_the_syscall_hooks() {
    wildcard_listener("0.0.0.0", "127.0.0.1", &["--data-hooks", "syscalls"]);
}

fn wildcard_listener(listen: &str, connect: &str, args: &[&str]) {
    let _g = serial();
    require_root();
    let (server, port) = python_server(listen);
    let pid = server.pid();
    let pid_arg = pid.to_string();
    let mut agent = Agent::start(&[&["--pid", pid_arg.as_str()][..], args].concat());
    let sizes = curl(&format!("http://{connect}:{port}/bytes/10"), &[]);
    let remote = format!("{connect}:{}", sizes.local_port);
    wait_server_close(&mut agent, pid, &remote);
    let events = agent.stop();
    // The connection's addresses, as the last open or address event before its first read
    // reported them (the socket path opens it with its addresses, the syscall path learns the
    // local one from the read's tcp_rcv_space_adjust record): complete before the request.
    let data_at = events
        .iter()
        .position(|e| e["type"] == "data" && e["pid"] == pid && e["direction"] == "ingress")
        .expect("request read");
    let known = events[..data_at]
        .iter()
        .rev()
        .find(|e| (e["type"] == "conn_open" || e["type"] == "conn_addr") && e["pid"] == pid)
        .expect("connection before its request");
    assert_eq!(known["local"], format!("{connect}:{port}"), "{events:#?}");
    assert_eq!(known["remote"], remote.as_str());
    let open = events.iter().find(|e| e["type"] == "conn_open" && e["pid"] == pid).expect("open");
    assert_eq!(bytes(&data_of(&events, open), "server", "ingress"), sizes.request);
}

#[test]
fn unselected_processes_produce_no_data_events() {
    let _g = serial();
    require_root();
    let (traced, tport) = python_server("127.0.0.1");
    let (other, oport) = python_server("127.0.0.1");
    let mut agent = Agent::start(&["--pid", &traced.pid().to_string()]);
    let other_sizes = curl(&format!("http://127.0.0.1:{oport}/"), &[]);
    let traced_sizes = curl(&format!("http://127.0.0.1:{tport}/"), &[]);
    // The traced request is seen; the other one, sent first, never is.
    agent.wait_for("traced close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == traced.pid());
    let events = agent.stop();
    assert!(events.iter().all(|e| e["pid"] != other.pid()), "events from an unselected process");
    let data = of(&events, "data", traced.pid());
    assert_eq!(bytes(&data, "server", "ingress"), traced_sizes.request);
    assert!(other_sizes.request > 0);
}

#[test]
fn port_filter_in_all_process_mode() {
    let _g = serial();
    require_root();
    let (a, aport) = python_server("127.0.0.1");
    let (b, bport) = python_server("127.0.0.1");
    let mut agent = Agent::start(&["--port", &aport.to_string()]);
    curl(&format!("http://127.0.0.1:{bport}/"), &[]);
    let sizes = curl(&format!("http://127.0.0.1:{aport}/"), &[]);
    agent.wait_for("a close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == a.pid());
    let events = agent.stop();
    assert!(of(&events, "data", b.pid()).is_empty(), "port {bport} was not selected");
    assert_eq!(bytes(&of(&events, "data", a.pid()), "server", "ingress"), sizes.request);
    // curl is a client of port aport: selected by the same filter, it shows as a client.
    let client_opens: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["type"] == "conn_open" && e["role"] == "client" && e["remote"] == format!("127.0.0.1:{aport}")
        })
        .collect();
    assert_eq!(client_opens.len(), 1, "curl's connection: {events:#?}");
}

#[test]
fn nginx_sendfile_response_is_counted_to_its_end() {
    let _g = serial();
    require_root();
    let dir = std::env::temp_dir().join(format!("tracewire-nginx-{}", std::process::id()));
    let www = dir.join("www");
    fs::create_dir_all(&www).unwrap();
    let body = vec![b'n'; 200_000];
    fs::write(www.join("file.bin"), &body).unwrap();
    let port = free_port();
    let d = dir.display();
    nginx_conf(&dir, port, false, &format!("root {d}/www;"));
    // A shell that waits, then becomes nginx: selecting it before nginx exists means the master
    // is traced from exec on, and its worker is selected at fork. The worker accepts on a
    // listening socket it inherited, which it never listened on itself: the agent must verify
    // it and learn it.
    let conf = dir.join("nginx.conf").display().to_string();
    let mut nginx =
        Peer::spawn(Command::new("sh").args(["-c", &format!("read go; exec nginx -c {conf} -p {d}")]));
    let mut agent = Agent::start(&["--pid", &nginx.pid().to_string()]);
    nginx.send("go");
    wait_listening(port, "nginx");
    let sizes = curl(&format!("http://127.0.0.1:{port}/file.bin"), &[]);
    assert_eq!(sizes.body, body.len() as u64);
    let done = Instant::now();
    let remote = format!("127.0.0.1:{}", sizes.local_port);
    let open = agent.wait_for("nginx open", EVENT_TIMEOUT, |e| {
        e["type"] == "conn_open" && e["remote"] == remote.as_str()
    });
    let egress_total = sizes.header + sizes.body;
    // curl has the whole response, so nginx has closed or will close the connection.
    agent.wait_for("nginx close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && same_conn(e, &open));
    let events = agent.stop();
    drop(nginx);
    let _ = fs::remove_dir_all(&dir);

    assert_eq!(open["role"], "server");
    assert_eq!(open["local"], format!("127.0.0.1:{port}"));
    // The master listened while traced; the connection was accepted by another process.
    let listen = events.iter().find(|e| e["type"] == "listen").expect("nginx master's listen");
    assert_eq!(listen["local"], format!("127.0.0.1:{port}"));
    assert_ne!(listen["pid"], open["pid"], "accepted by the worker, not the master");
    let data = data_of(&events, &open);
    assert_eq!(bytes(&data, "server", "ingress"), sizes.request);
    assert_eq!(bytes(&data, "server", "egress"), egress_total);
    let sendfile: Vec<&&Value> = data.iter().filter(|e| e["syscall"] == "sendfile").collect();
    assert!(!sendfile.is_empty(), "nginx sent the body with sendfile: {data:#?}");
    assert!(sendfile.iter().all(|e| e["captured"] == 0), "file content is never copied");
    // The last response byte left before curl finished reading it.
    let last =
        data.iter().filter(|e| e["direction"] == "egress").map(|e| e["ts"].as_u64().unwrap()).max().unwrap();
    let wall_done = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        as u64
        - done.elapsed().as_nanos() as u64;
    assert!(last <= wall_done + 5_000_000, "last egress {last} after curl finished {wall_done}");
}

#[test]
fn cgroup_selection_follows_exec() {
    let _g = serial();
    require_root();
    let mount = tracewire::capture::select::cgroup2_mount().expect("cgroup2 mount");
    let cg = mount.join(format!("tracewire-test-{}", std::process::id()));
    fs::create_dir_all(&cg).expect("create cgroup");
    let mut agent = Agent::start(&["--cgroup", &cg.display().to_string()]);
    // The server joins the cgroup, then execs python: selected by the kernel at exec.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 {}",
        cg.display(),
        repo().join("tests/peers/http_server.py").display()
    );
    let mut server = Peer::spawn(Command::new("sh").args(["-c", &script]));
    let port: u16 = server.port();
    let sizes = curl(&format!("http://127.0.0.1:{port}/"), &[]);
    let pid = server.pid();
    agent.wait_for("close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == pid);
    let events = agent.stop();
    drop(server);
    let _ = fs::remove_dir(&cg);
    // The listener was seen being created (bind + listen after selection).
    let listen = of(&events, "listen", pid);
    assert_eq!(listen.len(), 1, "{events:#?}");
    assert_eq!(listen[0]["local"], format!("127.0.0.1:{port}"));
    assert_eq!(bytes(&of(&events, "data", pid), "server", "ingress"), sizes.request);
}

/// Loaded programs with one of the agent's names: (id, name). Ids only grow, so the programs of
/// an agent started after a snapshot are those with a larger id than any in it.
fn our_programs_loaded() -> Vec<(u64, String)> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool json");
    // One data program of either hook set, the sock_ops program and lifecycle programs.
    let ours = [
        "sock_recv_length",
        "sys_enter",
        "tcp_option",
        "inet_sock_set_state",
        "sock_set_state",
        "sched_process_exec",
    ];
    progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string())))
        .filter(|(_, name)| ours.contains(&name.as_str()))
        .collect()
}

#[test]
fn programs_are_detached_when_the_agent_exits() {
    let _g = serial();
    require_root();
    // A previous agent's programs may still be on their way out (freed after an RCU grace
    // period): the new agent's are told apart by id.
    let before = our_programs_loaded().iter().map(|(id, _)| *id).max().unwrap_or(0);
    let agent = Agent::start(&["--pid", &std::process::id().to_string()]);
    let mine: Vec<(u64, String)> = our_programs_loaded().into_iter().filter(|(id, _)| *id > before).collect();
    assert_eq!(mine.len(), 4, "the agent's programs are loaded while it runs: {mine:?}");
    agent.stop();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let left: Vec<(u64, String)> =
            our_programs_loaded().into_iter().filter(|p| mine.contains(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "programs left behind: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn named_errors_without_privileges_or_btf() {
    let _g = serial();
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_tracewire"))
        .args(["capture", "--duration", "1"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing capabilities: CAP_BPF, CAP_PERFMON"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_tracewire"))
        .args(["capture", "--duration", "1"])
        .env("TRACEWIRE_BTF", "/nonexistent/vmlinux")
        .output()
        .expect("tracewire");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("kernel BTF not found at /nonexistent/vmlinux"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_tracewire"))
        .args(["capture", "--pid", "4000000", "--duration", "1"])
        .output()
        .expect("tracewire");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid 4000000: no such process"));
}

#[test]
fn exe_glob_selects_running_and_new_processes() {
    let _g = serial();
    require_root();
    // A running process matched by the glob at start: python3 serving on a port.
    let (server, port) = python_server("127.0.0.1");
    let mut agent = Agent::start(&["--exe", "python3*"]);
    let sizes = curl(&format!("http://127.0.0.1:{port}/"), &[]);
    agent.wait_for("close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == server.pid());
    // A process started afterwards is selected when it execs.
    let (late, late_port) = python_server("127.0.0.1");
    agent.wait_for("exec", EVENT_TIMEOUT, |e| e["type"] == "exec" && e["pid"] == late.pid());
    let late_sizes = curl(&format!("http://127.0.0.1:{late_port}/"), &[]);
    agent.wait_for("late close", EVENT_TIMEOUT, |e| e["type"] == "conn_close" && e["pid"] == late.pid());
    let events = agent.stop();
    assert_eq!(bytes(&of(&events, "data", server.pid()), "server", "ingress"), sizes.request);
    assert_eq!(
        bytes(&of(&events, "data", late.pid()), "server", "egress"),
        late_sizes.header + late_sizes.body
    );
    // curl does not match the glob.
    assert!(events.iter().all(|e| e["type"] != "data" || e["pid"] == server.pid() || e["pid"] == late.pid()));
}

/// The W3C form of the context a data event carries.
fn traceparent_of(e: &Value) -> String {
    let c = &e["ctx"];
    format!(
        "00-{}-{}-{:02x}",
        c["trace_id"].as_str().unwrap(),
        c["span_id"].as_str().unwrap(),
        c["flags"].as_u64().unwrap()
    )
}

/// The client span's context for the request whose head starts with `head`.
fn sent_context(events: &[Value], pid: u32, head: &str) -> String {
    let e = events
        .iter()
        .find(|e| {
            e["type"] == "data"
                && e["pid"] == pid
                && e["direction"] == "egress"
                && e["head"].as_str().is_some_and(|h| h.starts_with(head))
        })
        .unwrap_or_else(|| panic!("no request {head:?}: {events:#?}"));
    traceparent_of(e)
}

/// A selected client (curl) sends three requests on one keep-alive connection to a server that
/// runs no agent: one without a header, one with its own, one with a 100 kB body. The server
/// receives exactly one traceparent with each: the agent's client span for the first and third,
/// the client's own for the second.
#[test]
fn traceparent_is_injected_once_into_requests_for_a_peer_without_an_agent() {
    inject_three_requests(&[]);
}

/// With the syscall hooks the context is minted at the write's entry, before the sk_msg
/// program runs; the same header arrives.
#[test]
fn traceparent_is_injected_through_the_syscall_hooks_too() {
    inject_three_requests(&["--data-hooks", "syscalls"]);
}

fn inject_three_requests(args: &[&str]) {
    let _g = serial();
    require_root();
    let (_server, port) = python_server("127.0.0.1");
    let body = std::env::temp_dir().join(format!("tracewire-body-{}", std::process::id()));
    fs::write(&body, vec![b'b'; 100_000]).unwrap();
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let url = format!("http://127.0.0.1:{port}");
    let script = format!(
        "read go; exec curl -s -w '\\n' {url}/traceparent \\
         --next -s -w '\\n' -H 'traceparent: {own}' {url}/traceparent \\
         --next -s -w '\\n' --data-binary @{} {url}/upload",
        body.display()
    );
    let mut client = Peer::spawn(Command::new("sh").args(["-c", &script]));
    let cpid = client.pid();
    let cpid_arg = cpid.to_string();
    let mut agent = Agent::start(
        &[&["--pid", cpid_arg.as_str(), "--inject-traceparent", "--inject-despite-fionread"][..], args]
            .concat(),
    );
    let ready = agent.wait_for("ready", EVENT_TIMEOUT, |e| e["type"] == "ready");
    assert_eq!(ready["inject"], "on");
    client.send("go");
    let first = client.expect("");
    let second = client.expect("");
    let third = client.expect("");
    agent.wait_for("curl exit", EVENT_TIMEOUT, |e| e["type"] == "exit" && e["pid"] == cpid);
    let events = agent.stop();
    let _ = fs::remove_file(&body);

    let status = events.iter().rev().find(|e| e["type"] == "status").expect("final status");
    assert_eq!(first, sent_context(&events, cpid, "GET /traceparent"), "the agent's client span");
    assert_eq!(second, own, "the client's own header, alone");
    assert_eq!(third, format!("100000 {}", sent_context(&events, cpid, "POST /upload")), "{status}");
    assert_eq!(status["kernel"]["inject_written"], 2, "{status}");
    assert_eq!(status["kernel"]["inject_had_header"], 1, "{status}");
    assert_eq!(status["kernel"]["inject_skipped"], 0, "{status}");
}

/// Injection is checked before it is switched on: where a socket in a sockhash misreports
/// FIONREAD the agent says so and sends nothing; elsewhere the header arrives.
#[test]
fn traceparent_injection_is_refused_where_fionread_is_broken() {
    let _g = serial();
    require_root();
    let (_server, port) = python_server("127.0.0.1");
    let script = format!("read go; exec curl -s -w '\\n' http://127.0.0.1:{port}/traceparent");
    let mut client = Peer::spawn(Command::new("sh").args(["-c", &script]));
    let cpid = client.pid();
    let mut agent = Agent::start(&["--pid", &cpid.to_string(), "--inject-traceparent"]);
    let ready = agent.wait_for("ready", EVENT_TIMEOUT, |e| e["type"] == "ready");
    let state = ready["inject"].as_str().unwrap().to_string();
    client.send("go");
    let received = client.expect("");
    agent.wait_for("curl exit", EVENT_TIMEOUT, |e| e["type"] == "exit" && e["pid"] == cpid);
    let events = agent.stop();
    if state == "on" {
        assert_eq!(received, sent_context(&events, cpid, "GET /traceparent"));
    } else {
        assert!(state.starts_with("refused: ") && state.contains("FIONREAD"), "{state}");
        assert_eq!(received, "", "nothing is injected once refused");
    }

    // Injection changes what services send: it needs a workload selection.
    let out = Command::new(env!("CARGO_BIN_EXE_tracewire"))
        .args(["capture", "--json", "--inject-traceparent"])
        .output()
        .expect("run tracewire");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("select the workloads"), "{out:?}");
}
