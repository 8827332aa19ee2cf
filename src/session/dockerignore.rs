//! `.dockerignore` with Docker's own semantics (moby's patternmatcher): one pattern a line, `#`
//! comments, `!` exceptions, the last matching pattern wins; patterns are cleaned paths relative
//! to the context, matched segment by segment with `*`, `?`, `[…]`, `\` escapes, and `**` for any
//! number of directories; a pattern that matches a directory excludes everything under it.
//!
//! Hand-written: the general-purpose crates implement gitignore semantics, which differ (no
//! anchoring rules of Docker's, `**` and exceptions behave otherwise).

/// One pattern of a .dockerignore file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    segments: Vec<String>,
    exception: bool,
}

/// The patterns of a .dockerignore file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Parses the file's text. Invalid lines do not exist in this grammar: anything is a pattern.
    pub fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(body);
            if cleaned.is_empty() || cleaned == "." {
                continue;
            }
            let mut segments: Vec<String> = cleaned.split('/').map(str::to_string).collect();
            // `**/**` means what `**` means; collapsing keeps matching from going exponential.
            segments.dedup_by(|next, previous| next == "**" && previous == "**");
            patterns.push(Pattern { segments, exception });
        }
        DockerIgnore { patterns }
    }

    /// Whether any pattern is an exception (then excluded directories must still be walked).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|pattern| pattern.exception)
    }

    /// Whether an excluded directory must still be walked because an exception may bring back
    /// something in it. As the docker CLI decides (moby's archive walk): only when an exception
    /// pattern's text starts with the directory's path, so `dir` + `!dir/keep` walks `dir`, but
    /// `dir` + `!**/keep` does not (the docker CLI sends no `dir/keep` then, nor does the agent).
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|pattern| pattern.exception)
            .any(|pattern| format!("{}/", pattern.segments.join("/")).starts_with(&dir_slash))
    }

    /// Whether a path (relative to the context, `/`-separated) is excluded: the last pattern that
    /// matches it or one of its parent directories decides.
    pub fn excludes(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|segment| !segment.is_empty()).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            let matched = (1..=segments.len()).any(|len| match_segments(&pattern.segments, &segments[..len]));
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

/// Go's `filepath.Clean` for a relative pattern, and no leading `/` or `./`.
fn clean(pattern: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in pattern.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.join("/")
}

/// Matches pattern segments against path segments, `**` standing for any number of segments.
fn match_segments(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => glob(first, segment) && match_segments(rest, path_rest),
            None => false,
        },
    }
}

/// Go's `filepath.Match` for one segment: `*`, `?`, `[…]` (with `^` or `!` negation and ranges)
/// and `\` escapes.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    glob_at(&pattern, &text)
}

/// Iterative matching with one backtracking point (the last `*`): linear in practice, so a
/// pattern of many stars cannot make the walk hang.
fn glob_at(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
            continue;
        }
        if p < pattern.len() {
            if let Some(next) = single(&pattern[p..], text[t]) {
                p += next;
                t += 1;
                continue;
            }
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Whether the pattern's first element (`?`, a class, an escape or a literal) matches `c`; if so,
/// how many pattern characters it took.
fn single(pattern: &[char], c: char) -> Option<usize> {
    match pattern[0] {
        '?' => Some(1),
        '[' => match class(&pattern[1..], c) {
            Some((true, after)) => Some(pattern.len() - after.len()),
            _ => None,
        },
        '\\' => (pattern.get(1) == Some(&c)).then_some(2),
        literal => (literal == c).then_some(1),
    }
}

/// Matches `c` against a class body (after `[`); returns the verdict and the pattern after `]`.
fn class(body: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut rest) = match body.first() {
        Some('^' | '!') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&start, after) = rest.split_first()?;
        if start == ']' && !first {
            return Some((matched != negated, after));
        }
        first = false;
        let (start, after) = if start == '\\' { after.split_first().map(|(&e, a)| (e, a))? } else { (start, after) };
        if after.first() == Some(&'-') && after.get(1).is_some_and(|end| *end != ']') {
            let (end, after_range) =
                if after[1] == '\\' { (*after.get(2)?, &after[3..]) } else { (after[1], &after[2..]) };
            if start <= c && c <= end {
                matched = true;
            }
            rest = after_range;
        } else {
            if start == c {
                matched = true;
            }
            rest = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_dockers_rules() {
        let ignore = DockerIgnore::parse(
            "# comment\n\n  node_modules \n*.log\n!keep.log\n/build/\ndocs/**/*.md\n!docs/README.md\n**/secret*\ntmp?\n[ab]x\n",
        );
        let cases = [
            ("node_modules", true),
            ("node_modules/pkg/index.js", true),
            ("src/node_modules", false),
            ("app.log", true),
            ("keep.log", false),
            ("logs/app.log", false),
            ("build", true),
            ("build/out.bin", true),
            ("docs/a.md", true),
            ("docs/x/y/z.md", true),
            ("docs/README.md", false),
            ("docs/a.txt", false),
            ("secret.txt", true),
            ("deep/dir/secret.key", true),
            ("tmp1", true),
            ("tmp12", false),
            ("ax", true),
            ("cx", false),
            ("src/main.rs", false),
        ];
        for (path, excluded) in cases {
            assert_eq!(ignore.excludes(path), excluded, "{path}");
        }
        assert!(ignore.has_exceptions());
    }

    #[test]
    fn the_last_matching_pattern_wins() {
        let ignore = DockerIgnore::parse("*\n!src\nsrc/*.tmp\n");
        assert!(ignore.excludes("README"));
        assert!(!ignore.excludes("src/main.rs"));
        assert!(ignore.excludes("src/x.tmp"));
    }

    #[test]
    fn glob_matches_like_go() {
        assert!(glob("*.rs", "main.rs"));
        assert!(!glob("*.rs", "main.rc"));
        assert!(glob("a[0-9]c", "a5c"));
        assert!(!glob("a[^0-9]c", "a5c"));
        assert!(glob("a[!x]c", "abc"));
        assert!(glob("a\\*c", "a*c"));
        assert!(!glob("a\\*c", "abc"));
        assert!(!glob("[", "["));
        assert!(glob("*a*b*c*", "xxaxxbxxcxx"));
        // Many stars against a long non-matching text must stay fast.
        assert!(!glob(&"*a".repeat(30), &"a".repeat(29)));
    }

    #[test]
    fn patterns_are_cleaned() {
        let ignore = DockerIgnore::parse("./a/../b/\n/c\n");
        assert!(ignore.excludes("b/file"));
        assert!(ignore.excludes("c"));
        assert!(!ignore.excludes("a"));
    }
}
