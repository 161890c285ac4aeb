//! The `--upstream` URL: where requests go, how it is shown (never with its credentials),
//! and the Basic credentials it may carry.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// The URL used when none is given.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";

/// The upstream's scheme and authority, and a path prefix put before every request's path.
#[derive(Clone)]
pub struct Upstream {
    scheme: Scheme,
    /// `host:port`, without credentials.
    authority: Authority,
    prefix: String,
    /// The URL for logs: credentials replaced by `***`.
    shown: String,
    pub https: bool,
    /// `user:password@` in the URL, as a Basic `Authorization` (marked sensitive).
    pub authorization: Option<HeaderValue>,
}

impl Upstream {
    pub fn parse(text: &str) -> Result<Upstream, String> {
        // Errors echo the URL with its credentials hidden, like the logs.
        let uri: Uri = text
            .parse()
            .map_err(|err| format!("`{}`: {err}", redact(text)))?;
        let shown_input = redact(text);
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "`{shown_input}`: an http:// or https:// URL is needed"
                ));
            }
        };
        let uri_authority = uri.authority().ok_or(format!("`{shown_input}`: no host"))?;
        if uri.query().is_some() {
            return Err(format!("`{shown_input}`: a query is not allowed here"));
        }
        let scheme = if https { "https" } else { "http" };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let (userinfo, host) = match uri_authority.as_str().rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, uri_authority.as_str()),
        };
        let authority = host
            .parse()
            .map_err(|err| format!("`{shown_input}`: {err}"))?;
        Ok(Upstream {
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            shown: format!("{scheme}://{}{prefix}", redact(uri_authority.as_str())),
            prefix,
            https,
            authorization: userinfo.and_then(basic_authorization),
        })
    }

    /// The upstream URI for a request's path and query: always the upstream's scheme, host
    /// and port, whatever the request's target; the asterisk form (`OPTIONS *`) names the
    /// upstream server as a whole, so it stays `*`, without the prefix.
    pub fn uri_for(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = match incoming.path_and_query() {
            Some(target) if target.as_str() == "*" => target.clone(),
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
}

impl std::fmt::Display for Upstream {
    /// The URL without its credentials: the only way an upstream is ever printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `Basic base64(user:password)`, the URL's percent-escapes decoded (RFC 7617).
fn basic_authorization(userinfo: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let decoded = percent_encoding::percent_decode_str(userinfo).collect::<Vec<u8>>();
    let encoded = base64::engine::general_purpose::STANDARD.encode(decoded);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `user:pw@host` and `scheme://user:pw@host/...` become `***@host...`.
fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::parse(DEFAULT_UPSTREAM).unwrap_or(Upstream {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("127.0.0.1:8000"),
            prefix: String::new(),
            shown: DEFAULT_UPSTREAM.to_owned(),
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
        assert_eq!(redact("user:pw@host:1"), "***@host:1");
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
        assert_eq!(redact("http://host/a@b"), "http://host/a@b");
    }
}
