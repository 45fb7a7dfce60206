//! Hostname intersection between a listener and a route, as the spec defines it for HTTPRoute,
//! GRPCRoute and TLSRoute.

/// The hostnames a route serves on a listener: `Some(vec![])` means any host, `None` means the
/// two do not intersect (the route cannot attach there).
///
/// - no listener hostname: the route's hostnames (or any);
/// - no route hostnames: the listener's;
/// - both: each pair that intersects gives the more specific of the two (an exact name matched
///   by a wildcard gives the exact name; of two wildcards, the longer).
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(listener) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![listener.to_string()]);
    }
    let mut out: Vec<String> = Vec::new();
    for r in route {
        if let Some(h) = pair(listener, r)
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    (!out.is_empty()).then_some(out)
}

fn pair(a: &str, b: &str) -> Option<String> {
    let a_wild = a.strip_prefix("*.");
    let b_wild = b.strip_prefix("*.");
    match (a_wild, b_wild) {
        (None, None) => a.eq_ignore_ascii_case(b).then(|| a.to_string()),
        (Some(suffix), None) => covers(suffix, b).then(|| b.to_string()),
        (None, Some(suffix)) => covers(suffix, a).then(|| a.to_string()),
        (Some(sa), Some(sb)) => {
            if sa.eq_ignore_ascii_case(sb) {
                Some(a.to_string())
            } else if covers(sa, sb) {
                Some(b.to_string())
            } else if covers(sb, sa) {
                Some(a.to_string())
            } else {
                None
            }
        }
    }
}

/// `*.suffix` covers `name` when name has at least one more label in front of suffix.
fn covers(suffix: &str, name: &str) -> bool {
    name.len() > suffix.len() + 1
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_spec_examples() {
        // A listener for test.example.com takes routes with no hostnames, test.example.com or *.example.com.
        assert_eq!(intersect(Some("test.example.com"), &[]), Some(v(&["test.example.com"])));
        assert_eq!(
            intersect(Some("test.example.com"), &v(&["test.example.com"])),
            Some(v(&["test.example.com"]))
        );
        assert_eq!(
            intersect(Some("test.example.com"), &v(&["*.example.com"])),
            Some(v(&["test.example.com"]))
        );
        assert_eq!(intersect(Some("test.example.com"), &v(&["other.example.com"])), None);
        // A listener for *.example.com takes routes with no hostnames, or any name under it.
        assert_eq!(
            intersect(
                Some("*.example.com"),
                &v(&["foo.example.com", "bar.test.example.com", "example.com", "foo.org"])
            ),
            Some(v(&["foo.example.com", "bar.test.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["*.test.example.com"])),
            Some(v(&["*.test.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.test.example.com"), &v(&["*.example.com"])),
            Some(v(&["*.test.example.com"]))
        );
        assert_eq!(intersect(None, &v(&["a.com"])), Some(v(&["a.com"])));
        assert_eq!(intersect(None, &[]), Some(vec![]));
    }

    #[test]
    fn a_wildcard_needs_a_whole_label() {
        assert_eq!(intersect(Some("*.example.com"), &v(&["badexample.com"])), None);
    }
}
