//! `.dockerignore` with Docker's own semantics, those of moby/patternmatcher as the docker CLI and
//! BuildKit read the file (`ignorefile.ReadAll`, then `patternmatcher.New`): one pattern a line,
//! `#` comments, `!` exceptions, the last matching pattern wins; a pattern is cleaned as Go's
//! `filepath.Clean` cleans it (a leading `..` stays, so such a pattern matches nothing, as in
//! Docker) and matches a path or any of its parent directories.
//!
//! Each pattern is compiled as patternmatcher compiles it: an exact match, a prefix match
//! (`dir/**`: only what is under `dir`), a suffix match (`**/name`, and `**name`, which also
//! matches `xname`), or a regular expression in which `*` and `?` stop at `/`, `**` followed by
//! more is `(.*/)?` (any number of whole directories, even inside a segment: `a**/*.txt` matches
//! `a/dir/file.txt`), a trailing `**` is `.*`, `[…]` is the regexp's class (`^` negates, `!` is a
//! literal) and `\` escapes. The expression is matched by [`Token`]s with memoised backtracking, so
//! no pattern costs more than (tokens × path length) steps, however many `**` it holds.
//!
//! Hand-written: the general-purpose crates implement gitignore semantics, which differ (no
//! anchoring rules of Docker's, `**` and exceptions behave otherwise); the tests hold
//! patternmatcher's own tables as data.

/// One pattern of a .dockerignore file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// The pattern as cleaned, without its `!`.
    cleaned: String,
    /// Its line in the file (from 1).
    line: usize,
    exception: bool,
    matcher: Matcher,
}

/// How a pattern matches, as patternmatcher's `matchType`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Exact,
    /// `dir/**`: the path starts with `dir/`.
    Prefix(String),
    /// `**/name` or `**name`: the path ends with the rest (`**/name` also matches `name`).
    Suffix(String),
    Tokens(Vec<Token>),
    /// A pattern that is no valid expression (an unclosed `[`): the docker CLI and BuildKit refuse
    /// the file ("syntax error in pattern"), and so does the agent ([`DockerIgnore::bad_pattern`]);
    /// patterns from elsewhere (the host's) that are invalid match nothing.
    Invalid,
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    One,
    /// `[…]`: one character of the class (or not of it).
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    /// `**` followed by more: `(.*/)?`, nothing or anything that ends with `/`.
    Dirs,
    /// A trailing `**` after other wildcards: `.*`.
    Anything,
}

/// The patterns of a .dockerignore file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Parses the file's text as `ignorefile.ReadAll` does. Invalid lines do not exist in this
    /// grammar: anything is a pattern.
    pub fn parse(text: &str) -> DockerIgnore {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (number, line) in text.lines().enumerate() {
            // A comment starts at the line's first character; " #x" is the pattern "#x".
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if body.is_empty() {
                continue;
            }
            let mut cleaned = clean(body);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            if cleaned == "." {
                continue;
            }
            let matcher = compile(&cleaned);
            patterns.push(Pattern { cleaned, line: number + 1, exception, matcher });
        }
        DockerIgnore { patterns }
    }

    /// The first pattern that is not valid, as Go's `filepath.Match` decides (patternmatcher's `New`
    /// refuses it, and with it the docker CLI and BuildKit's file sync): its line and its text.
    pub fn bad_pattern(&self) -> Option<(usize, &str)> {
        let bad = self.patterns.iter().find(|pattern| pattern.matcher == Matcher::Invalid)?;
        Some((bad.line, bad.cleaned.as_str()))
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
            .any(|pattern| format!("{}/", pattern.cleaned).starts_with(&dir_slash))
    }

    /// Whether a path (relative to the context, `/`-separated) is excluded: the last pattern that
    /// matches it or one of its parent directories decides (`MatchesOrParentMatches`).
    pub fn excludes(&self, path: &str) -> bool {
        let path = path.trim_matches('/');
        let parents: Vec<usize> = path.match_indices('/').map(|(at, _)| at).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            if pattern.exception != excluded {
                continue;
            }
            let matched = pattern.matches(path) || parents.iter().any(|at| pattern.matches(&path[..*at]));
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.cleaned,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/').is_some_and(|name| path == name)
            }
            Matcher::Tokens(tokens) => {
                let text: Vec<char> = path.chars().collect();
                let mut failed = std::collections::HashSet::new();
                match_tokens(tokens, 0, &text, 0, &mut failed)
            }
            Matcher::Invalid => false,
        }
    }
}

