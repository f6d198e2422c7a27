//! Memcached's text protocol, classic and meta commands: lines ending in `\r\n`, some followed
//! by a data block whose length the line declares (`set k 0 0 5\r\nhello\r\n`,
//! `VALUE k 0 5\r\nhello\r\n`). The framer hands each line to its caller, which says how long a
//! block follows; blocks are skipped by length, so a value beyond the capture cap costs nothing.
//! (The binary protocol, deprecated, is not read.)

/// Bytes of a line kept (what commands and responses are told by is in their first words; a
/// line longer than this, a long multi-get, is kept cut).
pub const MAX_LINE: usize = 256;

/// What the response to a command looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Values then `END` (`get`, `gets`, `gat`, `gats`).
    Values,
    /// `STAT` lines then `END` (`stats`).
    Stats,
    /// One line (`STORED`, `DELETED`, a number, `HD`, `EN`; `VA` with its block).
    Line,
    /// `MN`: the meta no-op, which ends a run of quiet meta commands.
    NoOp,
    /// None (`noreply`, a quiet meta command's success, `quit`).
    None,
}

/// A client command, as its line shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Its name (`get`, `set`, `mg`...).
    pub name: &'static str,
    /// What answers it.
    pub reply: Reply,
    /// A meta command in quiet mode (`q`): answered only when it fails (or `mg` hits).
    pub quiet: bool,
    /// Bytes of the data block that follows the line, its `\r\n` included (0: none).
    pub block: u64,
}

/// The commands known, with what answers them and, for those followed by a data block, the
/// index of the word that gives its length. Anything else is not memcached.
const COMMANDS: &[(&str, Reply, Option<usize>)] = &[
    ("get", Reply::Values, None),
    ("gets", Reply::Values, None),
    ("gat", Reply::Values, None),
    ("gats", Reply::Values, None),
    ("set", Reply::Line, Some(4)),
    ("add", Reply::Line, Some(4)),
    ("replace", Reply::Line, Some(4)),
    ("append", Reply::Line, Some(4)),
    ("prepend", Reply::Line, Some(4)),
    ("cas", Reply::Line, Some(4)),
    ("delete", Reply::Line, None),
    ("incr", Reply::Line, None),
    ("decr", Reply::Line, None),
    ("touch", Reply::Line, None),
    ("flush_all", Reply::Line, None),
    ("verbosity", Reply::Line, None),
    ("version", Reply::Line, None),
    ("stats", Reply::Stats, None),
    ("quit", Reply::None, None),
    ("mg", Reply::Line, None),
    ("ms", Reply::Line, Some(2)),
    ("md", Reply::Line, None),
    ("ma", Reply::Line, None),
    ("me", Reply::Line, None),
    ("mn", Reply::NoOp, None),
];

/// The command a client's line is, or `None` when it is not one (unknown, malformed: a storage
/// command's sizes must be numbers).
pub fn command(line: &[u8]) -> Option<Command> {
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let first = words.next()?;
    let &(name, reply, block_at) = COMMANDS.iter().find(|(n, _, _)| n.as_bytes() == first)?;
    let mut cmd = Command { name, reply, quiet: false, block: 0 };
    let meta = name.len() == 2;
    let mut last: &[u8] = first;
    let mut count = 1;
    for (i, w) in words.enumerate() {
        let i = i + 1;
        count = i + 1;
        last = w;
        if Some(i) == block_at {
            cmd.block = number(w)?.checked_add(2)?;
        }
        // Storage commands' flags, expiry and length are numbers: how a line is told apart.
        if block_at == Some(4) && (2..=4).contains(&i) && number(w).is_none() {
            return None;
        }
        if meta && i >= 2 && w == b"q" {
            cmd.quiet = true;
        }
    }
    if block_at.is_some_and(|at| count <= at) || (cmd.reply == Reply::Values && count < 2) {
        return None;
    }
    if !meta && last == b"noreply" {
        cmd.reply = Reply::None;
    }
    Some(cmd)
}

/// A server's response line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    /// `VALUE` / `VA`: a value, its block to skip (`\r\n` included).
    Value { block: u64, meta: bool },
    /// `END`: the end of values or statistics.
    End,
    /// `STAT name value`.
    Stat,
    /// `ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`: the word.
    Error(&'a str),
    /// `MN`.
    NoOp,
    /// Any other line (`STORED`, `NOT_FOUND`, a number, `HD`, `EN`...): the command's answer.
    Other,
}

