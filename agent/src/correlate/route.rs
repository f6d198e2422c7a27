//! Low-cardinality span names. The semantic conventions forbid using the raw path as a span
//! name (`GET /users/42` would make one name per user), so a span is named `{method}` unless a
//! configured route pattern matches (`GET /users/{id}`, which also sets `http.route` on server
//! spans). An optional heuristic replaces ids, UUIDs and hex tokens in path segments with `*`,
//! for span names only: a guessed route is never reported as `http.route`.

/// Route settings.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    patterns: Vec<Vec<Segment>>,
    raw: Vec<String>,
    /// Name unmatched spans with the heuristic route.
    pub heuristic: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}` or `*`: any one segment.
    Any,
    /// `**` at the end: any rest.
    Rest,
}

/// How a path was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A configured pattern matched.
    Route(String),
    /// The heuristic produced this (span name only).
    Heuristic(String),
    /// No route: the span is named by its method alone.
    None,
}

impl Routes {
    /// Patterns like `/users/{id}`, `/static/**`.
    pub fn new(patterns: &[String], heuristic: bool) -> Self {
        let parsed = patterns
            .iter()
            .map(|p| {
                p.trim_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s {
                        "**" => Segment::Rest,
                        "*" => Segment::Any,
                        s if s.starts_with('{') && s.ends_with('}') => Segment::Any,
                        s => Segment::Literal(s.to_string()),
                    })
                    .collect()
            })
            .collect();
        Routes { patterns: parsed, raw: patterns.to_vec(), heuristic }
    }

    /// Names `path` (without its query).
    pub fn name(&self, path: &str) -> Named {
        if self.patterns.is_empty() && !self.heuristic {
            // Nothing to match: no need to split the path (a vector per request).
            return Named::None;
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        for (pattern, raw) in self.patterns.iter().zip(&self.raw) {
            if matches(pattern, &segs) {
                return Named::Route(raw.clone());
            }
        }
        if self.heuristic {
            let named: Vec<&str> = segs.iter().map(|s| if looks_like_id(s) { "*" } else { s }).collect();
            return Named::Heuristic(format!("/{}", named.join("/")));
        }
        Named::None
    }
}

fn matches(pattern: &[Segment], segs: &[&str]) -> bool {
    let mut i = 0;
    for p in pattern {
        match p {
            Segment::Rest => return true,
            Segment::Any if i < segs.len() => i += 1,
            Segment::Literal(l) if i < segs.len() && segs[i] == l => i += 1,
            _ => return false,
        }
    }
    i == segs.len()
}

/// Numbers, UUIDs, long hex or base64-ish tokens: the parts of a path that identify a record.
fn looks_like_id(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let uuid = s.len() == 36 && s.bytes().filter(|&b| b == b'-').count() == 4;
    let hex = s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let numeric = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    numeric || uuid || hex || (s.len() >= 8 && digits * 2 >= s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_paths() {
        let r =
            Routes::new(&["/users/{id}".into(), "/users/{id}/orders/*".into(), "/static/**".into()], false);
        assert_eq!(r.name("/users/42"), Named::Route("/users/{id}".into()));
        assert_eq!(r.name("/users/42/orders/7"), Named::Route("/users/{id}/orders/*".into()));
        assert_eq!(r.name("/static/css/a.css"), Named::Route("/static/**".into()));
        assert_eq!(r.name("/users"), Named::None);
        assert_eq!(r.name("/users/42/profile"), Named::None);
    }

    #[test]
    fn heuristic_hides_ids_only() {
        let r = Routes::new(&[], true);
        assert_eq!(r.name("/users/42/orders"), Named::Heuristic("/users/*/orders".into()));
        assert_eq!(
            r.name("/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            Named::Heuristic("/items/*".into())
        );
        assert_eq!(r.name("/blob/deadbeefdeadbeef00"), Named::Heuristic("/blob/*".into()));
        assert_eq!(r.name("/api/v2/health"), Named::Heuristic("/api/v2/health".into()));
        assert_eq!(Routes::new(&[], false).name("/users/42"), Named::None);
    }
}
