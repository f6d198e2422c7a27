//! SQL text as a span may show it: every literal replaced by `?`, comments dropped, whitespace
//! collapsed; and what a span is named after (the operation and the first table it names).
//!
//! Privacy by default: a query's literals are the values an application filters and writes by
//! (emails, names, card numbers), so none leaves the node. A scanner rather than a parser: it
//! knows PostgreSQL's lexical rules (quoted strings with their prefixes and escapes,
//! dollar-quoted strings, nested block comments, numbers, `$n` parameters) and nothing of the
//! grammar, so any text, even cut short by the capture cap or not SQL at all, comes out with no
//! literal in it: an unterminated string is a literal to the end.

/// Longest sanitized text kept (bytes, before any that are not UTF-8 are replaced); longer
/// queries end with `...`.
pub const MAX_TEXT: usize = 2048;

/// A query as a span shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The sanitized text.
    pub text: String,
    /// The first statement's command (`SELECT`, `INSERT`...), or `BATCH` for several statements
    /// of different commands (`BATCH SELECT` when they share it), as the database semantic
    /// conventions ask; `None` when the text starts with no known command.
    pub operation: Option<String>,
    /// The first table the statement names after `FROM`, `INTO`, `UPDATE`, `JOIN` or `TABLE`, as
    /// written (schema prefix and quotes included).
    pub collection: Option<String>,
}

/// Commands a statement can start with (upper case).
const COMMANDS: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "IMPORT",
    "INSERT",
    "LISTEN",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// Words after which the next identifier is the table a statement works on.
const BEFORE_TABLE: &[&str] = &["FROM", "INTO", "UPDATE", "JOIN", "TABLE"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier: its byte range in the input.
    Word(usize, usize),
    /// A double-quoted identifier: its byte range, quotes included.
    Quoted(usize, usize),
    /// A literal (replaced by `?`).
    Literal,
    /// One punctuation or operator byte.
    Punct(u8),
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Whose lexical rules a text follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `"..."` names an identifier; backslashes escape only in `E'...'`.
    Postgres,
    /// MySQL and MariaDB: `"..."` is a string (as `'...'`, both with backslash escapes),
    /// `` `...` `` names an identifier, `#` starts a comment.
    MySql,
}

/// Sanitizes PostgreSQL's `sql` (as captured: possibly cut short, possibly not UTF-8).
pub fn sanitize(sql: &[u8]) -> Query {
    sanitize_as(sql, Dialect::Postgres)
}