/// What a server's line is. `None`: a line no memcached server writes (malformed sizes).
pub fn response(line: &[u8]) -> Option<Response<'static>> {
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let first = words.next().unwrap_or_default();
    Some(match first {
        b"VALUE" => Response::Value { block: number(words.nth(2)?)?.checked_add(2)?, meta: false },
        b"VA" => Response::Value { block: number(words.next()?)?.checked_add(2)?, meta: true },
        b"END" => Response::End,
        b"STAT" => Response::Stat,
        b"ERROR" => Response::Error("ERROR"),
        b"CLIENT_ERROR" => Response::Error("CLIENT_ERROR"),
        b"SERVER_ERROR" => Response::Error("SERVER_ERROR"),
        b"MN" => Response::NoOp,
        _ => Response::Other,
    })
}

/// Whether a client's first bytes are memcached commands: a whole first line naming a known
/// command with its arguments in shape (lower case, as the protocol has it: HTTP's `GET /` is
/// not one). A Redis client's inline commands look the same; its replies then fail the
/// session's check of the first response.
pub fn detect(payload: &[u8]) -> bool {
    let Some(end) = payload.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    end <= MAX_LINE && command(&payload[..end]).is_some()
}

/// A decimal number of at most 19 digits.
fn number(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 19 || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(w).ok()?.parse().ok()
}

/// Splits one direction's bytes into lines and skipped blocks.
#[derive(Debug, Default)]
pub struct Framer {
    /// The line being read (its first [`MAX_LINE`] bytes).
    line: Vec<u8>,
    /// Bytes of a data block still to skip.
    skip: u64,
    /// Bytes were lost where structure was: nothing more is framed until [`Framer::resync`].
    lost: bool,
}

impl Framer {
    /// Whether framing stopped (bytes lost outside a data block, or a line its caller refused).
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Starts afresh at a message boundary (the client writes anew).
    pub fn resync(&mut self) {
        self.line.clear();
        self.skip = 0;
        self.lost = false;
    }

