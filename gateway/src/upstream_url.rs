//! The `--upstream` URL: where requests go, how it is shown (never with its credentials),
//! and the Basic credentials it may carry.

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use percent_encoding::percent_decode_str;
use url::Url;

/// How to write the credentials that an unusable URL may be hiding.
const ESCAPE: &str =
    " (in a user name or password, write `/` `?` `#` `@` `:` `%` as %2F %3F %23 %40 %3A %25)";

/// The URL used when none is given.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";

/// The upstream's scheme and authority, and a path prefix put before every request's path.
#[derive(Clone)]
pub struct Upstream {
    scheme: Scheme,
    /// `host:port`, without credentials.
    authority: Authority,
    prefix: String,
    /// The URL for logs: credentials replaced by `***`. Shared: every attempt logs and
    /// counts it.
    shown: Arc<str>,
    pub https: bool,
    /// `user:password@` in the URL, as a Basic `Authorization` (marked sensitive).
    pub authorization: Option<HeaderValue>,
}

impl Upstream {
    /// Reads `--upstream` with a URL parser. An error never quotes `text`: a password holding
    /// an unescaped `/`, `?`, `#` or `@` ends up in what the parser takes for the host, port,
    /// path, query or fragment, so no part of an unusable URL is safe to show.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let url =
            Url::parse(text.trim()).map_err(|err| format!("is not a usable URL: {err}{ESCAPE}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err("needs an http:// or https:// URL".to_owned()),
        };
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or(format!("has no host{ESCAPE}"))?;
        if url.port() == Some(0) {
            return Err("has port 0: a port from 1 to 65535 is needed".to_owned());
        }
        if url.query().is_some() {
            return Err(format!("has a query, which is not allowed here{ESCAPE}"));
        }
        if url.fragment().is_some() {
            return Err(format!(
                "has a fragment (`#`), which is not allowed here{ESCAPE}"
            ));
        }
        if url.path().contains('@') {
            return Err(format!("has an `@` in its path{ESCAPE}"));
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority: Authority = authority
            .parse()
            .map_err(|err| format!("has a host that cannot be used: {err}"))?;
        let prefix = url.path().trim_end_matches('/').to_owned();
        let credentials = !url.username().is_empty() || url.password().is_some();
        let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
        let hidden = if credentials { "***@" } else { "" };
        Ok(Upstream {
            shown: format!("{scheme}://{hidden}{authority}{prefix}").into(),
            scheme,
            authority,
            prefix,
            https,
            authorization: credentials
                .then(|| basic_authorization(url.username(), url.password().unwrap_or("")))
                .flatten(),
        })
    }

    /// The upstream URI for a request's path and query: always the upstream's scheme, host
    /// and port, whatever the request's target; the asterisk form (`OPTIONS *`) names the
    /// upstream server as a whole, so it stays `*`, without the prefix.
    pub fn uri_for(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        self.uri_for_target(incoming.path_and_query())
    }

    /// [`uri_for`](Self::uri_for) from the request target alone (its path and query).
    pub fn uri_for_target(&self, target: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let path_and_query = match target {
            // Without a prefix the target goes as it came: a shared copy, not a new one.
            Some(target) if target.as_str() == "*" || self.prefix.is_empty() => target.clone(),
            None if self.prefix.is_empty() => PathAndQuery::from_static("/"),
            target => {
                let path = target.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{path}", self.prefix))?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// Whether [`uri_for`](Self::uri_for) takes `incoming`, without making the URI: only a
    /// prefix can make a target too long to be one.
    pub fn check(&self, incoming: &Uri) -> Result<(), http::Error> {
        match self.prefix.is_empty() {
            true => Ok(()),
            false => self.uri_for(incoming).map(drop),
        }
    }

    /// The URL as shown (as `Display` writes it), to keep without a copy.
    pub fn shown(&self) -> &Arc<str> {
        &self.shown
    }
}

impl std::fmt::Display for Upstream {
    /// The URL without its credentials: the only way an upstream is ever printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `Basic base64(user:password)`, the URL's percent-escapes decoded (RFC 7617).
fn basic_authorization(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let mut decoded: Vec<u8> = percent_decode_str(user).collect();
    decoded.push(b':');
    decoded.extend(percent_decode_str(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(decoded);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::parse(DEFAULT_UPSTREAM).unwrap_or(Upstream {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:8000"),
            prefix: String::new(),
            shown: DEFAULT_UPSTREAM.into(),
            https: false,
            authorization: None,
        })
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_upstream_are_never_shown() {
        let upstream = Upstream::parse("https://user:s3cret@api.example.com:8443/v1").unwrap();
        assert!(upstream.https);
        assert_eq!(upstream.to_string(), "https://***@api.example.com:8443/v1");
        assert!(!format!("{upstream:?}").contains("s3cret"));
        // Sent as Basic credentials (`user:s3cret`), never in the URI.
        let authorization = upstream.authorization.as_ref().unwrap();
        assert_eq!(authorization, "Basic dXNlcjpzM2NyZXQ=");
        let uri = upstream.uri_for(&"/v1/models".parse().unwrap()).unwrap();
        assert_eq!(uri, "https://api.example.com:8443/v1/v1/models");
        let escaped = Upstream::parse("http://us%40r:p%3Aw@host").unwrap();
        // `us@r:p:w`
        assert_eq!(escaped.authorization.unwrap(), "Basic dXNAcjpwOnc=");
        let err = Upstream::parse("ftp://user:s3cret@host/").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_password_with_reserved_characters_is_escaped_or_refused_and_never_shown() {
        // `p/?#@:%w`, escaped: taken, and sent whole.
        let upstream = Upstream::parse("http://user:p%2F%3F%23%40%3A%25w@host:8000/base").unwrap();
        assert_eq!(upstream.to_string(), "http://***@host:8000/base");
        let uri = upstream.uri_for(&"/v1".parse().unwrap()).unwrap();
        assert_eq!(uri, "http://host:8000/base/v1");
        // base64 of `user:p/?#@:%w`
        assert_eq!(
            upstream.authorization.unwrap(),
            "Basic dXNlcjpwLz8jQDoldw=="
        );
        // Unescaped, the password is read as a port, path, query or fragment: refused, and the
        // error shows none of it.
        for url in [
            "http://usr1:Pw1/Pw2@host:8000",
            "http://usr1:80/Pw2@host:8000",
            "http://usr1:Pw1?Pw2@host:8000",
            "http://usr1:80?Pw2@host:8000",
            "http://usr1:Pw1#Pw2@host:8000",
            "http://usr1:80#Pw2@host:8000",
            "http://usr1:Pw1%@Pw2@host:99999",
        ] {
            let err = Upstream::parse(url).unwrap_err();
            for part in ["usr1", "Pw1", "Pw2"] {
                assert!(!err.contains(part), "{url}: {err}");
            }
        }
    }

    #[test]
    fn a_port_out_of_range_is_refused() {
        for url in ["http://host:65536", "http://host:0", "http://host:-1"] {
            assert!(Upstream::parse(url).is_err(), "{url}");
        }
        assert!(Upstream::parse("http://host:65535").is_ok());
    }

    #[test]
    fn every_target_goes_to_the_upstream_and_the_asterisk_form_stays_whole() {
        for url in ["http://10.0.0.1:8000", "http://10.0.0.1:8000/base/"] {
            let upstream = Upstream::parse(url).unwrap();
            let asterisk = upstream.uri_for(&"*".parse().unwrap()).unwrap();
            assert_eq!(asterisk.authority().unwrap(), "10.0.0.1:8000");
            assert_eq!(asterisk.path(), "*");
            for target in ["http://evil.example:1/x?y", "evil.example:443", "/x"] {
                let uri = upstream.uri_for(&target.parse().unwrap()).unwrap();
                assert_eq!(uri.scheme_str(), Some("http"), "{target}");
                assert_eq!(uri.authority().unwrap(), "10.0.0.1:8000", "{target}");
            }
        }
    }

    #[test]
    fn the_path_and_query_go_after_the_upstreams_prefix() {
        for (url, expected) in [
            ("http://10.0.0.1:8000", "/v1/models?limit=2"),
            ("http://10.0.0.1:8000/", "/v1/models?limit=2"),
            ("http://10.0.0.1:8000/base/", "/base/v1/models?limit=2"),
        ] {
            let upstream = Upstream::parse(url).unwrap();
            let uri = upstream
                .uri_for(&"/v1/models?limit=2".parse().unwrap())
                .unwrap();
            assert_eq!(uri.path_and_query().unwrap(), expected, "{url}");
            let authority_form = upstream.uri_for(&"host:443".parse().unwrap()).unwrap();
            let root = expected.strip_suffix("v1/models?limit=2").unwrap();
            assert_eq!(authority_form.path(), root, "{url}");
        }
    }

    #[test]
    fn only_a_prefix_can_make_a_target_too_long_to_forward() {
        // As long as a URI can be: the prefix takes it past.
        let longest = format!("/{}", "a".repeat(65_533));
        let target: Uri = longest.parse().unwrap();
        let plain = Upstream::parse("http://10.0.0.1:8000").unwrap();
        assert!(plain.check(&target).is_ok());
        assert!(plain.uri_for(&target).is_ok());
        let prefixed = Upstream::parse("http://10.0.0.1:8000/base").unwrap();
        assert!(prefixed.check(&target).is_err());
        assert!(prefixed.uri_for(&target).is_err());
        let short: Uri = "/v1/models".parse().unwrap();
        assert!(prefixed.check(&short).is_ok());
    }
}