/// Go's `filepath.Clean` for a `/`-separated path: no empty or `.` segments, `x/..` removed, a
/// `..` that climbs above a relative start kept, above the root dropped.
fn clean(pattern: &str) -> String {
    let rooted = pattern.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for segment in pattern.split('/') {
        match segment {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// patternmatcher's `compile`: the pattern's match type, and its tokens when it is an expression.
fn compile(pattern: &str) -> Matcher {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Expression,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut kind = Kind::Exact;
    let mut tokens = Vec::new();
    let mut at = 0;
    let mut first = true;
    while at < chars.len() {
        let c = chars[at];
        at += 1;
        match c {
            '*' if chars.get(at) == Some(&'*') => {
                at += 1;
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::Anything);
                        kind = Kind::Expression;
                    }
                } else {
                    tokens.push(Token::Dirs);
                    kind = Kind::Expression;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Expression;
            }
            '?' => {
                tokens.push(Token::One);
                kind = Kind::Expression;
            }
            '\\' => {
                if let Some(&next) = chars.get(at) {
                    at += 1;
                    tokens.push(Token::Literal(next));
                    kind = Kind::Expression;
                } else {
                    // A trailing `\` escapes nothing: filepath.Match calls it a bad pattern.
                    return Matcher::Invalid;
                }
            }
            '[' => {
                kind = Kind::Expression;
                match class(&chars[at..]) {
                    Some((token, used)) => {
                        tokens.push(token);
                        at += used;
                    }
                    None => return Matcher::Invalid,
                }
            }
            ']' => {
                tokens.push(Token::Literal(']'));
                kind = Kind::Expression;
            }
            literal => tokens.push(Token::Literal(literal)),
        }
        first = false;
    }
    match kind {
        Kind::Exact => Matcher::Exact,
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_string()),
        Kind::Expression => Matcher::Tokens(tokens),
    }
}

/// A class after its `[`: `^` negates, `a-z` ranges, `\\` escapes. Valid only as Go's
/// `filepath.Match` takes it (patternmatcher refuses any pattern it would not): an item may not
/// start with an unescaped `]` or `-`, nor may a range end in one, and the class must close.
/// Returns the token and how many characters it took, `]` included; `None` when it is invalid.
fn class(body: &[char]) -> Option<(Token, usize)> {
    // Go's getEsc: one item character, escaped or not; `-`, `]` and the end are errors.
    let item = |at: &mut usize| -> Option<char> {
        let c = *body.get(*at)?;
        if c == '-' || c == ']' {
            return None;
        }
        *at += 1;
        if c != '\\' {
            return Some(c);
        }
        let escaped = *body.get(*at)?;
        *at += 1;
        Some(escaped)
    };
    let mut at = 0;
    let negated = body.first() == Some(&'^');
    if negated {
        at += 1;
    }
    let mut items = Vec::new();
    loop {
        if body.get(at) == Some(&']') && !items.is_empty() {
            return Some((Token::Class { negated, items }, at + 1));
        }
        let from = item(&mut at)?;
        let to = if body.get(at) == Some(&'-') {
            at += 1;
            item(&mut at)?
        } else {
            from
        };
        items.push((from, to));
    }
}

/// Whether `tokens[t..]` matches all of `text[i..]`; `failed` remembers the states that did not,
/// so that each is tried once.
fn match_tokens(
    tokens: &[Token],
    t: usize,
    text: &[char],
    i: usize,
    failed: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if failed.contains(&(t, i)) {
        return false;
    }
    let matched = match tokens.get(t) {
        None => i == text.len(),
        Some(Token::Literal(c)) => text.get(i) == Some(c) && match_tokens(tokens, t + 1, text, i + 1, failed),
        Some(Token::One) => text.get(i).is_some_and(|c| *c != '/') && match_tokens(tokens, t + 1, text, i + 1, failed),
        Some(Token::Class { negated, items }) => {
            text.get(i).is_some_and(|c| items.iter().any(|(from, to)| from <= c && c <= to) != *negated)
                && match_tokens(tokens, t + 1, text, i + 1, failed)
        }
        Some(Token::Star) => {
            let run = text[i..].iter().take_while(|c| **c != '/').count();
            (0..=run).any(|skip| match_tokens(tokens, t + 1, text, i + skip, failed))
        }
        Some(Token::Dirs) => {
            match_tokens(tokens, t + 1, text, i, failed)
                || (i..text.len())
                    .filter(|at| text[*at] == '/')
                    .any(|slash| match_tokens(tokens, t + 1, text, slash + 1, failed))
        }
        Some(Token::Anything) => (i..=text.len()).any(|at| match_tokens(tokens, t + 1, text, at, failed)),
    };
    if !matched {
        failed.insert((t, i));
    }
    matched
}