    /// Frames `data`, then `gap` bytes not captured. `f` gets each whole line (without its
    /// `\r\n`, cut at [`MAX_LINE`]) and returns the length of the block that follows it (0: none),
    /// or `None` for a line that is not this protocol's, which stops framing.
    pub fn feed(&mut self, mut data: &[u8], gap: u64, f: &mut impl FnMut(&[u8]) -> Option<u64>) {
        while !self.lost && !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let (part, rest, whole) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            data = rest;
            if !whole {
                break;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            match f(&self.line) {
                Some(block) => self.skip = block,
                None => self.lost = true,
            }
            self.line.clear();
        }
        if gap > 0 && !self.lost {
            // A gap inside a block is skipped by its length; one across a line hides structure.
            if self.skip >= gap && self.line.is_empty() {
                self.skip -= gap;
            } else {
                self.lost = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(framer: &mut Framer, chunks: &[(&[u8], u64)]) -> Vec<String> {
        let mut out = Vec::new();
        for (data, gap) in chunks {
            framer.feed(data, *gap, &mut |line: &[u8]| {
                out.push(String::from_utf8_lossy(line).into_owned());
                match response(line) {
                    Some(Response::Value { block, .. }) => Some(block),
                    Some(_) => command(line).map(|c| c.block).or(Some(0)),
                    None => None,
                }
            });
        }
        out
    }

    #[test]
    fn commands_are_told_with_their_reply_and_block() {
        let c = |s: &str| command(s.as_bytes());
        let get = c("get a b c").unwrap();
        assert_eq!((get.name, get.reply, get.block), ("get", Reply::Values, 0));
        let set = c("set k 0 3600 5").unwrap();
        assert_eq!((set.name, set.reply, set.block), ("set", Reply::Line, 7));
        assert_eq!(c("set k 0 0 5 noreply").unwrap().reply, Reply::None);
        assert_eq!(c("delete k noreply").unwrap().reply, Reply::None);
        assert_eq!(c("cas k 0 0 2 99").unwrap().block, 4);
        assert_eq!(c("incr n 1").unwrap().reply, Reply::Line);
        assert_eq!(c("stats").unwrap().reply, Reply::Stats);
        assert_eq!(c("quit").unwrap().reply, Reply::None);
        let ms = c("ms k 10 T60 q").unwrap();
        assert_eq!((ms.name, ms.block, ms.quiet, ms.reply), ("ms", 12, true, Reply::Line));
        let mg = c("mg k v t").unwrap();
        assert_eq!((mg.quiet, mg.reply), (false, Reply::Line));
        assert!(c("mg k v q").unwrap().quiet);
        assert_eq!(c("mn").unwrap().reply, Reply::NoOp);
        // Not memcached: unknown, upper case, sizes that are not numbers, missing arguments.
        for bad in ["GET / HTTP/1.1", "hello", "set k x 0 5", "set k 0 0", "get", "ms k", "ms k big", ""] {
            assert_eq!(c(bad), None, "{bad}");
        }
    }

    #[test]
    fn responses_are_told_with_their_blocks() {
        assert_eq!(response(b"VALUE k 0 5"), Some(Response::Value { block: 7, meta: false }));
        assert_eq!(response(b"VALUE k 0 5 12"), Some(Response::Value { block: 7, meta: false }));
        assert_eq!(response(b"VA 2 t"), Some(Response::Value { block: 4, meta: true }));
        assert_eq!(response(b"END"), Some(Response::End));
        assert_eq!(response(b"STAT pid 1"), Some(Response::Stat));
        assert_eq!(response(b"SERVER_ERROR out of memory"), Some(Response::Error("SERVER_ERROR")));
        assert_eq!(response(b"ERROR"), Some(Response::Error("ERROR")));
        assert_eq!(response(b"MN"), Some(Response::NoOp));
        assert_eq!(response(b"STORED"), Some(Response::Other));
        assert_eq!(response(b"VALUE k 0 x"), None);
        assert_eq!(response(b"VA"), None);
    }

    #[test]
    fn detect_knows_commands_from_other_protocols() {
        assert!(detect(b"get user:1\r\n"));
        assert!(detect(b"set k 0 0 5\r\nhello\r\n"));
        assert!(detect(b"mg k v\r\nmn\r\n"));
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"*2\r\n$3\r\nGET\r\n",
            b"get user:1",
            b"\x16\x03\x01\x02\x00",
            b"set k 0 0\r\n",
        ] {
            assert!(!detect(other), "{other:?}");
        }
    }

    #[test]
    fn every_split_frames_the_same_and_blocks_are_skipped() {
        let stream: &[u8] = b"VALUE a 0 5\r\nhe\r\no\r\nVALUE b 1 0\r\n\r\nEND\r\nSTORED\r\n";
        let whole = lines(&mut Framer::default(), &[(stream, 0)]);
        assert_eq!(whole, ["VALUE a 0 5", "VALUE b 1 0", "END", "STORED"]);
        for cut in 0..stream.len() {
            let mut f = Framer::default();
            let split = lines(&mut f, &[(&stream[..cut], 0), (&stream[cut..], 0)]);
            assert_eq!(split, whole, "cut at {cut}");
            assert!(!f.lost());
        }
    }

    #[test]
    fn a_gap_inside_a_block_is_skipped_one_across_a_line_is_lost() {
        let mut f = Framer::default();
        // 1000 bytes of value, 10 captured, then END.
        let got = lines(&mut f, &[(b"VALUE a 0 1000\r\n0123456789", 990), (b"\r\nEND\r\n", 0)]);
        assert_eq!(got, ["VALUE a 0 1000", "END"]);
        assert!(!f.lost());
        let mut f = Framer::default();
        lines(&mut f, &[(b"VALUE a 0 5\r\nhello\r\nEN", 10)]);
        assert!(f.lost());
        f.resync();
        assert_eq!(lines(&mut f, &[(b"STORED\r\n", 0)]), ["STORED"]);
        // A line its caller refuses stops framing.
        let mut f = Framer::default();
        lines(&mut f, &[(b"VALUE a 0 x\r\nEND\r\n", 0)]);
        assert!(f.lost());
    }

    #[test]
    fn a_long_line_is_kept_cut() {
        let mut long = b"get".to_vec();
        for i in 0..200 {
            long.extend_from_slice(format!(" key:{i}").as_bytes());
        }
        long.extend_from_slice(b"\r\nEND\r\n");
        let got = lines(&mut Framer::default(), &[(&long, 0)]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1], "END");
    }
}
