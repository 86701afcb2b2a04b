//! The round coordinator of `iscsi-caw-race` (`qemu-tests
//! race-coordinator <listen ip:port> <nodes> <rounds>`, run inside the
//! test's network namespace). Protocol: `kernel::iscsi_checks`.
//!
//! Each round it waits for `ready <round> <generation>` from every node
//! and sends `go <round>` to all only if they read the same generation, so
//! every COMPARE AND WRITE of a round expects the same flag record; then it
//! collects `result <round> won|lost <generation> <owner>` and counts the
//! winners. The summary line `coordinator: rounds=... exactly_one=...` is
//! its verdict (exit 0 only when every round had exactly one winner).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

struct Node {
    id: u64,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn read_line(n: &mut Node) -> Result<Vec<String>, String> {
    let mut line = String::new();
    match n.reader.read_line(&mut line) {
        Ok(0) => Err(format!("node {} closed the link", n.id)),
        Ok(_) => Ok(line.split_whitespace().map(str::to_string).collect()),
        Err(e) => Err(format!("node {}: {e}", n.id)),
    }
}

fn broadcast(nodes: &mut [Node], line: &str) {
    for n in nodes.iter_mut() {
        let _ = n.writer.write_all(line.as_bytes());
    }
}

/// Runs the rounds; prints per-round lines and the summary.
pub fn run(addr: SocketAddr, count: usize, rounds: u32) -> Result<String, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("coordinator: listening on {addr} for {count} nodes, {rounds} rounds");
    let start = Instant::now();
    let mut nodes = Vec::new();
    while nodes.len() < count {
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(120)))
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                let mut n = Node {
                    id: 0,
                    reader: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
                    writer: s,
                };
                let hello = read_line(&mut n)?;
                n.id = match hello.as_slice() {
                    [h, id] if h == "hello" => id.parse().map_err(|_| "bad hello")?,
                    other => return Err(format!("{peer}: expected hello, got {other:?}")),
                };
                println!("coordinator: node {} from {peer}", n.id);
                nodes.push(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(300) {
                    return Err(format!("only {} of {count} nodes connected", nodes.len()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    let (mut exactly_one, mut zero, mut several) = (0u32, 0u32, 0u32);
    let mut wins: BTreeMap<u64, u32> = BTreeMap::new();
    for round in 1..=rounds {
        let mut generations = Vec::new();
        for n in nodes.iter_mut() {
            let w = read_line(n)?;
            match w.as_slice() {
                [r, g0, g] if r == "ready" && *g0 == round.to_string() => {
                    generations.push((n.id, g.parse::<u64>().map_err(|_| "bad generation")?))
                }
                other => {
                    let why = format!("node {} sent {other:?}, expected ready {round}", n.id);
                    broadcast(&mut nodes, &format!("abort {why}\n"));
                    return Err(why);
                }
            }
        }
        if generations.windows(2).any(|w| w[0].1 != w[1].1) {
            let why = format!("round {round}: generations differ {generations:?}");
            broadcast(&mut nodes, &format!("abort {why}\n"));
            return Err(why);
        }
        broadcast(&mut nodes, &format!("go {round}\n"));
        let mut winners = Vec::new();
        for n in nodes.iter_mut() {
            let w = read_line(n)?;
            match w.as_slice() {
                [r, r0, v, _g, _o] if r == "result" && *r0 == round.to_string() => {
                    if v == "won" {
                        winners.push(n.id);
                    }
                }
                other => return Err(format!("node {} sent {other:?}, expected result", n.id)),
            }
        }
        match winners.len() {
            1 => {
                exactly_one += 1;
                *wins.entry(winners[0]).or_default() += 1;
            }
            0 => zero += 1,
            _ => several += 1,
        }
        println!(
            "coordinator: round {round} generation {} winners {winners:?}",
            generations[0].1
        );
    }
    let per_node: Vec<String> = wins.iter().map(|(n, w)| format!("node{n}={w}")).collect();
    let summary = format!(
        "coordinator: rounds={rounds} exactly_one={exactly_one} zero={zero} several={several} wins {}",
        per_node.join(" ")
    );
    println!("{summary}");
    if exactly_one == rounds {
        Ok(summary)
    } else {
        Err(summary)
    }
}
