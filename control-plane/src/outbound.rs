//! Requests the server sends to addresses its users name (webhooks, log
//! drains, git host APIs): to public addresses only, unless a flag allows
//! private ones.

use std::time::Duration;

/// Resolves a name to its public addresses only: a name that points at this
/// machine or its network (a rebinding trick, or a typo) is refused when the
/// server connects, as an address literal is when it is set. `flag` is the
/// server flag that allows it.
pub(crate) struct PublicAddressesOnly {
    pub(crate) flag: &'static str,
}

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let flag = self.flag;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|address| kiln_protocol::validate::is_public_ip(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address; start the server with {flag} to send to a host on its own network"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A client for outbound requests that answers within `timeout`, follows no
/// redirect, and reaches public addresses only unless `allow_private`; `flag`
/// is the server flag that allows them, named in the refusal.
pub(crate) fn client(
    allow_private: bool,
    flag: &'static str,
    timeout: Duration,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("kiln-server/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if !allow_private {
        builder = builder.dns_resolver(std::sync::Arc::new(PublicAddressesOnly { flag }));
    }
    builder.build().unwrap_or_default()
}

/// Whether `url` names a loopback, link-local or private address literally (the
/// resolver never sees a literal).
pub(crate) fn names_private_address(url: &str) -> bool {
    reqwest::Url::parse(url)
        .is_ok_and(|url| kiln_protocol::validate::host_is_private(url.authority()))
}
