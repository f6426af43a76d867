//! Interface-name glob patterns.
//!
//! Deliberately small: `*` matches any run of characters (including none), `?` matches exactly one
//! character, everything else matches itself. Interface names are at most 15 bytes, so the simple
//! backtracking matcher is cheap.

/// Whether `name` matches the glob `pattern` (`*` and `?` wildcards).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    // Position of the last `*` in the pattern and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    // Let the last `*` swallow one more character and retry.
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `name` matches any of `patterns`.
pub fn any_match(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth"));
        assert!(glob_match("veth*", "veth1234abcd"));
        assert!(!glob_match("veth*", "xveth1"));
        assert!(glob_match("cali*", "cali0123456789a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("wg?", "wg0"));
        assert!(!glob_match("wg?", "wg10"));
        assert!(glob_match("lxc*_health", "lxc_health"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("", "x"));
    }
}