/// Sanitizes `sql` read by `dialect`'s rules. Where the rules are unsure (a server mode that
/// changes them), the reading that takes more text for a literal is chosen.
pub fn sanitize_as(sql: &[u8], dialect: Dialect) -> Query {
    let mysql = dialect == Dialect::MySql;
    let mut out: Vec<u8> = Vec::with_capacity(sql.len().min(MAX_TEXT) + 3);
    let mut tokens: Vec<Token> = Vec::new();
    // Whitespace or a comment since the last token: one space before the next.
    let mut space = false;
    let mut i = 0;
    let n = sql.len();
    let mut cut = false;
    while i < n {
        let c = sql[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if (c == b'-' && sql.get(i + 1) == Some(&b'-')) || (mysql && c == b'#') {
            // Comment to the end of the line (sqlcommenter tags and hints may carry values).
            i = sql[i..].iter().position(|&b| b == b'\n').map_or(n, |p| i + p + 1);
            space = true;
            continue;
        }
        if c == b'/' && sql.get(i + 1) == Some(&b'*') {
            i = skip_block_comment(sql, i);
            space = true;
            continue;
        }
        let (token, next) = scan(sql, i, mysql);
        let piece = match token {
            Token::Word(a, b) | Token::Quoted(a, b) => &sql[a..b],
            Token::Literal => b"?",
            Token::Punct(_) => &sql[i..i + 1],
        };
        let sep = space && !out.is_empty();
        if out.len() + usize::from(sep) + piece.len() > MAX_TEXT {
            cut = true;
            break;
        }
        if sep {
            out.push(b' ');
        }
        space = false;
        out.extend_from_slice(piece);
        tokens.push(token);
        i = next;
    }
    if cut {
        out.extend_from_slice(b"...");
    }
    let text = match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    let (operation, collection) = describe(sql, &tokens);
    Query { text, operation, collection }
}

/// The token starting at `i` (not whitespace or a comment) and where the next one may start.
fn scan(sql: &[u8], i: usize, mysql: bool) -> (Token, usize) {
    let n = sql.len();
    let c = sql[i];
    let next = sql.get(i + 1).copied();
    match c {
        b'\'' | b'"' if mysql => (Token::Literal, skip_quoted(sql, i + 1, c, true)),
        b'`' if mysql => {
            let end = skip_quoted(sql, i + 1, b'`', false);
            (Token::Quoted(i, end), end)
        }
        b'\'' => (Token::Literal, skip_string(sql, i + 1, false)),
        b'"' => {
            let end = skip_quoted(sql, i + 1, b'"', false);
            (Token::Quoted(i, end), end)
        }
        // E'...' (backslash escapes), B'...', X'...', N'...': one literal with its prefix.
        b'E' | b'e' if next == Some(b'\'') => (Token::Literal, skip_string(sql, i + 2, true)),
        b'B' | b'b' | b'X' | b'x' | b'N' | b'n' if next == Some(b'\'') => {
            (Token::Literal, skip_string(sql, i + 2, false))
        }
        // U&'...' (Unicode escapes).
        b'U' | b'u' if next == Some(b'&') && sql.get(i + 2) == Some(&b'\'') => {
            (Token::Literal, skip_string(sql, i + 3, false))
        }
        b'$' => match dollar_tag(sql, i) {
            Some(tag_end) => {
                let tag = &sql[i..tag_end];
                let end = find(sql, tag_end, tag).map_or(n, |p| p + tag.len());
                (Token::Literal, end)
            }
            // `$1`: a parameter, kept (its value is not in the text).
            None if next.is_some_and(|d| d.is_ascii_digit()) => {
                let end = i + 1 + sql[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                (Token::Word(i, end), end)
            }
            None => (Token::Punct(b'$'), i + 1),
        },
        b'0'..=b'9' => (Token::Literal, skip_number(sql, i)),
        b'.' if next.is_some_and(|d| d.is_ascii_digit()) => (Token::Literal, skip_number(sql, i)),
        _ if is_ident_start(c) => {
            let end = i + sql[i..].iter().take_while(|&&b| is_ident(b)).count();
            (Token::Word(i, end), end)
        }
        _ => (Token::Punct(c), i + 1),
    }
}

/// After a string's opening quote at `from - 1`: where it ends (after its closing quote), or the
/// end of the input. `''` is a quote inside; with `backslash`, so is `\'`.
fn skip_string(sql: &[u8], from: usize, backslash: bool) -> usize {
    skip_quoted(sql, from, b'\'', backslash)
}

/// After an opening `quote` at `from - 1`: where the quoted text ends (after its closing quote),
/// or the end of the input. A doubled quote is one inside; with `backslash`, so is an escaped one.
fn skip_quoted(sql: &[u8], from: usize, quote: u8, backslash: bool) -> usize {
    let mut i = from;
    while i < sql.len() {
        match sql[i] {
            b'\\' if backslash => i += 2,
            c if c == quote && sql.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    sql.len()
}

/// Block comments nest in PostgreSQL.
fn skip_block_comment(sql: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < sql.len() {
        match (sql[i], sql[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    sql.len()
}

/// `$tag$` starting at `i` (the tag may be empty): the index after its closing `$`.
fn dollar_tag(sql: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if sql.get(j).is_some_and(|&c| is_ident_start(c)) {
        j += sql[j..].iter().take_while(|&&c| is_ident(c) && c != b'$').count();
    }
    (sql.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| from + p)
}

/// A numeric literal: digits, a fraction, an exponent, hex/octal/binary prefixes, underscores.
fn skip_number(sql: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < sql.len() {
        let c = sql[j];
        let exponent_sign = (c == b'+' || c == b'-') && j > i && matches!(sql[j - 1], b'e' | b'E');
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
            j += 1;
        } else {
            break;
        }
    }
    j
}

fn word<'a>(sql: &'a [u8], t: &Token) -> Option<&'a [u8]> {
    match *t {
        Token::Word(a, b) => Some(&sql[a..b]),
        _ => None,
    }
}

/// The command a statement's tokens start with (skipping opening parentheses).
fn command(sql: &[u8], tokens: &[Token]) -> Option<&'static str> {
    let first = tokens.iter().find(|t| **t != Token::Punct(b'('))?;
    let w = word(sql, first)?;
    COMMANDS.iter().copied().find(|c| c.as_bytes().eq_ignore_ascii_case(w))
}

/// Operation and collection of the scanned statements.
fn describe(sql: &[u8], tokens: &[Token]) -> (Option<String>, Option<String>) {
    let statements: Vec<&[Token]> =
        tokens.split(|t| *t == Token::Punct(b';')).filter(|s| !s.is_empty()).collect();
    let Some(first) = statements.first() else {
        return (None, None);
    };
    let commands: Vec<Option<&str>> = statements.iter().map(|s| command(sql, s)).collect();
    let operation = match commands.as_slice() {
        [one] => one.map(str::to_string),
        [c, rest @ ..] if c.is_some() && rest.iter().all(|r| r == c) => c.map(|c| format!("BATCH {c}")),
        _ => Some("BATCH".to_string()),
    };
    let collection = if statements.len() == 1 { table(sql, first) } else { None };
    (operation, collection)
}

/// The first table named after one of [`BEFORE_TABLE`]: `schema.table`, quoted parts kept.
fn table(sql: &[u8], tokens: &[Token]) -> Option<String> {
    let at = tokens.iter().position(|t| {
        word(sql, t).is_some_and(|w| BEFORE_TABLE.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(w)))
    })?;
    let mut rest = tokens[at + 1..].iter().peekable();
    // UPDATE ONLY t, SELECT ... FROM ONLY t.
    if rest.peek().and_then(|t| word(sql, t)).is_some_and(|w| w.eq_ignore_ascii_case(b"ONLY")) {
        rest.next();
    }
    let mut name = String::new();
    loop {
        let (a, b) = match rest.next()? {
            Token::Word(a, b) | Token::Quoted(a, b) => (*a, *b),
            _ => return None,
        };
        name.push_str(&String::from_utf8_lossy(&sql[a..b]));
        if rest.peek() == Some(&&Token::Punct(b'.')) {
            rest.next();
            name.push('.');
        } else {
            break;
        }
    }
    // A parameter or keyword is no table (`FROM $1`, `INTO STRICT`...).
    (!name.starts_with('$')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_strings_in_double_quotes_with_backslashes_are_literals() {
        let q = sanitize_as(
            br#"SELECT `name`, "x" FROM `shop`.`users` WHERE email = "alice@example.com" AND note = 'it\'s' # card 4111
            AND id IN (1, 0x1F, X'AB') /* 4111 */"#,
            Dialect::MySql,
        );
        assert_eq!(
            q.text,
            "SELECT `name`, ? FROM `shop`.`users` WHERE email = ? AND note = ? AND id IN (?, ?, ?)"
        );
        assert_eq!(q.operation.as_deref(), Some("SELECT"));
        assert_eq!(q.collection.as_deref(), Some("`shop`.`users`"));
        // PostgreSQL reads the same quotes as an identifier: the dialect matters.
        assert_eq!(sanitize(br#"SELECT "x" FROM t"#).text, r#"SELECT "x" FROM t"#);
        // A backslash before the closing quote does not end the string early.
        assert_eq!(
            sanitize_as(br#"SELECT 'a\\' FROM t WHERE b = "c\\""#, Dialect::MySql).text,
            "SELECT ? FROM t WHERE b = ?"
        );
    }

    fn text(sql: &str) -> String {
        sanitize(sql.as_bytes()).text
    }

    #[test]
    fn every_kind_of_literal_becomes_a_placeholder() {
        let cases = [
            ("SELECT * FROM users WHERE email = 'alice@example.com'", "SELECT * FROM users WHERE email = ?"),
            ("select 'it''s', 42, -3.5e+10, .5, 0x1F, 1_000", "select ?, ?, -?, ?, ?, ?"),
            ("SELECT E'a\\'b' || 'c'", "SELECT ? || ?"),
            ("SELECT B'1010', X'ff', N'nat', U&'d\\0061t'", "SELECT ?, ?, ?, ?"),
            ("SELECT $$secret$$, $tag$x $$ y$tag$", "SELECT ?, ?"),
            ("UPDATE t SET a = $1 WHERE id = $2", "UPDATE t SET a = $1 WHERE id = $2"),
            ("SELECT \"Weird \"\"name\"\"\" FROM \"T\"", "SELECT \"Weird \"\"name\"\"\" FROM \"T\""),
            ("SELECT a1, t2.b_3 FROM t2", "SELECT a1, t2.b_3 FROM t2"),
        ];
        for (sql, want) in cases {
            assert_eq!(text(sql), want, "{sql}");
        }
    }

    #[test]
    fn comments_go_and_whitespace_collapses() {
        assert_eq!(
            text("SELECT  1 -- card 4111 1111\n FROM /* a /* nested */ 'x' */\tt /*traceparent='00-ab'*/"),
            "SELECT ? FROM t"
        );
    }

    #[test]
    fn text_cut_short_keeps_no_literal() {
        // A capture cut inside a string, a dollar quote or a comment.
        assert_eq!(text("INSERT INTO t VALUES ('4111 1111 1111"), "INSERT INTO t VALUES (?");
        assert_eq!(text("SELECT $f$ secret body"), "SELECT ?");
        assert_eq!(text("SELECT 1 /* secret"), "SELECT ?");
        let long = format!("SELECT '{}'", "x".repeat(5000));
        assert_eq!(text(&long), "SELECT ?");
        let many = "SELECT 1, ".repeat(500);
        let t = text(&many);
        assert!(t.len() <= MAX_TEXT + 3 && t.ends_with("...") && !t.contains('1'), "{t}");
    }

    #[test]
    fn bytes_that_are_not_utf8_do_not_break_it() {
        let q = sanitize(b"SELECT '\xff\xfe' FROM t\xff");
        assert_eq!(q.text, "SELECT ? FROM t\u{fffd}");
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alphabet = b"'\"$-/*eEbxXnNuU&;(). 0123456789abcSELECTFROM\n";
        for _ in 0..20_000 {
            let len = rng.usize(0..300);
            let bytes: Vec<u8> = (0..len)
                .map(|_| if rng.bool() { alphabet[rng.usize(..alphabet.len())] } else { rng.u8(..) })
                .collect();
            let q = sanitize(&bytes);
            // Each byte that is not UTF-8 becomes a 3-byte replacement character.
            assert!(q.text.len() <= 3 * bytes.len().min(MAX_TEXT) + 3, "{}", q.text.len());
        }
    }

    #[test]
    fn operation_and_collection() {
        let cases: [(&str, Option<&str>, Option<&str>); 10] = [
            ("SELECT name FROM users WHERE id = 1", Some("SELECT"), Some("users")),
            (
                "select * from public.\"Orders\" o join items i on true",
                Some("SELECT"),
                Some("public.\"Orders\""),
            ),
            ("INSERT INTO cart_items (a) VALUES (1)", Some("INSERT"), Some("cart_items")),
            ("UPDATE ONLY pgbench_accounts SET abalance = 1", Some("UPDATE"), Some("pgbench_accounts")),
            ("DELETE FROM t", Some("DELETE"), Some("t")),
            ("(SELECT 1)", Some("SELECT"), None),
            ("BEGIN; SELECT 1; COMMIT", Some("BATCH"), None),
            ("SELECT 1; SELECT 2;", Some("BATCH SELECT"), None),
            ("frobnicate the database", None, None),
            ("SELECT * FROM $1", Some("SELECT"), None),
        ];
        for (sql, op, coll) in cases {
            let q = sanitize(sql.as_bytes());
            assert_eq!(q.operation.as_deref(), op, "{sql}");
            assert_eq!(q.collection.as_deref(), coll, "{sql}");
        }
    }
}
