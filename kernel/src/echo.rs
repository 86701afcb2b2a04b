//! The echo/diagnostic service's protocol (`mode=net`), hardware-free.
//!
//! Every byte a client sends is echoed back unchanged (RFC 862 echo). Two
//! whole lines are also commands, acted on after their echo:
//! `quit` (the service answers `bye` and the hypervisor exits with code 0)
//! and `stats` (one line of NIC counters). Lines may end in `\n` or `\r\n`;
//! a line longer than [`MAX_COMMAND`] is never a command.

/// Longest line still checked for a command.
pub const MAX_COMMAND: usize = 16;

/// A command line seen in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Quit,
    Stats,
}

/// Watches a byte stream for command lines.
#[derive(Debug, Default, Clone)]
pub struct LineWatcher {
    line: [u8; MAX_COMMAND],
    len: usize,
    overlong: bool,
}

impl LineWatcher {
    /// Feeds bytes; calls `on_command` for each complete command line.
    pub fn feed(&mut self, bytes: &[u8], mut on_command: impl FnMut(Command)) {
        for &b in bytes {
            if b == b'\n' {
                let mut line = &self.line[..self.len];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if !self.overlong {
                    match line {
                        b"quit" => on_command(Command::Quit),
                        b"stats" => on_command(Command::Stats),
                        _ => {}
                    }
                }
                self.len = 0;
                self.overlong = false;
            } else if self.len < MAX_COMMAND {
                self.line[self.len] = b;
                self.len += 1;
            } else {
                self.overlong = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(chunks: &[&[u8]]) -> Vec<Command> {
        let mut w = LineWatcher::default();
        let mut out = Vec::new();
        for c in chunks {
            w.feed(c, |cmd| out.push(cmd));
        }
        out
    }

    #[test]
    fn finds_commands_across_chunks() {
        assert_eq!(commands(&[b"hello\nqu", b"it\n"]), [Command::Quit]);
        assert_eq!(
            commands(&[b"stats\r\nquit\r\n"]),
            [Command::Stats, Command::Quit]
        );
        assert_eq!(commands(&[b"quit"]), []);
        assert_eq!(commands(&[b"quit now\n", b" quit\n", b"QUIT\n"]), []);
    }

    #[test]
    fn overlong_lines_are_not_commands() {
        let mut long = vec![b'x'; 100];
        long.extend_from_slice(b"quit\n");
        assert_eq!(commands(&[&long]), []);
        assert_eq!(commands(&[&long, b"quit\n"]), [Command::Quit]);
    }
}