/// (For the session's include patterns, which fsutil matches segment by segment with Go's
/// `filepath.Match`: not .dockerignore's semantics.)
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
        '[' => match glob_class(&pattern[1..], c) {
            Some((true, after)) => Some(pattern.len() - after.len()),
            _ => None,
        },
        '\\' => (pattern.get(1) == Some(&c)).then_some(2),
        literal => (literal == c).then_some(1),
    }
}

/// Matches `c` against a class body (after `[`); returns the verdict and the pattern after `]`.
fn glob_class(body: &[char], c: char) -> Option<(bool, &[char])> {
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

    /// moby/patternmatcher's `TestMatches` table (v0.6), as data: pattern, path, matched. Its
    /// `MatchesOrParentMatches` is what the docker CLI and BuildKit apply to .dockerignore.
    const MOBY_MATCHES: &[(&str, &str, bool)] = &[
        ("**", "file", true),
        ("**", "file/", true),
        ("**/", "file", true),
        ("**/", "file/", true),
        ("**", "/", true),
        ("**/", "/", true),
        ("**", "dir/file", true),
        ("**/", "dir/file", true),
        ("**", "dir/file/", true),
        ("**/", "dir/file/", true),
        ("**/**", "dir/file", true),
        ("**/**", "dir/file/", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/file/", true),
        ("dir/**", "dir/dir2/file", true),
        ("dir/**", "dir/dir2/file/", true),
        ("**/dir", "dir", true),
        ("**/dir", "dir/file", true),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/*", "dir/dir2/file/", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file/", true),
        ("**file", "file", true),
        ("**file", "dir/file", true),
        ("**/file", "dir/file", true),
        ("**file", "dir/dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file*", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/file*.txt", "dir/dir/file.txt", true),
        ("**/file*.txt*", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc.def", "abcZdef", false),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("a\\\\", "a\\", true),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def", true),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true),
        ("a\\*b", "a*b", true),
    ];

    /// Its multi-pattern cases.
    const MOBY_MULTI: &[(&[&str], &str, bool)] = &[
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (&["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", true),
        (
            &["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        ),
        (&["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", false),
    ];

    /// Its `matchTests` (Go's filepath.Match cases, through `Matches`): a pattern patternmatcher
    /// refuses (ErrBadPattern) matches nothing here.
    const MOBY_MATCH: &[(&str, &str, bool)] = &[
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", true),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abc", false),
        ("ab[^e-g]", "abc", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "ab", false),
        ("a?b", "a☺b", true),
        ("a[^a]b", "a☺b", true),
        ("a???b", "a☺b", false),
        ("a[^a][^a][^a]b", "a☺b", false),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        ("[\\]a]", "]", true),
        ("[\\-]", "-", true),
        ("[x\\-]", "x", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[\\-x]", "x", true),
        ("[\\-x]", "-", true),
        ("[\\-x]", "a", false),
        ("[]a]", "]", false),
        ("[-]", "-", false),
        ("[x-]", "x", false),
        ("[x-]", "-", false),
        ("[x-]", "z", false),
        ("[-x]", "x", false),
        ("[-x]", "-", false),
        ("[-x]", "a", false),
        ("\\", "a", false),
        ("[a-b-c]", "a", false),
        ("[", "a", false),
        ("[^", "a", false),
        ("[^bc", "a", false),
        ("a[", "a", false),
        ("a[", "ab", false),
        ("*x", "xxx", true),
    ];

    /// Its one-off tests: patterns, path, matched.
    const MOBY_SMALL: &[(&[&str], &str, bool)] = &[
        (&["*"], "fileutils.go", true),
        (&["*.go"], "fileutils.go", true),
        (&["!fileutils.go", "*.go"], "fileutils.go", true),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["*.go", "!fileutils.go"], "fileutils.go", false),
        (&["*.go"], ".", false),
        (&[], "/any/path/there", false),
        (&["["], "/any/path/there", false),
    ];

    /// Its `compileTests`: the match type each pattern compiles to.
    const MOBY_COMPILE: &[(&str, &str)] = &[
        ("*", "regexp"),
        ("file*", "regexp"),
        ("*file", "regexp"),
        ("a*/b", "regexp"),
        ("**", "suffix"),
        ("**/**", "regexp"),
        ("dir/**", "prefix"),
        ("**/dir", "suffix"),
        ("**/dir2/*", "regexp"),
        ("**/dir2/**", "regexp"),
        ("**file", "suffix"),
        ("**/file*txt", "regexp"),
        ("**/**/*.txt", "regexp"),
        ("a[b-d]e", "regexp"),
        (".*", "regexp"),
        ("abc.def", "exact"),
        ("abc?def", "regexp"),
        ("**/foo/bar", "suffix"),
        ("a(b)c/def", "exact"),
        ("a.|)$(}+{bc", "exact"),
        ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exact"),
    ];

    #[test]
    fn the_matcher_agrees_with_moby_on_its_other_tables() {
        let mut differ = Vec::new();
        for (pattern, path, expected) in MOBY_MATCH {
            if DockerIgnore::parse(pattern).excludes(path) != *expected {
                differ.push(format!("{pattern:?} on {path:?}: moby says {expected}"));
            }
        }
        for (patterns, path, expected) in MOBY_SMALL {
            if DockerIgnore::parse(&patterns.join("\n")).excludes(path) != *expected {
                differ.push(format!("{patterns:?} on {path:?}: moby says {expected}"));
            }
        }
        for (pattern, kind) in MOBY_COMPILE {
            let compiled = match compile(pattern) {
                Matcher::Exact => "exact",
                Matcher::Prefix(_) => "prefix",
                Matcher::Suffix(_) => "suffix",
                Matcher::Tokens(_) => "regexp",
                Matcher::Invalid => "invalid",
            };
            if compiled != *kind {
                differ.push(format!("{pattern:?} compiles to {compiled}, moby's to {kind}"));
            }
        }
        assert!(differ.is_empty(), "{} cases differ:\n{}", differ.len(), differ.join("\n"));
    }

    #[test]
    fn the_matcher_agrees_with_moby_patternmatcher_on_its_own_tables() {
        let mut differ = Vec::new();
        for (pattern, path, expected) in MOBY_MATCHES {
            if DockerIgnore::parse(pattern).excludes(path) != *expected {
                differ.push(format!("{pattern:?} on {path:?}: moby says {expected}"));
            }
        }
        for (patterns, path, expected) in MOBY_MULTI {
            if DockerIgnore::parse(&patterns.join("\n")).excludes(path) != *expected {
                differ.push(format!("{patterns:?} on {path:?}: moby says {expected}"));
            }
        }
        assert!(differ.is_empty(), "{} cases differ:\n{}", differ.len(), differ.join("\n"));
    }

    #[test]
    fn the_first_bad_pattern_is_named_by_its_line() {
        assert_eq!(DockerIgnore::parse("*.tmp\n# a comment\n\n!keep[\nx[]\n").bad_pattern(), Some((4, "keep[")));
        assert_eq!(DockerIgnore::parse("a\\\n").bad_pattern(), Some((1, "a\\")));
        assert_eq!(DockerIgnore::parse("[a-c]\n\\[x\n**/*.log\n").bad_pattern(), None);
    }

    #[test]
    fn a_pattern_that_climbs_out_of_the_context_matches_nothing_as_in_docker() {
        // Go's filepath.Clean keeps a leading `..`: `!../secret.env` re-includes nothing.
        let ignore = DockerIgnore::parse("*\n!../secret.env\n");
        assert!(ignore.excludes("secret.env"));
        let ignore = DockerIgnore::parse("secret.env\n!a/../../secret.env\n");
        assert!(ignore.excludes("secret.env"));
        // Above the root it is dropped, as Clean drops it: `/../x` is `x`.
        assert!(DockerIgnore::parse("/../x\n").excludes("x"));
        assert_eq!(clean("a/../../b"), "../b");
        assert_eq!(clean("./a/./b/"), "a/b");
    }

    #[test]
    fn many_double_stars_cost_steps_not_time() {
        let ignore = DockerIgnore::parse(&format!("{}x\n", "**/a*".repeat(16)));
        let deep = ["a"; 40].join("/");
        let started = std::time::Instant::now();
        assert!(!ignore.excludes(&deep));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn patterns_are_cleaned() {
        let ignore = DockerIgnore::parse("./a/../b/\n/c\n");
        assert!(ignore.excludes("b/file"));
        assert!(ignore.excludes("c"));
        assert!(!ignore.excludes("a"));
    }
}
