//! Sites: `maki site add/remove`, `maki pin` (the records an admin signs)
//! and `maki sites` (what the node says of them).

use maki_protocol::{
    Domain, Pin, PublicKey, RECORD_FORMAT, SecretKey, Signed, SiteRecord,
    rpc::{Request, Response, RpcError, SiteInfo},
};

use crate::net::{Client, NetError, unexpected};

/// Creates `domain` with `publishers` (default: the caller) and
/// `aliases` (other domains that serve the same site).
pub async fn add(
    client: &Client,
    key: &SecretKey,
    domain: &Domain,
    mut publishers: Vec<PublicKey>,
    aliases: Vec<Domain>,
) -> Result<(), NetError> {
    if publishers.is_empty() {
        publishers.push(key.public());
    }
    publishers.sort();
    publishers.dedup();
    // Heads of this site start above any the network had for the domain
    // before (a removed site's), so nothing old comes back.
    let heads_after = match client
        .call(&Request::HeadFloor {
            domain: domain.clone(),
        })
        .await?
    {
        Response::HeadFloor { seq } => seq,
        other => return Err(unexpected(other)),
    };
    let record = SiteRecord {
        format: RECORD_FORMAT,
        domain: domain.clone(),
        aliases,
        publishers,
        // Later changes of the site must carry a higher version; the clock
        // in milliseconds gives that without asking.
        version: crate::now_millis(),
        removed: false,
        heads_after,
    };
    client
        .call(&Request::SiteAdd {
            record: Signed::sign(key, &record),
        })
        .await?;
    Ok(())
}

/// Adds `add` to the aliases of `domain` and removes `remove`; returns
/// the aliases as recorded.
pub async fn set_aliases(
    client: &Client,
    key: &SecretKey,
    domain: &Domain,
    add: &[Domain],
    remove: &[Domain],
) -> Result<Vec<Domain>, NetError> {
    let current = info(client, domain).await?;
    let mut aliases = current.aliases;
    for a in remove {
        if !aliases.contains(a) {
            return Err(NetError::Refused(RpcError::InvalidRecord(format!(
                "{a} is not an alias of {domain}"
            ))));
        }
    }
    aliases.retain(|a| !remove.contains(a));
    for a in add {
        if !aliases.contains(a) {
            aliases.push(a.clone());
        }
    }
    let record = SiteRecord {
        format: RECORD_FORMAT,
        domain: domain.clone(),
        aliases: aliases.clone(),
        publishers: current.publishers,
        version: crate::now_millis().max(current.record_version + 1),
        removed: false,
        heads_after: current.heads_after,
    };
    client
        .call(&Request::SiteUpdate {
            record: Signed::sign(key, &record),
        })
        .await?;
    Ok(aliases)
}

/// Removes `domain`: every node stops serving it.
pub async fn remove(client: &Client, key: &SecretKey, domain: &Domain) -> Result<(), NetError> {
    let current = info(client, domain).await?;
    let record = SiteRecord {
        format: RECORD_FORMAT,
        domain: domain.clone(),
        aliases: current.aliases,
        publishers: current.publishers,
        version: crate::now_millis().max(current.record_version + 1),
        removed: true,
        heads_after: current.heads_after,
    };
    client
        .call(&Request::SiteRemove {
            record: Signed::sign(key, &record),
        })
        .await?;
    Ok(())
}

/// Pins `domain` to `regions` (none: every node holds it); returns them
/// as recorded.
pub async fn pin(
    client: &Client,
    key: &SecretKey,
    domain: &Domain,
    mut regions: Vec<String>,
) -> Result<Vec<String>, NetError> {
    regions.sort();
    regions.dedup();
    let record = Pin {
        format: RECORD_FORMAT,
        site: domain.clone(),
        regions: regions.clone(),
        version: crate::now_millis(),
    };
    client
        .call(&Request::Pin {
            record: Signed::sign(key, &record),
        })
        .await?;
    Ok(regions)
}

/// The sites the caller may see.
pub async fn list(client: &Client) -> Result<Vec<SiteInfo>, NetError> {
    match client.call(&Request::Sites).await? {
        Response::Sites(sites) => Ok(sites),
        other => Err(unexpected(other)),
    }
}

/// One site's current state as its publisher sees it.
pub async fn info(client: &Client, site: &Domain) -> Result<SiteInfo, NetError> {
    // Versions gives the precise refusal (unknown site / not a publisher).
    client
        .call(&Request::Versions {
            domain: site.clone(),
        })
        .await?;
    list(client)
        .await?
        .into_iter()
        .find(|s| &s.domain == site)
        .ok_or_else(|| NetError::Refused(RpcError::UnknownSite(site.clone())))
}
