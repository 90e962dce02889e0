//! One HTTPS download of a public file (a geo database), for the CLI:
//! certificates checked against the system's roots, the size capped, a
//! gzip file unpacked (DB-IP's downloads are `.mmdb.gz`).

use std::{io::Read, time::Duration};

use n0_future::StreamExt;

/// The largest file taken, unpacked or not: a city database is 100–200 MB.
pub const MAX_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    #[error("{0}: only https:// downloads are taken (the file is checked, but not its origin)")]
    NotHttps(String),
    #[error("{url}: {}", chain(source))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: larger than {MAX_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: not a gzip file it claims to be: {source}")]
    Gzip {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// The body at `url`, gunzipped when it starts as gzip does.
pub async fn fetch(url: &str) -> Result<Vec<u8>, DownloadError> {
    let https = |u: &reqwest::Url| u.scheme() == "https";
    if !reqwest::Url::parse(url).is_ok_and(|u| https(&u)) {
        return Err(DownloadError::NotHttps(url.to_owned()));
    }
    // reqwest is built without a crypto provider of its own (as iroh
    // builds it): ring's, for the whole process. Installing twice is a
    // no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = |source| DownloadError::Http {
        url: url.to_owned(),
        source,
    };
    // A redirect may not leave https (the commonest downgrade), nor
    // bounce forever; a server that stalls is given up on.
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if !https(attempt.url()) {
            attempt.error("a redirect away from https")
        } else if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else {
            attempt.follow()
        }
    });
    let client = reqwest::Client::builder()
        .redirect(redirects)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(http)?;
    let response = client.get(url).send().await.map_err(http)?;
    if !response.status().is_success() {
        return Err(DownloadError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let too_large = || DownloadError::TooLarge {
        url: url.to_owned(),
    };
    if response.content_length().is_some_and(|n| n > MAX_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(http)?);
        if body.len() as u64 > MAX_BYTES {
            return Err(too_large());
        }
    }
    if !body.starts_with(&[0x1f, 0x8b]) {
        return Ok(body);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&body[..])
        .take(MAX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|source| DownloadError::Gzip {
            url: url.to_owned(),
            source,
        })?;
    if out.len() as u64 > MAX_BYTES {
        return Err(too_large());
    }
    Ok(out)
}

/// An error and its causes, each said once (reqwest repeats itself).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}
